"""Validators check that miners host broadcast copies: sampled ranged reads against the sender's record, timed."""
from __future__ import annotations

import asyncio

import torch

from mapreduce.wire import keys
from mapreduce.broadcast import Broadcaster
from mapreduce.hosting import HostingConfig
from mapreduce.wire.records import decode_report
from mapreduce.validator import Validator, ValidatorConfig
from mapreduce.windows import WindowConfig


async def test_validator_scores_hosting_and_catches_a_dropped_copy(cluster_factory, tmp_path) -> None:
    c = await cluster_factory(peers=2, miners=3, validators=1, block_time=0.2, numel=400_000, segments=4,
                              windows=WindowConfig(30, 15, 8))
    nets = [await c.join("peers", i) for i in range(2)]
    for i in range(3):
        await c.join("miners", i)
    vnet = await c.join("validators", 0)
    # sample every duty, so the dropped copies are certainly among the checks
    validator = Validator(vnet, c.bucket_of("validators", 0), tmp_path / "v.json",
                          ValidatorConfig(hosting=HostingConfig(segments_per_miner=100)))
    casters = [Broadcaster(n, c.bucket_of("peers", i)) for i, n in enumerate(nets)]
    dropper = c.signers["miners"][0].hotkey
    window = await c.next_window()
    run = c.spec.run_id

    async def send_then_drop(caster: Broadcaster) -> dict[int, list[str]]:
        receipt = await caster.broadcast({"w": torch.randn(40_000, 10)}, window=window)
        bucket = await caster.net.bucket(window, dropper)
        for i, miners in receipt.stored_at.items():
            if dropper in miners:  # the miner loses every copy it was given
                await bucket.store.delete(bucket.name, str(keys.broadcast_key(run, window, i, caster.hotkey,
                                                                              receipt.tags[i][dropper])))
        return receipt.stored_at

    report, *stored = await asyncio.gather(validator.validate_window(window), *(send_then_drop(b) for b in casters))

    duties = {(m, sender.hotkey, i) for sender, s in zip(casters, stored) for i, ms in s.items() for m in ms}
    assert {(h.miner, h.sender, h.segment) for h in report.hosting} == duties  # 2 senders x 4 segments x 2 replicas
    assert len(duties) == 16
    copy_bytes = 100_000 * 4
    for h in report.hosting:
        if h.miner == dropper:
            assert (h.status, h.score) == ("missing", 0.0)
        else:
            assert h.status == "ok" and h.latency > 0 and h.requests >= 4 and 0.5 < h.score <= 1.0
            assert h.bytes_fetched < copy_bytes / 4  # ranged reads: header and two ranges, not the copy
    # No peer all-reduced this window, so hosting is all there was to score.
    assert report.scores[dropper] == 0.0
    assert all(report.scores[m.hotkey] > 0.5 for m in c.signers["miners"][1:])
    assert "hosting" in report.table()
    bucket = await vnet.bucket(window, vnet.hotkey)
    data = await bucket.store.get(bucket.name, str(keys.report_key(run, window, vnet.hotkey)))
    published = decode_report(data, run, window, vnet.hotkey)  # signed by the validator
    assert len(published["hosting"]) == 16
