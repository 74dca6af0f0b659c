"""The byte and request counters an ObjectStore keeps (storage/stats.py), against the embedded S3 server."""
from __future__ import annotations

from dataclasses import replace

from storage import FaultPlan, NotFound, ObjectStore, RetryConfig, TransferConfig, TransferStats

MiB = 1024 * 1024
# Small enough that 7 MiB takes the multipart and ranged paths (5 MiB parts are S3's minimum).
TEST_TRANSFER = TransferConfig(multipart_threshold=6 * MiB, part_size=5 * MiB, ranged_get_threshold=2 * MiB,
                               range_part_size=MiB, max_concurrency=4)


async def test_payload_bytes_and_calls_are_counted(embedded_s3, bucket) -> None:
    stats = TransferStats()
    async with ObjectStore(embedded_s3.config(), TEST_TRANSFER, stats=stats) as store:
        big = bytes(range(256)) * (7 * MiB // 256)  # above the 6 MiB multipart threshold: two parts
        await store.put(bucket, "small", b"x" * 1000)
        await store.put(bucket, "big", big)
        assert stats.snapshot().bytes_sent == 1000 + len(big)

        assert bytes(await store.get(bucket, "big")) == big  # above the ranged-get threshold: ranges
        assert await store.get_range(bucket, "small", 10, 110) == b"x" * 100
        try:
            await store.head(bucket, "missing")
        except NotFound:
            pass
    snap = stats.snapshot()
    assert snap.bytes_received == len(big) + 100
    ops = snap.operations
    assert ops["PutObject"].calls == 1 and ops["UploadPart"].calls == 2
    assert ops["CompleteMultipartUpload"].calls == 1
    assert ops["GetObject"].calls >= 1 + 7  # the first GET and the 1 MiB ranges after it, and the ranged read
    assert ops["HeadObject"].errors["NotFound"] == 1 and not ops["PutObject"].errors
    assert all(op.seconds > 0 for op in ops.values())


async def test_stores_can_share_one_account(embedded_s3, bucket) -> None:
    stats = TransferStats()
    async with ObjectStore(embedded_s3.config(), stats=stats) as a, ObjectStore(embedded_s3.config(), stats=stats) as b:
        await a.put(bucket, "k1", b"1234")
        await b.put(bucket, "k2", b"56")
    assert stats.snapshot().bytes_sent == 6
    assert stats.snapshot().operations["PutObject"].calls == 2


async def test_retries_are_counted_and_bytes_only_once(embedded_s3, fault_proxy, bucket) -> None:
    fault_proxy.plan = FaultPlan(error_rate=1.0, max_faults=2, methods=frozenset({"PUT"}))
    retry = RetryConfig(max_attempts=5, base_delay=0.01, max_delay=0.05, total_budget=20.0, seed=1)
    cfg = replace(embedded_s3.config(), endpoint_url=fault_proxy.endpoint_url)
    async with ObjectStore(cfg, TEST_TRANSFER, retry) as store:
        await store.put(bucket, "retried", b"y" * 500)
    snap = store.stats.snapshot()
    assert snap.operations["PutObject"].calls == 1
    assert snap.operations["PutObject"].retries == 2
    assert snap.bytes_sent == 500
