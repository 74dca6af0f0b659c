"""Class 6: finite but huge inputs cannot overflow the mean, and nobody is blamed for the mean of valid inputs.

Two registered peers send finite values of 3e38 (fp32's largest is 3.4e38): their sum overflows to Inf. The run
spec bounds every input's values; inputs beyond the bound are refused with a reason before they reach a sum.
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
from .test_framing import fp32_bound, write_inputs


async def test_huge_finite_inputs_overflow_nothing(cluster_factory, tmp_path, hostile) -> None:
    c = await cluster_factory(peers=4, miners=2, numel=40_000, segments=2, stepped=True)
    peers = [Peer(await c.join("peers", i), c.bucket_of("peers", i)) for i in range(2)]
    bad = [await c.join("peers", i) for i in (2, 3)]
    miners = [Miner(await c.join("miners", i), c.bucket_of("miners", i)) for i in range(2)]
    validator = Validator(await c.join("validators", 0), c.bucket_of("validators", 0), tmp_path / "v.json",
                          ValidatorConfig(segments_per_miner=4, scoring=ScoringConfig(weights_every=1)))
    grads = peer_gradients(c.spec, 2, seed=12)
    window = await c.next_window()
    # Blocks come as the work is done (tests/support/driver.py), the hostile peers' inputs and records included.
    drive = c.drive(window, validator=True)
    await bad[0].wait_for_block(c.spec.windows.phases(window).start_block)
    run = c.spec.run_id
    for net in bad:
        _, rows = await write_inputs(net, window, lambda seg, net=net: attacks.input_object(
            net.signer, run, window, seg.index, torch.full((seg.numel,), 3e38)))
        await attacks.put_raw(net, net.hotkey, window, attacks.record_key(run, window, net.hotkey),
                              attacks.upload_record(net.signer, run, window, rows))
    results = await asyncio.gather(*(p.allreduce(g, window=window) for p, g in zip(peers, grads)),
                                   *(m.run_window(window) for m in miners), validator.validate_window(window), drive)
    peer_results, miner_reports, report = results[:2], results[2:4], results[-2]
    assert not results[-1], f"the work of phases {results[-1]} never finished"
    mean = torch.stack([flatten(c.spec, g).double() for g in grads]).mean(0)
    for r in peer_results:
        assert torch.isfinite(r.flat).all()
        assert not r.fallbacks
        assert float((r.flat.double() - mean).abs().max()) <= fp32_bound(grads)
    for m in miner_reports:
        assert m.rejected["out_of_bounds"] == 2 * len(m.outcomes), m.rejected
    assert report.checks and all(ch.status == "ok" for ch in report.checks), [ch.reason for ch in report.checks]
    assert min(report.scores.values()) > 0.75, report.scores
    hostile("overflow", "two registered peers sent finite inputs of 3e38, whose fp32 sum is Inf",
            "miners refuse them (beyond the run spec's max_abs_value); miners keep their scores; peers get the "
            "exact mean of the rest", "out_of_bounds")
