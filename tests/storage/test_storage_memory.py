"""The in-memory S3 (storage/memory.py) against moto: the same calls make the same requests and answers; and what
only the memory server shows: its one-second stamps, its page and token rules, its own request counts.

The behaviours both share (round trips, write-once, ranges, typed errors) run on both transports in
test_storage_objects.py.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from mapreduce.network import StorePool
from storage import (EmbeddedS3, ListingTooLong, MemoryS3, MemoryStore, NotFound, ObjectStore, PreconditionFailed,
                     StorageError, TransferConfig, TransferStats)

MiB = 1024 * 1024
TRANSFER = TransferConfig(multipart_threshold=6 * MiB, part_size=5 * MiB, ranged_get_threshold=2 * MiB,
                          range_part_size=MiB, max_concurrency=4)


@pytest.fixture
async def memory() -> AsyncIterator[MemoryStore]:
    async with MemoryS3().store(None, TRANSFER) as s:
        await s.create_bucket("bench-bucket")
        yield s


async def _workload(store: ObjectStore, bucket: str) -> None:
    """One of each call the roles make, with the paths that split a request (multipart, ranges, pages)."""
    big = bytes(range(256)) * (7 * MiB // 256)
    await store.put(bucket, "small", b"x" * 1000, if_none_match=True)
    await store.put(bucket, "big", big)
    assert bytes(await store.get(bucket, "big")) == big  # a GET, then 1 MiB ranges
    assert bytes(await store.get(bucket, "small", max_bytes=2000)) == b"x" * 1000  # HEAD + GET
    assert await store.get_range(bucket, "small", 10, 20) == b"x" * 10
    with pytest.raises(NotFound):
        await store.head(bucket, "missing")  # HEAD, then HeadBucket (a HEAD 404 does not say which is missing)
    with pytest.raises(PreconditionFailed):
        await store.put(bucket, "small", b"y", if_none_match=True)
    await asyncio.gather(*(store.put(bucket, f"many/{i:04d}", b"z") for i in range(1005)))
    assert len(await store.list(bucket, "many/")) == 1005  # two pages
    await store.delete_many(bucket, [f"many/{i:04d}" for i in range(1005)])


async def test_same_calls_make_the_same_requests_on_both_transports(embedded_s3: EmbeddedS3) -> None:
    counts = {}
    for name in ("moto", "memory"):
        stats = TransferStats()
        store = (ObjectStore(embedded_s3.config(), TRANSFER, stats=stats) if name == "moto"
                 else MemoryS3().store(None, TRANSFER, stats=stats))
        async with store:
            bucket = f"same-requests-{name}-{time.time_ns() % 10**9}"
            await store.create_bucket(bucket)
            await _workload(store, bucket)
        snap = stats.snapshot()
        counts[name] = ({op: (s.calls, s.ranged, sorted(s.errors.items())) for op, s in snap.operations.items()},
                        snap.bytes_sent, snap.bytes_received)
    assert counts["memory"] == counts["moto"]
    ops = counts["memory"][0]
    assert ops["GetObject"][:2] == (1 + 6 + 1 + 1, 6 + 1)  # big: 1 + 6 ranges; small: 1; get_range: 1 (ranged)
    assert ops["HeadBucket"][0] == 1 and ops["ListObjectsV2"][0] == 2


async def test_the_server_sees_what_the_client_counts(memory: MemoryStore) -> None:
    memory.server.requests.clear()
    before = memory.stats.snapshot().operations
    await _workload(memory, "bench-bucket")
    after = memory.stats.snapshot().operations
    client = {op: s.calls - (before[op].calls if op in before else 0) for op, s in after.items()}
    assert dict(memory.server.requests) == {op: n for op, n in client.items() if n}


async def test_last_modified_has_one_second_resolution(memory: MemoryStore) -> None:
    for i in range(3):
        written = time.time()
        put = await memory.put("bench-bucket", f"t{i}", b"1")
        head = await memory.head("bench-bucket", f"t{i}")
        (listed,) = await memory.list("bench-bucket", f"t{i}")
        for info in (put, head, listed):
            stamp = info.last_modified.timestamp()
            assert stamp == int(stamp) and written - 1 < stamp <= time.time()  # (t - 1, t], as windows.py assumes
        await asyncio.sleep(0.4)


async def test_pages_tokens_and_start_after(memory: MemoryStore) -> None:
    server = memory.server
    keys = [f"p/{i:02d}" for i in range(25)]
    for k in keys:
        await memory.put("bench-bucket", k, k.encode())
    page = await server.list_objects_v2(Bucket="bench-bucket", Prefix="p/", MaxKeys=10)
    assert [c["Key"] for c in page["Contents"]] == keys[:10] and page["IsTruncated"]
    # The token wins over StartAfter, as on S3.
    nxt = await server.list_objects_v2(Bucket="bench-bucket", Prefix="p/", MaxKeys=10, StartAfter="p/20",
                                       ContinuationToken=page["NextContinuationToken"])
    assert [c["Key"] for c in nxt["Contents"]] == keys[10:20]
    assert [i.key for i in await memory.list("bench-bucket", "p/", start_after="p/20")] == keys[21:]
    assert await memory.list("bench-bucket", "nothing/") == []
    with pytest.raises(ListingTooLong):
        await memory.list("bench-bucket", "p/", max_keys=24)
    with pytest.raises(StorageError):
        await memory._call("ListObjectsV2", "bench-bucket", None, lambda _: server.list_objects_v2(
            Bucket="bench-bucket", ContinuationToken="not base64!"))


async def test_write_once_races_have_one_winner(memory: MemoryStore) -> None:
    got = await asyncio.gather(*(memory.put("bench-bucket", "race", bytes([i]) * 10, if_none_match=True)
                                 for i in range(20)), return_exceptions=True)
    winners = [g for g in got if not isinstance(g, BaseException)]
    assert len(winners) == 1 and all(isinstance(g, PreconditionFailed) for g in got if g is not winners[0])
    assert (await memory.head("bench-bucket", "race")).etag == winners[0].etag


async def test_ranged_and_labelled_counts() -> None:
    stats = TransferStats(label=lambda target: (target or "").split("/")[0] or "-")
    async with MemoryS3().store(None, TRANSFER, stats=stats) as store:
        await store.create_bucket("labels")
        await store.put("labels", "a/1", b"0123456789")
        await store.get("labels", "a/1")
        await store.get_range("labels", "a/1", 2, 4)
        await store.list("labels", "a/")
    snap = stats.snapshot()
    assert (snap.operations["GetObject"].calls, snap.operations["GetObject"].ranged) == (2, 1)
    assert snap.labelled == {("CreateBucket", "-"): 1, ("PutObject", "a"): 1, ("GetObject", "a"): 1,
                             ("GetObject:range", "a"): 1, ("ListObjectsV2", "a"): 1}


async def test_a_store_pool_takes_the_memory_transport() -> None:
    server = MemoryS3()
    pool = StorePool(server.config(), TRANSFER, store_factory=server.store)
    other = pool.sibling()
    try:
        mine = await pool.own_store()
        assert isinstance(mine, MemoryStore) and mine.stats is pool.stats
        await mine.create_bucket("shared")
        await mine.put("shared", "k", b"v")
        theirs = await other.own_store()
        assert isinstance(theirs, MemoryStore) and theirs.stats is other.stats
        assert await theirs.get("shared", "k") == b"v"  # one server
        assert pool.stats.snapshot().bytes_sent == 1 and other.stats.snapshot().bytes_received == 1
    finally:
        await pool.close()
        await other.close()
