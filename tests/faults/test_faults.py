"""Nothing lost: redundancy, peers that finish alone, missing and late peers, S3 faults through a proxy."""
from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
import torch

from mapreduce.wire.codec import ObjectMeta, encode
from mapreduce.flat import flatten
from mapreduce.inputs import list_inputs
from mapreduce.miner import Miner
from mapreduce.peer import Peer, PeerConfig
from mapreduce.writes import write_copies
from storage import FaultPlan, RetryConfig, TransferConfig
from tests.support.cluster import peer_gradients

BLOCK = 0.3


def mean_of(spec, grads) -> torch.Tensor:
    return torch.stack([flatten(spec, g).double() for g in grads]).mean(0)


def bound(grads) -> float:
    return (len(grads) + 1) * 2.0 ** -24 * max(float(t.abs().max()) for g in grads for t in g.values())


async def test_one_miner_down_peers_take_the_replica(cluster_factory, reliability) -> None:
    c = await cluster_factory(peers=3, miners=2, redundancy=2, segments=4, numel=40_000, stepped=True)
    peers = [Peer(await c.join("peers", i), c.bucket_of("peers", i)) for i in range(3)]
    up = Miner(await c.join("miners", 0), c.bucket_of("miners", 0))
    await c.join("miners", 1)  # registered and committed, in the plan, but never runs
    grads = peer_gradients(c.spec, 3, seed=31)
    window = await c.next_window()
    # Blocks come as the work is done (tests/support/driver.py): the chain does not wait for the miner that is down.
    results = await asyncio.gather(*(p.allreduce(g, window=window) for p, g in zip(peers, grads)),
                                   up.run_window(window), c.drive(window, miners=[up.net.hotkey]))
    assert not results.pop(), "the driver gave up waiting for the window's work"
    worst = max(float((r.flat.double() - mean_of(c.spec, grads)).abs().max()) for r in results[:3])
    assert worst <= bound(grads)
    for r in results[:3]:
        assert {s.source for s in r.segments} == {"replica"}
        assert {s.miner for s in r.segments} == {up.net.hotkey}
    reliability("fault", "one of two replicas down (r=2)", "every peer took the live replica, no fallback",
                f"max |avg - mean| {worst:.1e}")


@pytest.mark.parametrize("fallback", ["reduce", "own"])
async def test_no_valid_replica_peers_finish_alone(cluster_factory, reliability, fallback: str) -> None:
    c = await cluster_factory(peers=2, miners=2, numel=40_000, stepped=True)
    peers = [Peer(await c.join("peers", i), c.bucket_of("peers", i), PeerConfig(fallback=fallback))
             for i in range(2)]
    for i in range(2):
        await c.join("miners", i)  # both miners registered, neither runs
    grads = peer_gradients(c.spec, 2, seed=9)
    window = await c.next_window()
    started = time.monotonic()
    results = await asyncio.gather(*(p.allreduce(g, window=window) for p, g in zip(peers, grads)),
                                   c.drive(window, miners=()))
    assert not results.pop(), "the driver gave up waiting for the window's work"
    seconds = time.monotonic() - started
    for r, g in zip(results, grads):
        if fallback == "reduce":
            assert {s.source for s in r.segments} == {"self-reduced"}
            assert float((r.flat.double() - mean_of(c.spec, grads)).abs().max()) <= bound(grads)
        else:
            assert {s.source for s in r.segments} == {"own"}
            assert torch.equal(r.flat, flatten(c.spec, g))
    reliability("fault", f"every replica down, fallback={fallback}",
                "window finished; each segment says " + ("self-reduced (exact mean)" if fallback == "reduce"
                                                         else "own (the peer's own gradient)"),
                f"{seconds:.1f}s for the window (blocks produced as the work is done)")


async def test_missing_and_late_peers_are_left_out_exactly(cluster_factory, reliability) -> None:
    c = await cluster_factory(peers=4, miners=1, redundancy=1, segments=2, block_time=BLOCK, numel=40_000)
    peers = [Peer(await c.join("peers", i), c.bucket_of("peers", i)) for i in range(4)]
    miner = Miner(await c.join("miners", 0), c.bucket_of("miners", 0))
    grads = peer_gradients(c.spec, 4, seed=41)
    window = await c.next_window()
    phases = c.spec.windows.phases(window)

    async def late_peer() -> None:
        # later than the deadline plus the clock-skew tolerance (1 s) plus S3's 1 s Last-Modified resolution
        await peers[3].net.wait_for_block(phases.upload_deadline + 8)
        # its inputs, landing after the deadline (Peer.upload itself gives up a copy at the deadline; a slow link
        # can still land one later). Peer 2 never shows up at all.
        net, plan, flat = peers[3].net, await peers[3].net.plan(window), flatten(c.spec, grads[3])
        for seg in plan.segments:
            meta = ObjectMeta(c.spec.run_id, window, "in", net.hotkey, seg.index)
            obj = encode(meta, {"data": flat[seg.start:seg.end]}, net.signer)
            await write_copies(net, window, seg.index, "in", list(plan.miners_for(seg.index)), obj.data)

    results = await asyncio.gather(peers[0].allreduce(grads[0], window=window),
                                   peers[1].allreduce(grads[1], window=window),
                                   miner.run_window(window), late_peer())
    report = results[2]
    on_time = mean_of(c.spec, grads[:2])
    for r in results[:2]:
        assert all(s.count == 2 for s in r.segments), "denominator: the two on-time peers"
        assert float((r.flat.double() - on_time).abs().max()) <= bound(grads[:2])
    assert [o.inputs for o in report.outcomes] == [2, 2]
    # The late inputs are in the bucket now; the deadline rule (Last-Modified against the deadline block's
    # timestamp) keeps them out whenever anyone lists, and counts them.
    seg = (await miner.net.plan(window)).segments[0]
    bucket = await miner.net.bucket(window, miner.net.hotkey)
    deadline = await miner.net.block_timestamp(phases.upload_deadline)
    rejected = Counter()
    refs = await list_inputs(miner.net, window, seg, bucket, deadline, rejected)
    assert sorted(r.hotkey for r in refs) == sorted(p.hotkey for p in peers[:2])
    assert rejected == Counter(late=1)
    reliability("fault", "one peer missing, one peer late", "reduction covers exactly the on-time inputs",
                "count 2 of 4 registered; the late input is present but excluded as late")


async def test_s3_faults_windows_still_complete(cluster_factory, fault_proxy, reliability) -> None:
    """10% of requests answered 503, 2% connections reset, and one 5-second stall: every peer still gets the
    full average; the extra time against the same window without faults is printed."""
    transfer = TransferConfig(connect_timeout=1.0, read_timeout=2.0, operation_timeout=20.0)
    retry = RetryConfig(max_attempts=10, base_delay=0.05, max_delay=0.5, total_budget=15.0)
    timings = {}
    for label, plans in (("clean", []), ("faults", [
            FaultPlan(stall_rate=1.0, stall_seconds=5.0, max_faults=1, seed=7),
            FaultPlan(error_rate=0.10, reset_rate=0.02, seed=7)])):
        fault_proxy.plan = FaultPlan()
        fault_proxy.reset_counts()
        c = await cluster_factory(peers=3, miners=2, redundancy=2, segments=4, block_time=1.0, numel=200_000,
                                  endpoint=fault_proxy.endpoint_url, transfer=transfer, retry=retry)
        peers = [Peer(await c.join("peers", i), c.bucket_of("peers", i)) for i in range(3)]
        miners = [Miner(await c.join("miners", i), c.bucket_of("miners", i)) for i in range(2)]
        grads = peer_gradients(c.spec, 3, seed=51)
        window = await c.next_window()
        await peers[0].net.wait_for_block(c.spec.windows.phases(window).start_block)
        if plans:
            fault_proxy.plan = plans[0]  # the first request of the window stalls for 5 s ...
            await asyncio.sleep(0.05)

            async def then_errors() -> None:  # ... then 503s and resets for the rest of it
                while fault_proxy.counts.get("stall", 0) < 1:
                    await asyncio.sleep(0.02)
                fault_proxy.plan = plans[1]
            switch = asyncio.create_task(then_errors())
        results = await asyncio.gather(*(p.allreduce(g, window=window) for p, g in zip(peers, grads)),
                                       *(m.run_window(window) for m in miners))
        if plans:
            await switch
        counts = dict(fault_proxy.counts)
        fault_proxy.plan = FaultPlan()
        worst = max(float((r.flat.double() - mean_of(c.spec, grads)).abs().max()) for r in results[:3])
        assert worst <= bound(grads), f"{label}: an average was lost or wrong"
        for r in results[:3]:
            assert not r.fallbacks and all(s.count == 3 for s in r.segments), f"{label}: {r.segments}"
        timings[label] = (max(r.seconds for r in results[:3]),
                          max(sum(o.seconds for o in m.outcomes) for m in results[3:]), counts)
    (clean_peer, clean_miner, _), (fault_peer, fault_miner, counts) = timings["clean"], timings["faults"]
    assert counts.get("error", 0) > 0 and counts.get("stall", 0) == 1
    print(f"\nS3 faults: peer window {clean_peer:.2f}s -> {fault_peer:.2f}s, miner reduce {clean_miner:.2f}s -> "
          f"{fault_miner:.2f}s; injected {counts}")
    reliability("fault", "S3: 10% 503, 2% resets, one 5 s stall", "every peer got the full average, no fallback",
                f"miner reduce {clean_miner:.2f}s -> {fault_miner:.2f}s; peer window {clean_peer:.1f}s -> "
                f"{fault_peer:.1f}s (phases are fixed in blocks); injected 503 x{counts.get('error', 0)}, "
                f"reset x{counts.get('reset_before', 0) + counts.get('reset_mid', 0)}, "
                f"stall x{counts.get('stall', 0)} of {counts.get('requests', 0)} requests")
