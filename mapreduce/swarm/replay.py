"""The swarm's run replayed on one machine: training on the exact mean of the same peers' gradients.

At the end of ``python -m mapreduce swarm`` the orchestrator replays the whole run in its own process, without S3,
miners or a chain: the same initial weights (``make_model``'s seed), for every window the same peers' same batches
(each peer's seeded generator, swarm/data.py), their gradients at the replay's weights, their mean, the same Adam
step. It then compares every peer's final weights (``peers/p{i}/final.safetensors``) with the replay's.

The bound is zero: the replay is the peers' computation, operation for operation, so it must give the same bits.
  - the gradient comes from the same code (``model.local_gradient``) on the same batch at the same weights, with
    torch held to one thread in the peers and in the replay, so that a matmul's sums are split the same way
    whatever the machine's cores;
  - the mean is the miners' own reduction (``reduce.reduce_slices``: the inputs cast to the wire dtype, added in
    fp32 in the peers' sorted-hotkey order, divided once, cast to the wire dtype). Addition is elementwise, so a
    miner reducing one segment and the replay reducing the whole vector get the same bits, element by element.
    With error feedback (topk) each peer's inputs carry its gradient plus its residual, which the replay keeps
    per peer through the same ``WireFormat.with_residual`` the peers call (mapreduce/peer.py);
  - the step is the same (``model.apply_average`` on ``make_optimizer``'s Adam).
IEEE-754 arithmetic gives the same result for the same operations in the same order, so nothing is left to round
differently. A nonzero tolerance could not be justified anyway: Adam divides the first moment by the root of the
second, so a gradient element near zero that differs by one rounding (or flips sign) can move its weight by up to
the learning rate per step, and a ReLU that switches because a pre-activation moved by 1e-7 changes a gradient by
O(1). A tolerance loose enough for that (lr x windows) would hide real bugs; anything tighter would be a guess.
A difference of one ulp means the swarm did not compute what one machine would have: what this check is for.

The replay applies only when every window's average included every peer (``peers_included`` in each peer's JSON
lines) and no segment was the peer's own gradient (``fallback="own"``): the JSON lines do not say which peers a
partial average left out, so such a run cannot be replayed, and the check says it does not apply.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from ..flat import flatten, unflatten
from ..plan import segment_bounds
from ..reduce import reduce_slices
from ..spec import RunSpec
from .data import Digits
from .model import apply_average, local_gradient, make_model, make_optimizer, torch_threads

BOUND = 0.0  # bit for bit: see the module's docstring


@dataclass(frozen=True)
class Training:
    """What the peers trained with: enough to train the same way on one machine."""

    spec: RunSpec  # the flat vector's layout and the wire dtype
    hotkeys: list[str]  # peer i's hotkey, by index: the reduction adds the peers in sorted-hotkey order
    model: dict  # make_model's sizes
    lr: float
    batch: int


def single_process_training(training: Training, windows: int,
                            on_window: Callable[[int, list[torch.Tensor], torch.Tensor], None] | None = None
                            ) -> nn.Module:
    """The model after ``windows`` steps on the exact mean of every peer's gradient, computed in this process.
    ``on_window(step, local gradients by peer index, mean)`` sees each step's flat vectors (for diagnostics)."""
    peers = len(training.hotkeys)
    data = Digits(peers)
    batches = [data.batches(i, training.batch) for i in range(peers)]
    order = sorted(range(peers), key=lambda i: training.hotkeys[i])
    wire = training.spec.wire
    with torch_threads():
        model = make_model(**training.model)
        optimizer = make_optimizer(model, training.lr)
        segments = segment_bounds(training.spec.numel, training.spec.segments)
        residual: list[torch.Tensor | None] = [None] * peers  # error feedback: each peer's, as its Peer keeps it
        for step in range(windows):
            local = []
            for i in range(peers):
                _, grads = local_gradient(model, *next(batches[i]))
                local.append(flatten(training.spec, grads))
            # each peer's segments as its inputs decode (an int8 input's rounding, per segment, included; a topk
            # input carries the gradient plus the peer's residual, mapreduce/peer.py)
            sent: list[torch.Tensor] = []
            if wire.error_feedback:
                for i in range(peers):
                    values, _, residual[i] = wire.with_residual(local[i], residual[i], training.spec.max_abs_value,
                                                                [(s.start, s.end) for s in segments])
                    sent.append(values)
            mean = torch.empty(training.spec.numel)
            for seg in segments:  # reduced as a miner does
                slices = ([sent[i][seg.start:seg.end] for i in order] if sent else
                          [wire.decode(wire.encode(local[i][seg.start:seg.end]), seg.numel) for i in order])
                mean[seg.start:seg.end] = reduce_slices(slices, wire.output_dtype)
            if on_window is not None:
                on_window(step, local, mean)
            apply_average(model, optimizer, unflatten(training.spec, mean))
    return model


@dataclass(frozen=True)
class Equivalence:
    """How far the swarm's final weights are from single-process training's. ``worst`` is None when the
    comparison does not apply; ``detail`` says why, or what was compared."""

    worst: float | None
    bound: float
    detail: str

    @property
    def failed(self) -> bool:
        return self.worst is not None and not self.worst <= self.bound  # NaN fails too

    def line(self) -> str:
        if self.worst is None:
            return f"matches single-process training: does not apply ({self.detail})"
        return (f"matches single-process training: max |w - w_ref| = {self.worst:.1e}, bound {self.bound:.1e} "
                f"({self.detail})")


def why_not_replayable(rows_by_window: dict[int, list[dict]], windows: Sequence[int], peers: int) -> str | None:
    """Why the run's averages are not the exact means of every peer's gradient (then no replay can follow it), or
    None. ``rows_by_window``: each peer's JSON line of each window (trainer.py)."""
    for w in windows:
        rows = rows_by_window.get(w, [])
        if len(rows) != peers:
            return f"window {w}: {len(rows)}/{peers} peers finished it"
        if min(r["peers_included"] for r in rows) != peers:
            return f"window {w}: some average left peers out, and the peers' records do not say which"
        if any("own" in r["sources"] for r in rows):
            return f"window {w}: some peer kept its own gradient for a segment (fallback 'own')"
    return None


def compare_with_single_process(run_dir: Path, training: Training, rows_by_window: dict[int, list[dict]],
                                windows: Sequence[int]) -> Equivalence:
    """Replay the run in this process and compare every peer's final weights with the replay's (bound: zero)."""
    peers = len(training.hotkeys)
    reason = why_not_replayable(rows_by_window, windows, peers)
    if reason is not None:
        return Equivalence(None, BOUND, reason)
    finals = []
    for i in range(peers):
        path = run_dir / "peers" / f"p{i}" / "final.safetensors"
        if not path.exists():  # it finished every window (above), so it should have saved them
            return Equivalence(float("inf"), BOUND, f"peer {i} finished every window but saved no final weights")
        finals.append(safetensors.torch.load_file(path))
    first_divergence: list[str] = []

    def compare_window(step: int, local: list[torch.Tensor], mean: torch.Tensor) -> None:
        """Where the swarm first left the replay: a peer's own gradient (its weights or batch differed) or its
        average (the reduction differed)."""
        if first_divergence:
            return
        saved = [safetensors.torch.load_file(run_dir / "peers" / f"p{i}" / f"w{windows[step]}.safetensors")
                 for i in range(peers)]
        for i, s in enumerate(saved):
            if not torch.equal(s["local"], local[i]):
                first_divergence.append(f"first differs in window {windows[step]}: peer {i}'s own gradient")
                return
            if not torch.equal(s["averaged"], mean):
                first_divergence.append(f"first differs in window {windows[step]}: peer {i}'s average")
                return

    reference = dict(single_process_training(training, len(windows), compare_window).named_parameters())
    worst = 0.0
    for final in finals:
        if set(final) != set(reference):
            return Equivalence(float("inf"), BOUND, f"final weights name {sorted(final)}, the model "
                                                     f"{sorted(reference)}")
        for name, w in final.items():
            worst = max(worst, float((w.double() - reference[name].detach().double()).abs().max()))
    detail = f"every weight of {peers} peers after {len(windows)} windows, bit for bit: swarm/replay.py"
    if first_divergence:
        detail += "; " + first_divergence[0]
    return Equivalence(worst, BOUND, detail)
