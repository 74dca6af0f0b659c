"""Class 9: junk keys cost nothing.

A stranger writes 2,500 junk keys into a miner's bucket under a window's prefix, half of them where the miner lists
its inputs. Miners must keep their scores, and neither the victim miner's requests nor the validator's may grow
with the junk: listings are filtered by the window's participants before anything is read, and capped. The
windows run on a stepped chain (tests/support/driver.py): what would make a miner late on a real chain is the work
the junk adds, which the request counts measure without racing a loaded machine's clock.
"""
from __future__ import annotations

import asyncio

from mapreduce.wire import keys
from mapreduce.miner import Miner
from mapreduce.peer import Peer
from mapreduce.scoring import ScoringConfig
from mapreduce.validator import Validator, ValidatorConfig
from tests.support.cluster import peer_gradients

from . import attacks

JUNK = 2500


def requests(net) -> int:
    return sum(op.calls for op in net.pool.stats.snapshot().operations.values())


async def test_junk_keys_make_no_miner_late_and_cost_the_validator_nothing(cluster_factory, tmp_path,
                                                                            hostile) -> None:
    c = await cluster_factory(peers=3, miners=2, numel=40_000, segments=2, stepped=True)
    peers = [Peer(await c.join("peers", i), c.bucket_of("peers", i)) for i in range(3)]
    miners = [Miner(await c.join("miners", i, own_pool=True), c.bucket_of("miners", i)) for i in range(2)]
    vnet = await c.join("validators", 0, own_pool=True)
    validator = Validator(vnet, c.bucket_of("validators", 0), tmp_path / "v.json",
                          ValidatorConfig(segments_per_miner=4, scoring=ScoringConfig(weights_every=1)))
    grads = peer_gradients(c.spec, 3, seed=14)

    async def one_window(window: int):
        before, miners_before = requests(vnet), [requests(m.net) for m in miners]
        results = await asyncio.gather(*(p.allreduce(g, window=window) for p, g in zip(peers, grads)),
                                       *(m.run_window(window) for m in miners), validator.validate_window(window),
                                       c.drive(window, validator=True))
        assert not results[-1], f"window {window}: the work of phases {results[-1]} never finished"
        miner_requests = [requests(m.net) - b for m, b in zip(miners, miners_before)]
        return results[3:5], results[-2], requests(vnet) - before, miner_requests

    # The junk goes in first, for a window a few ahead (writing 2,500 objects takes a while); a clean window runs
    # in between, for comparison.
    junky = await c.next_window() + 5
    sem = asyncio.Semaphore(64)
    run = c.spec.run_id
    victim = miners[0].net.hotkey

    async def junk(i: int) -> None:
        prefix = keys.segment_prefix(run, junky, 0, "in") if i % 2 else keys.window_prefix(run, junky)
        async with sem:
            await attacks.put_raw(vnet, victim, junky, f"{prefix}junk-{i:05d}", b"j")
    await asyncio.gather(*(junk(i) for i in range(JUNK)))
    clean = await c.next_window()
    assert clean < junky, "writing the junk took longer than the test allows for"
    clean_miners, clean_report, clean_requests, clean_miner_requests = await one_window(clean)
    junk_miners, junk_report, junk_requests, junk_miner_requests = await one_window(junky)

    for m in clean_miners + junk_miners:
        assert m.on_time and all(o.status == "written" for o in m.outcomes), m.line()
    assert all(ch.status == "ok" for ch in junk_report.checks), [ch.reason for ch in junk_report.checks]
    for miner, score in clean_report.scores.items():
        assert junk_report.scores[miner] >= score - 0.1, (clean_report.scores, junk_report.scores)
    # What would make a miner late on a real chain is work the junk adds: at most a few capped listings.
    assert junk_miner_requests[0] <= 2 * clean_miner_requests[0], (clean_miner_requests, junk_miner_requests)
    ratio = junk_requests / clean_requests
    assert ratio <= 1.5, f"the validator made {junk_requests} requests with junk, {clean_requests} without"
    hostile("junk keys", f"a stranger wrote {JUNK} junk keys into a miner's window prefix, half where inputs are "
            "listed", f"miners stay on time; the validator made {ratio:.2f}x its requests of a clean window",
            "junk (not counted per key)")
