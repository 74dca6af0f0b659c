"""Class 4: nobody can squat a key.

A stranger holding only the public keys on chain can write new objects into a miner's bucket. Here it writes
one-byte objects at every key of a window it can predict from public facts (the run, the window, the plan and the
hotkeys on chain): a miner's future outputs, and a peer's future inputs at every replica. The miner must still
publish its outputs and be scored; the peer must still be in every average.
"""
from __future__ import annotations

import asyncio

import torch

from mapreduce.flat import flatten
from mapreduce.miner import Miner
from mapreduce.peer import Peer
from mapreduce.scoring import ScoringConfig
from mapreduce.validator import Validator, ValidatorConfig
from tests.support.cluster import peer_gradients

from . import attacks
from .test_framing import fp32_bound

BLOCK = 0.3


async def test_squatted_keys_stop_no_miner_and_exclude_no_peer(cluster_factory, tmp_path, hostile) -> None:
    c = await cluster_factory(peers=3, miners=2, block_time=BLOCK, numel=40_000, segments=2)
    peers = [Peer(await c.join("peers", i), c.bucket_of("peers", i)) for i in range(3)]
    miners = [Miner(await c.join("miners", i), c.bucket_of("miners", i)) for i in range(2)]
    vnet = await c.join("validators", 0)
    validator = Validator(vnet, c.bucket_of("validators", 0), tmp_path / "v.json",
                          ValidatorConfig(segments_per_miner=4, scoring=ScoringConfig(weights_every=1)))
    grads = peer_gradients(c.spec, 3, seed=13)
    window = await c.next_window(margin_blocks=4)
    await vnet.wait_for_block(c.spec.windows.phases(window).start_block)
    plan = await vnet.plan(window)
    victim = peers[0].hotkey
    squats = 0
    for seg in plan.segments:  # the stranger uses the validator's view of the chain: only public facts
        for miner in plan.miners_for(seg.index):
            for key in attacks.predictable_keys(c.spec.run_id, window, seg.index, miner, victim):
                await attacks.put_raw(vnet, miner, window, key, b"x")
                squats += 1
    results = await asyncio.gather(*(p.allreduce(g, window=window) for p, g in zip(peers, grads)),
                                   *(m.run_window(window) for m in miners), validator.validate_window(window))
    peer_results, miner_reports, report = results[:3], results[3:5], results[-1]
    for m in miner_reports:
        assert [o.status for o in m.outcomes] == ["written"] * len(m.outcomes), m.line()
    mean = torch.stack([flatten(c.spec, g).double() for g in grads]).mean(0)
    for r in peer_results:
        assert all(s.source == "replica" and s.count == 3 for s in r.segments), r.segments
        assert float((r.flat.double() - mean).abs().max()) <= fp32_bound(grads)
    assert all(s.included_self for s in peer_results[0].segments), "the victim is in every average"
    assert report.checks and all(ch.status == "ok" for ch in report.checks), [ch.reason for ch in report.checks]
    assert min(report.scores.values()) > 0.75, report.scores
    hostile("squatting", f"a stranger wrote {squats} one-byte objects at every key it could predict: each miner's "
            "outputs and one peer's inputs at every replica",
            "miners still publish (an object at its own key that is not its own is replaced); the peer is in every "
            "average", "")
