"""A miner starts reducing before its input listing is final (``settle_at``) and still gets exactly the reduction
of the final list: an input that appears during the wait is added after the others when it sorts last, and the
reduction starts over when it sorts first."""
from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
import torch

from mapreduce.inputs import reduce_segment
from mapreduce.plan import Segment
from mapreduce.reduce import Accumulator
from tests.support.plant import plant_input

WINDOW = 5


async def one_miner(cluster_factory, peers: int):
    """A cluster of ``peers`` peers and one miner holding the only segment; (cluster, miner's network, its bucket
    for WINDOW)."""
    c = await cluster_factory(peers=peers, miners=1, numel=40_000, segments=1, redundancy=1, store="memory")
    for i in range(peers):
        await c.join("peers", i)
    net = await c.join("miners", 0)
    return c, net, await net.bucket(WINDOW, net.hotkey)


@pytest.mark.parametrize("straggler", ["first", "last"])
async def test_input_appearing_before_settle_is_counted(cluster_factory, straggler: str) -> None:
    c, net, bucket = await one_miner(cluster_factory, 3)
    window = WINDOW
    seg = Segment(0, 0, c.spec.numel)
    by_hotkey = sorted(c.signers["peers"], key=lambda s: s.hotkey)
    late_one = by_hotkey[0] if straggler == "first" else by_hotkey[-1]
    values = {s.hotkey: torch.randn(c.spec.numel) for s in by_hotkey}
    for s in by_hotkey:
        if s is not late_one:
            await plant_input(bucket, c.spec.run_id, window, 0, s, values[s.hotkey])

    async def straggle() -> None:
        await asyncio.sleep(0.3)  # after the early listing, before the listing is final
        await plant_input(bucket, c.spec.run_id, window, 0, late_one, values[late_one.hotkey])

    rejected: Counter = Counter()
    deadline = time.time() + 30  # every input is on time
    acc, _ = await asyncio.gather(
        reduce_segment(net, window, seg, bucket, deadline, rejected, settle_at=time.time() + 1.5), straggle())
    assert acc.hotkeys == [s.hotkey for s in by_hotkey]
    expected = Accumulator(c.spec.numel)
    for s in by_hotkey:
        expected.add(s.hotkey, "", values[s.hotkey])
    assert torch.equal(acc.mean(torch.float32), expected.mean(torch.float32))
    assert not rejected


async def test_a_late_input_is_one_log_line_and_one_count(cluster_factory, caplog) -> None:
    """The early listing is provisional: only the final one counts and logs what it refuses (one line per fact)."""
    c, net, bucket = await one_miner(cluster_factory, 2)
    window = WINDOW
    for s in c.signers["peers"]:
        await plant_input(bucket, c.spec.run_id, window, 0, s, torch.randn(c.spec.numel))
    rejected: Counter = Counter()
    with caplog.at_level("INFO", logger="mapreduce.inputs"):
        acc = await reduce_segment(net, window, Segment(0, 0, c.spec.numel), bucket, time.time() - 30, rejected,
                                   settle_at=time.time() + 0.3)
    assert acc.hotkeys == []
    assert rejected == Counter(late=2)
    lines = [r.getMessage() for r in caplog.records if "not counted (late)" in r.getMessage()]
    assert len(lines) == 2, lines
