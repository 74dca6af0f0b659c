"""A validator's own slowness is no miner's lateness; a miner's endpoint holding an answer is.

An output counts for a validator only if it read the output's header by the reduce deadline. Here every miner has
written its outputs well before the deadline, and then the reduce deadline block is produced while one answer is
on its way:

- ``our_stall``: the listing that first shows the outputs reaches a validator whose process is starved (a blocking
  call holds its event loop) across the deadline, so it asks for the headers late. The miners were on time: no
  check may blame them (before, they scored 0 as late: the CI failure of a67e035). The validator cannot prove
  they were on time either (an endpoint could have held the read), so those checks are dropped, and counted.
- ``their_hold``: the miner's endpoint holds the answer to a header read across the deadline while the validator
  idles. That is the endpoint's doing, and how a front that lists outputs before it writes them behaves: late.
"""
from __future__ import annotations

import asyncio
import re
import time

import pytest

from mapreduce.directory import BucketLocation
from mapreduce.errors import KeyMismatch
from mapreduce.looplag import LoopLag
from mapreduce.miner import Miner
from mapreduce.peer import Peer
from mapreduce.scoring import ScoringConfig
from mapreduce.validator import Validator, ValidatorConfig
from mapreduce.wire.keys import ObjectKey
from tests.support.cluster import PUBLIC_KEYS, peer_gradients

BEFORE, AFTER = 0.3, 0.3  # seconds the answer waits before the deadline block, and after it


def is_output(key: str) -> bool:
    try:
        return ObjectKey.parse(key).role == "out"
    except KeyMismatch:
        return False


@pytest.mark.parametrize("delay", ["our_stall", "their_hold"])
async def test_only_the_miners_own_delay_makes_it_late(cluster_factory, tmp_path, delay: str) -> None:
    c = await cluster_factory(peers=3, miners=2, numel=40_000, segments=2, store="memory", stepped=True)
    peers = [Peer(await c.join("peers", i), c.bucket_of("peers", i)) for i in range(3)]
    miners = [Miner(await c.join("miners", i), c.bucket_of("miners", i)) for i in range(2)]
    vnet = await c.join("validators", 0, own_pool=True)
    validator = Validator(vnet, c.bucket_of("validators", 0), tmp_path / "v.json",
                          ValidatorConfig(segments_per_miner=2, scoring=ScoringConfig(weights_every=1)))
    window = await c.next_window()
    deadline = c.spec.windows.phases(window).reduce_deadline
    # The validator's client for the miners' buckets (one endpoint, one set of published keys for all of them).
    store = await vnet.pool.store_for(BucketLocation("miner", c.bucket_of("miners", 0), c.s3_endpoint, *PUBLIC_KEYS))
    client = store._client_obj
    get_object, list_objects = client.get_object, client.list_objects_v2
    delayed: list[str] = []  # the output whose reading was delayed

    async def all_outputs_written() -> bool:
        own = await c.pool.own_store()
        found = 0
        for i in range(2):
            found += sum(is_output(o.key) for o in await own.list(c.bucket_of("miners", i), ""))
        return found == 2 * c.spec.segments

    async def delay_once(key: str, blocking: bool) -> None:
        delayed.append(key)
        while not await all_outputs_written():  # every miner on time, so only this read is in question
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # and each has seen the block after its writes (it is on time)
        if blocking:
            time.sleep(BEFORE)  # the answer is here; our process cannot look at it
            c.chain.advance_to(deadline)  # the chain, elsewhere, goes on
            time.sleep(AFTER)
        else:
            await asyncio.sleep(BEFORE)  # their endpoint holds the answer; we idle
            c.chain.advance_to(deadline)
            await asyncio.sleep(AFTER)

    async def listing(**kw):
        # our_stall: the listing that first shows the outputs reaches a starved validator, which asks late
        answer = await list_objects(**kw)
        shown = [o["Key"] for o in answer.get("Contents", []) if is_output(o["Key"])]
        if delay == "our_stall" and shown and not delayed:
            await delay_once(shown[0], blocking=True)
        return answer

    async def read(**kw):
        # their_hold: the endpoint holds the answer to the first header read of an output across the deadline
        answer = await get_object(**kw)
        if delay == "their_hold" and kw.get("Range") and is_output(kw["Key"]) and not delayed:
            await delay_once(kw["Key"], blocking=False)
        return answer
    client.get_object, client.list_objects_v2 = read, listing

    grads = peer_gradients(c.spec, 3, seed=5)
    results = await asyncio.gather(*(p.allreduce(g, window=window) for p, g in zip(peers, grads)),
                                   *(m.run_window(window) for m in miners), validator.validate_window(window),
                                   c.drive(window, validator=True, reduced=lambda: c.chain.current_block() >= deadline))
    report = results[5]
    assert delayed, "the validator read no output header"
    assert all(m.on_time for m in results[3:5])
    miner = ObjectKey.parse(delayed[0]).hotkey
    segment = ObjectKey.parse(delayed[0]).segment
    if delay == "our_stall":  # every output was listed late by the starved validator: none is blamed
        assert all(ch.status == "ok" for ch in report.checks), [ch.reason for ch in report.checks]
        assert all(score > 0.5 for score in report.scores.values()), report.scores
        assert report.rejected.get("unchecked_own_stall", 0) >= 1, report.rejected
        return
    (check,) = [ch for ch in report.checks if ch.miner == miner and ch.segment == segment]
    others = [ch for ch in report.checks if ch is not check]
    assert others and all(ch.status == "ok" for ch in others), [ch.reason for ch in others]
    assert check.status == "invalid" and check.score == 0, check
    assert check.reason.startswith("late: its output could not be read before the reduce deadline"), check
    own = float(re.search(r"of which ([0-9.]+)s our own stall", check.reason).group(1))
    assert own < AFTER / 2, check.reason  # the hold is theirs: at most scheduling noise of ours is allowed


async def test_loop_lag_counts_a_blocking_call_and_not_an_await() -> None:
    with LoopLag() as lag:
        await asyncio.sleep(0.05)
        start = time.time()
        time.sleep(0.3)  # our process busy: the loop cannot run
        await asyncio.sleep(0.05)
        blocked = time.time()
        await asyncio.sleep(0.3)  # waiting on someone else: the loop idles, on time
        end = time.time()
    assert 0.25 <= lag.within(start, blocked) <= 0.4, lag.stalls
    assert lag.within(blocked, end) < 0.05, lag.stalls
    assert lag.within(start - 10, start - 5) == 0.0
