"""The local swarm's training task, in this process: scikit-learn's digits split into a test set and per-peer shards,
and the single-process replay the swarm compares its peers' final weights with (swarm/replay.py)."""
from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

from mapreduce.flat import flatten, unflatten
from mapreduce.plan import segment_bounds
from mapreduce.reduce import Accumulator
from mapreduce.spec import RunSpec
from mapreduce.swarm.data import FEATURES, Digits
from mapreduce.swarm.model import apply_average, local_gradient, make_model, make_optimizer, torch_threads
from mapreduce.swarm.replay import Training, compare_with_single_process, single_process_training


def test_digits_load_without_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the digits tried to open a connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    digits = Digits(peers=4)
    assert digits.test[0].shape == (360, FEATURES)  # a fifth of 1,797


def test_test_set_and_shards_are_disjoint_and_cover_every_image() -> None:
    digits = Digits(peers=4)
    parts = [digits.test_indices, *digits.shard_indices]
    together = np.concatenate(parts)
    assert len(together) == len(set(together.tolist())) == 1797
    assert [len(s) for s in digits.shard_indices] == [360, 359, 359, 359]
    assert all(len(np.unique(y)) == 10 for _, y in digits.shards)  # each shard sees every class
    # stratified: each class's share of the test set is within one image of its share of the whole
    every_label = np.concatenate([digits.test[1].numpy(), *(y.numpy() for _, y in digits.shards)])
    assert np.abs(np.bincount(digits.test[1].numpy()) - 0.2 * np.bincount(every_label)).max() <= 1
    for x, _ in [digits.test, *digits.shards]:
        assert x.dtype == torch.float32 and float(x.min()) == 0.0 and float(x.max()) == 1.0


def test_the_split_is_the_same_in_every_process() -> None:
    a, b = Digits(peers=3), Digits(peers=3)
    assert np.array_equal(a.test_indices, b.test_indices)
    assert all(np.array_equal(x, y) for x, y in zip(a.shard_indices, b.shard_indices))


def test_batches_replay_per_peer_and_differ_between_peers() -> None:
    digits = Digits(peers=4)
    first, again, other = digits.batches(1, 64), digits.batches(1, 64), digits.batches(2, 64)
    for _ in range(3):
        (x1, y1), (x2, y2), (x3, _) = next(first), next(again), next(other)
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
        assert not torch.equal(x1, x3)
    # a batch larger than the shard is the whole shard, shuffled
    x, _ = next(digits.batches(0, 10_000))
    assert len(x) == len(digits.shards[0][0])


def test_an_untrained_model_is_at_chance_on_the_test_set() -> None:
    loss, accuracy = Digits(peers=4).evaluate(make_model())
    assert 2.0 < loss < 2.6 and accuracy < 0.25  # ten classes: ln 10 = 2.30, a tenth right


# -- the single-process replay (swarm/replay.py) ----------------------------------------------------------------------

HOTKEYS = ["peer-d", "peer-b", "peer-c", "peer-a"]  # peer i's hotkey: the reduction's sorted order is not index order
WINDOWS = range(7, 10)  # window numbers as a swarm has them: not from 0


def training(wire_dtype: str = "float32") -> Training:
    spec = RunSpec.for_module("replay-test", make_model().named_parameters(), segments=6, wire_dtype=wire_dtype)
    return Training(spec, HOTKEYS, {"dim": 64, "hidden": 128, "classes": 10}, lr=0.01, batch=128)


def peers_in_process(t: Training, windows: int) -> tuple[list[nn.Module], list[list[dict[str, torch.Tensor]]]]:
    """What separate peers compute when every average is every peer's: each its own model and optimizer, each
    segment reduced by a miner's Accumulator (the peers in sorted-hotkey order). Every peer's final model, and per
    peer per window its gradient and the average, as trainer.py saves them. With error feedback (topk) each peer
    sends its gradient plus what it has not sent yet and keeps the rest (written here from the rule, not with
    ``WireFormat.with_residual``, so that the replay's use of it is checked against the rule itself)."""
    spec, wire, peers = t.spec, t.spec.wire, len(t.hotkeys)
    data = Digits(peers)
    with torch_threads():
        models = [make_model(**t.model) for _ in range(peers)]
        optimizers = [make_optimizer(m, t.lr) for m in models]
        batches = [data.batches(i, t.batch) for i in range(peers)]
        saved: list[list[dict[str, torch.Tensor]]] = [[] for _ in range(peers)]
        unsent = [torch.zeros(spec.numel) for _ in range(peers)]
        for step in range(windows):
            local = [flatten(spec, local_gradient(m, *next(b))[1]) for m, b in zip(models, batches)]
            # a peer's first window sends its gradient as it is (no residual yet: a -0.0 stays -0.0)
            carried = [g + e if step and wire.error_feedback else g for g, e in zip(local, unsent)]
            average = torch.empty(spec.numel)
            for segment in segment_bounds(spec.numel, spec.segments):
                start, end = segment.start, segment.end
                miner = Accumulator(end - start)
                for i in sorted(range(peers), key=lambda i: t.hotkeys[i]):
                    x = carried[i][start:end].clamp(-spec.max_abs_value, spec.max_abs_value)
                    sent = wire.decode(wire.encode(x), end - start)
                    unsent[i][start:end] = carried[i][start:end] - sent
                    miner.add(t.hotkeys[i], "sha256", sent)
                average[start:end] = miner.mean(wire.output_dtype).float()
            for i in range(peers):
                saved[i].append({"local": local[i], "averaged": average.clone()})
                apply_average(models[i], optimizers[i], unflatten(spec, average.clone()))
    return models, saved


def write_run(run_dir: Path, models: list[nn.Module], saved: list[list[dict]], included: int = 4,
              sources: str = "replica") -> dict[int, list[dict]]:
    """The files trainer.py leaves (gradients per window, final weights); the JSON lines by window."""
    rows: dict[int, list[dict]] = {}
    for i, (model, windows) in enumerate(zip(models, saved)):
        out = run_dir / "peers" / f"p{i}"
        out.mkdir(parents=True)
        for w, tensors in zip(WINDOWS, windows):
            safetensors.torch.save_file(tensors, out / f"w{w}.safetensors")
            rows.setdefault(w, []).append({"window": w, "peer": i, "peers_included": included,
                                           "sources": [sources] * 6})
        safetensors.torch.save_file({n: p.detach().clone() for n, p in model.named_parameters()},
                                    out / "final.safetensors")
    return rows


@pytest.mark.parametrize("wire_dtype", ["float32", "bfloat16", "int8", "topk"])
def test_single_process_training_is_the_peers_training_bit_for_bit(wire_dtype: str) -> None:
    t = training(wire_dtype)
    models, _ = peers_in_process(t, len(WINDOWS))
    reference = single_process_training(t, len(WINDOWS))
    initial = make_model(**t.model)
    for model in models:
        for (name, w), ref in zip(model.named_parameters(), reference.parameters()):
            assert torch.equal(w, ref), f"{name}: max |w - w_ref| {float((w - ref).abs().max()):.3e}"
    assert not all(torch.equal(a, b) for a, b in zip(initial.parameters(), reference.parameters()))  # it trained


def test_the_comparison_passes_an_exact_run(tmp_path: Path) -> None:
    t = training()
    rows = write_run(tmp_path, *peers_in_process(t, len(WINDOWS)))
    result = compare_with_single_process(tmp_path, t, rows, WINDOWS)
    assert result.worst == 0.0 and result.bound == 0.0 and not result.failed
    assert result.line().startswith("matches single-process training: max |w - w_ref| = 0.0e+00, bound 0.0e+00")
    assert "first differs" not in result.line()


def test_the_comparison_catches_one_ulp_and_says_where_the_run_left_the_replay(tmp_path: Path) -> None:
    t = training()
    models, saved = peers_in_process(t, len(WINDOWS))
    with torch.no_grad():  # peer 2's last average off by one ulp in one element, and so its weight after the step
        w = next(models[2].parameters())
        w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(1.0))
    saved[2][1]["averaged"][5] = torch.nextafter(saved[2][1]["averaged"][5], torch.tensor(1.0))
    result = compare_with_single_process(tmp_path, t, write_run(tmp_path, models, saved), WINDOWS)
    assert result.failed and 0 < result.worst < 1e-6
    assert "first differs in window 8: peer 2's average" in result.line()


def test_the_comparison_fails_a_peer_without_final_weights(tmp_path: Path) -> None:
    t = training()
    rows = write_run(tmp_path, *peers_in_process(t, 1))
    (tmp_path / "peers" / "p3" / "final.safetensors").unlink()
    result = compare_with_single_process(tmp_path, t, rows, WINDOWS[:1])
    assert result.failed and "peer 3" in result.line()


@pytest.mark.parametrize("included, sources, why", [(3, "replica", "left peers out"),
                                                    (4, "own", "kept its own gradient")])
def test_the_comparison_does_not_apply_to_averages_that_were_not_everyones(tmp_path: Path, included: int,
                                                                          sources: str, why: str) -> None:
    t = training()
    rows = write_run(tmp_path, *peers_in_process(t, 1), included=included, sources=sources)
    result = compare_with_single_process(tmp_path, t, rows, WINDOWS[:1])
    assert result.worst is None and not result.failed
    assert result.line().startswith("matches single-process training: does not apply") and why in result.line()
