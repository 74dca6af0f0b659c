"""Cheaters lose: each dishonest miner ranks strictly below every honest one, with its reason in the validator's
report, and no honest peer's average is corrupted. Dishonest peers' inputs are excluded with a counted reason."""
from __future__ import annotations

import asyncio

import pytest
import torch

from mapreduce.wire import keys
from mapreduce.errors import InvalidName
from mapreduce.flat import flatten
from mapreduce.miner import Miner
from mapreduce.wire.names import check_bucket, check_hotkey, check_run_id
from mapreduce.peer import Peer
from mapreduce.plan import segment_bounds
from mapreduce.scoring import ScoringConfig
from mapreduce.wire.signing import Signer
from mapreduce.validator import Validator, ValidatorConfig
from tests.support.plant import plant_input
from tests.support.cluster import peer_gradients
from tests.support.tables import shorten

from .adversaries import MINER_BEHAVIOURS, AdversarialMiner

BLOCK = 0.3
# Cheats whose act is timed after the reduce deadline, against the validator's re-listing at the window's end: they
# run on wall-clock blocks of BLOCK s. The others run on a stepped chain whose blocks come as the work is done
# (tests/support/driver.py).
AFTER_THE_DEADLINE = ("late", "overwrites_after_deadline")


def fp32_bound(grads) -> float:
    return (len(grads) + 1) * 2.0 ** -24 * max(float(t.abs().max()) for g in grads for t in g.values())


# What the validator must say of each cheater: it is caught for what it did, not for something else.
WHY = {"zeros": "output differs from the recomputed mean", "noise": "output differs from the recomputed mean",
       "omits_one_peer": "left out 1 valid input", "copies": "proof of possession fails",
       "late": "no output by the reduce deadline", "nan": "non_finite",
       "forges_input": "includes an invalid input", "overwrites_after_deadline": "overwritten after"}


@pytest.mark.parametrize("behaviour", MINER_BEHAVIOURS)
async def test_dishonest_miner_ranks_below_honest(cluster_factory, tmp_path, reliability, behaviour: str) -> None:
    # every miner holds every segment (r = 3), so each segment has two honest replicas beside the cheater
    stepped = behaviour not in AFTER_THE_DEADLINE
    c = await cluster_factory(peers=3, miners=3, redundancy=3, segments=3, block_time=BLOCK, numel=60_000,
                              stepped=stepped)
    peers = [Peer(await c.join("peers", i), c.bucket_of("peers", i)) for i in range(3)]
    honest = [Miner(await c.join("miners", i), c.bucket_of("miners", i)) for i in range(2)]
    cheat = AdversarialMiner(await c.join("miners", 2), c.bucket_of("miners", 2), behaviour=behaviour,
                             victim_hotkeys=[m.net.hotkey for m in honest])
    validator = Validator(await c.join("validators", 0), c.bucket_of("validators", 0), tmp_path / "v.json",
                          ValidatorConfig(segments_per_miner=3, scoring=ScoringConfig(weights_every=1)))
    grads = peer_gradients(c.spec, 3, seed=11)
    window = await c.next_window()
    drive = [c.drive(window, validator=True)] if stepped else []
    results = await asyncio.gather(*(p.allreduce(g, window=window) for p, g in zip(peers, grads)),
                                   *(m.run_window(window) for m in honest + [cheat]),
                                   validator.validate_window(window), *drive)
    if drive:
        assert not results.pop(), "the driver gave up waiting for the window's work"
    report = results[-1]
    honest_keys = {m.net.hotkey for m in honest}
    honest_scores = [report.scores[h] for h in honest_keys]
    cheat_score = report.scores.get(cheat.net.hotkey, 0.0)
    cheat_checks = [ch for ch in report.checks if ch.miner == cheat.net.hotkey]
    reasons = sorted({ch.reason or ch.status for ch in cheat_checks})
    assert cheat_score < min(honest_scores), (behaviour, cheat_score, honest_scores, reasons)
    assert all(ch.reason for ch in cheat_checks), "every check of the cheater names why it lost"
    assert any(WHY[behaviour] in r for r in reasons), (behaviour, reasons)  # caught for what it did
    assert all(ch.status == "ok" for ch in report.checks if ch.miner in honest_keys)

    mean = torch.stack([flatten(c.spec, g).double() for g in grads]).mean(0)
    worst = max(float((r.flat.double() - mean).abs().max()) for r in results[:3])
    assert worst <= fp32_bound(grads), f"an honest peer's average was corrupted by {behaviour}: {worst}"
    used_cheat = sum(s.miner == cheat.net.hotkey for r in results[:3] for s in r.segments)
    averages = sum(len(r.segments) for r in results[:3])
    why = next(r for r in reasons if WHY[behaviour] in r)
    reliability("adversary miner", behaviour, "ranked below every honest miner; peers unaffected",
                f"score {cheat_score:.3f} vs honest >= {min(honest_scores):.3f}; reason: {shorten(why, 110)}; "
                f"peers took its output for {used_cheat} of {averages} segment averages (each within the fp32 "
                f"bound: max |avg - mean| {worst:.1e})")


def _forge_signature(data: bytes) -> bytes:
    i = data.find(b'"signature":"') + len('"signature":"')
    return data[:i] + (b"00" if data[i:i + 2] != b"00" else b"11") + data[i + 2:]


PEER_CASES = {
    # case: (how the bad input is made, the reason the miner counts)
    "forged_signature": ("bad_signature",),
    "unregistered_hotkey": ("unknown_hotkey",),
    "wrong_shape": ("shape_mismatch",),
    "oversized": ("oversized",),
    "nan": ("non_finite",),
}


@pytest.mark.parametrize("case", sorted(PEER_CASES))
async def test_dishonest_peer_input_is_excluded_and_counted(cluster_factory, reliability, case: str) -> None:
    c = await cluster_factory(peers=4, miners=1, redundancy=1, segments=2, numel=40_000, stepped=True)
    peers = [Peer(await c.join("peers", i), c.bucket_of("peers", i)) for i in range(3)]
    bad = c.signers["peers"][3]
    await c.join("peers", 3)  # a registered, committed peer that cheats (except for the unregistered case)
    miner = Miner(await c.join("miners", 0), c.bucket_of("miners", 0))
    grads = peer_gradients(c.spec, 3, seed=21)
    window = await c.next_window()
    drive = c.drive(window, peers=[p.net.hotkey for p in peers])  # the cheat plants inputs before the deadline
    await miner.net.wait_for_block(c.spec.windows.phases(window).start_block)
    bucket = await miner.net.bucket(window, miner.net.hotkey)
    seg = segment_bounds(c.spec.numel, c.spec.segments)[0]
    n = seg.numel

    def plant(signer: Signer, values: torch.Tensor, **kw) -> None:
        return plant_input(bucket, c.spec.run_id, window, seg.index, signer, values, **kw)

    if case == "forged_signature":
        await plant(bad, torch.randn(n), mangle=_forge_signature)
    elif case == "unregistered_hotkey":
        await plant(Signer.from_uri("//nobody-registered-this"), torch.randn(n))
    elif case == "wrong_shape":
        await plant(bad, torch.randn(n + 7))
    elif case == "oversized":
        await plant(bad, torch.randn(n + 400_000))  # past the 1 MiB header slack
    elif case == "nan":
        await plant(bad, torch.full((n,), float("nan")))
    results = await asyncio.gather(*(p.allreduce(g, window=window) for p, g in zip(peers, grads)),
                                   miner.run_window(window), drive)
    assert not results.pop(), "the driver gave up waiting for the window's work"
    report = results[-1]
    (reason,) = PEER_CASES[case]
    assert report.rejected[reason] == 1, report.rejected
    assert [o.inputs for o in report.outcomes] == [3, 3], "only the three honest inputs in each segment"
    mean = torch.stack([flatten(c.spec, g).double() for g in grads]).mean(0)
    worst = max(float((r.flat.double() - mean).abs().max()) for r in results[:3])
    assert worst <= fp32_bound(grads)
    reliability("adversary peer", case, f"excluded by the miner, counted as {reason}",
                f"honest mean unaffected (max |avg - mean| {worst:.1e})")


@pytest.mark.parametrize("kind,value", [
    ("run id", "../other-run"), ("run id", "run/with/slash"), ("run id", "run\x07bell"), ("run id", "r" * 65),
    ("hotkey", "../../" + "5" * 42), ("hotkey", "5Fxx\nnewline"), ("hotkey", "5" * 200),
    ("bucket", "my..bucket"), ("bucket", "a/b"), ("bucket", "x" * 64), ("bucket", "bucket\r"),
])
def test_bad_names_are_refused_before_they_reach_a_key(reliability, kind: str, value: str) -> None:
    hk = Signer.from_uri("//names-case").hotkey
    with pytest.raises(InvalidName):
        if kind == "run id":
            check_run_id(value)
            keys.input_key(value, 1, 0, hk, "0" * 128)
        elif kind == "hotkey":
            check_hotkey(value)
            keys.output_key("run", 1, 0, value)
        else:
            check_bucket(value)
    reliability("names", f"{kind} {value[:24]!r}", "refused (InvalidName) before any key is built")
