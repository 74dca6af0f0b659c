"""ObjectStore against the embedded moto server and against the in-memory S3 (`storage.memory`): round trips,
listings, write-once, ranges and typed errors. Every test runs on both transports (the ``store`` fixture here), so
the memory server that ``bench.scale`` uses is held to the real server's behaviour; the two that count requests at
the wire (through a proxy) run on moto only.

The stores use small thresholds (tests/conftest.py): multipart from 6 MiB in 5 MiB parts, ranged GETs above 2 MiB
in 1 MiB ranges, so a few MiB exercise every path.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import torch

from storage import (
    MAX_RESPONSE_BODY,
    BucketNotFound,
    EmbeddedS3,
    FaultProxy,
    InvalidRange,
    MemoryS3,
    MemoryStore,
    NotFound,
    ObjectInfo,
    ObjectStore,
    ObjectTooLarge,
    PreconditionFailed,
    TransferConfig,
)
from tests.conftest import TEST_RETRY, TEST_TRANSFER

MiB = 1024 * 1024

CASES = [
    # (dtype, numel): fp32 2.1M = 8.4 MB is multipart + ranged, bf16 2.1M = 4.2 MB single PUT + ranged GET.
    (torch.float32, 12_345),
    (torch.bfloat16, 12_345),
    (torch.float32, 2_100_001),
    (torch.bfloat16, 2_100_001),
    (torch.bfloat16, 4_200_001),
]


def tensor_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).numpy().tobytes()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture(params=["moto", "memory"])
async def store(request: pytest.FixtureRequest, embedded_s3: EmbeddedS3) -> AsyncIterator[ObjectStore]:
    """The conftest's store on moto, or the same `ObjectStore` code over the in-memory transport."""
    if request.param == "moto":
        async with ObjectStore(embedded_s3.config(), TEST_TRANSFER, TEST_RETRY) as s:
            yield s
    else:
        async with MemoryS3().store(None, TEST_TRANSFER, TEST_RETRY) as s:
            yield s


def like(store: ObjectStore, transfer: TransferConfig) -> ObjectStore:
    """Another store on the same server and transport as ``store``, with other transfer settings."""
    if isinstance(store, MemoryStore):
        return MemoryStore(store.server, store.config, transfer, store.retry)
    return ObjectStore(store.config, transfer, store.retry)


MOTO_ONLY = pytest.mark.parametrize("store", ["moto"], indirect=True)  # counts HTTP requests through a proxy


@pytest.fixture
def counting(embedded_s3: EmbeddedS3, fault_proxy: FaultProxy) -> FaultProxy:
    """A fault-free proxy, only to count the requests a call makes."""
    return fault_proxy


@pytest.mark.parametrize(("dtype", "numel"), CASES, ids=[f"{str(d)[6:]}-{n}" for d, n in CASES])
async def test_tensor_round_trip(store: ObjectStore, bucket: str, dtype: torch.dtype, numel: int) -> None:
    tensor = torch.randn(numel, generator=torch.Generator().manual_seed(numel)).to(dtype)
    data = tensor_bytes(tensor)
    multipart = len(data) >= store.transfer.multipart_threshold

    info = await store.put(bucket, "grad.bin", data)
    assert info.size == len(data) and info.key == "grad.bin"
    if multipart:
        parts = -(-len(data) // store.transfer.part_size)
        assert info.etag.endswith(f"-{parts}")  # S3's multipart ETag: it really went up in parts
    else:
        assert info.etag == md5(data)

    for got in (await store.get(bucket, "grad.bin"), await store.get(bucket, "grad.bin", max_bytes=len(data))):
        assert isinstance(got, bytearray) and len(got) == len(data)
        back = torch.frombuffer(got, dtype=dtype)
        assert torch.equal(back.view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
                           tensor.view(torch.int16 if dtype == torch.bfloat16 else torch.int32))

    out = np.empty(len(data) + 7, np.uint8)  # larger than needed is fine
    got_info = await store.get_into(bucket, "grad.bin", out)
    assert got_info.size == len(data) and got_info.etag == info.etag
    assert out[: len(data)].tobytes() == data

    head = await store.head(bucket, "grad.bin")
    assert (head.size, head.etag) == (len(data), info.etag)


async def test_put_accepts_bytes_bytearray_memoryview(store: ObjectStore, bucket: str) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    array = np.frombuffer(payload, np.uint8).view(np.float32).reshape(512, 512)
    for i, data in enumerate([payload, bytearray(payload), memoryview(payload), memoryview(array), b""]):
        info = await store.put(bucket, f"k{i}", data)
        expected = payload if i < 4 else b""
        assert info.etag == md5(expected) and info.size == len(expected)
        assert await store.get(bucket, f"k{i}") == expected
    with pytest.raises(TypeError):
        await store.put(bucket, "bad", "text is not bytes")  # type: ignore[arg-type]


async def test_object_info_fields(store: ObjectStore, bucket: str) -> None:
    before = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=1)
    put = await store.put(bucket, "dir/obj", b"hello", content_type="text/plain")
    head = await store.head(bucket, "dir/obj")
    (listed,) = await store.list(bucket, "dir/")
    after = datetime.now(timezone.utc) + timedelta(seconds=1)
    for info in (put, head, listed):
        assert isinstance(info, ObjectInfo)
        assert (info.key, info.size, info.etag) == ("dir/obj", 5, md5(b"hello"))
        assert info.last_modified.tzinfo is not None and info.last_modified.utcoffset() == timedelta(0)
        assert before <= info.last_modified <= after


async def test_head_of_an_object_larger_than_any_answer_body(store: ObjectStore, bucket: str) -> None:
    # A HEAD's Content-Length is the object's size, not a body: the cap on answer bodies (MAX_RESPONSE_BODY, against
    # a hostile server sending an endless XML answer) must not refuse it.
    size = MAX_RESPONSE_BODY + 1
    await store.put(bucket, "big", memoryview(np.zeros(size, dtype=np.uint8)))
    assert (await store.head(bucket, "big")).size == size


@MOTO_ONLY
async def test_ranged_get_uses_parallel_conditional_ranges(
    embedded_s3: EmbeddedS3, bucket: str, store: ObjectStore, counting: FaultProxy
) -> None:
    data = np.random.default_rng(1).bytes(5 * MiB + 123)
    await store.put(bucket, "big", data)
    assert (store.transfer.ranged_get_threshold, store.transfer.range_part_size) == (2 * MiB, MiB)
    async with ObjectStore(replace(embedded_s3.config(), endpoint_url=counting.endpoint_url), store.transfer) as via:
        counting.reset_counts()
        assert await via.get(bucket, "big") == data
        # One plain GET whose stream supplies the first 1 MiB range, then the remaining ranges in parallel.
        assert counting.method_counts == {"GET": 1 + (len(data) - MiB + MiB - 1) // MiB}

        counting.reset_counts()
        assert await via.get(bucket, "big", max_bytes=len(data)) == data
        assert counting.method_counts == {"HEAD": 1, "GET": -(-len(data) // MiB)}


async def test_get_range_equals_slices(store: ObjectStore, bucket: str) -> None:
    data = np.random.default_rng(2).bytes(3 * MiB + 17)
    await store.put(bucket, "r", data)
    size = len(data)
    for start, end in [(0, 1), (0, size), (size - 1, size), (1000, 2_000_001), (MiB, 2 * MiB), (5, size + 999)]:
        got = await store.get_range(bucket, "r", start, end)
        assert isinstance(got, bytes) and got == data[start:end]

    etag = (await store.head(bucket, "r")).etag
    assert await store.get_range(bucket, "r", 10, 20, if_match=etag) == data[10:20]
    with pytest.raises(PreconditionFailed):
        await store.get_range(bucket, "r", 10, 20, if_match="0" * 32)

    with pytest.raises(InvalidRange) as exc:
        await store.get_range(bucket, "r", size, size + 10)
    assert (exc.value.start, exc.value.end, exc.value.size) == (size, size + 10, size)
    for start, end in [(-1, 5), (5, 5), (7, 3)]:
        with pytest.raises(InvalidRange):
            await store.get_range(bucket, "r", start, end)


@MOTO_ONLY
async def test_head_before_get_refuses_oversized_objects(
    embedded_s3: EmbeddedS3, store: ObjectStore, bucket: str, counting: FaultProxy
) -> None:
    data = b"x" * (3 * MiB)
    await store.put(bucket, "huge", data)
    async with ObjectStore(replace(embedded_s3.config(), endpoint_url=counting.endpoint_url), store.transfer) as via:
        counting.reset_counts()
        with pytest.raises(ObjectTooLarge) as exc:
            await via.get(bucket, "huge", max_bytes=MiB)
        assert (exc.value.size, exc.value.limit, exc.value.key) == (len(data), MiB, "huge")
        assert counting.method_counts == {"HEAD": 1}  # nothing downloaded

        with pytest.raises(ObjectTooLarge):
            await via.get_into(bucket, "huge", bytearray(MiB))
    assert await store.get(bucket, "huge", max_bytes=len(data)) == data


async def test_if_match(store: ObjectStore, bucket: str) -> None:
    info = await store.put(bucket, "m", b"version 1")
    assert await store.get(bucket, "m", if_match=info.etag) == b"version 1"
    assert await store.get(bucket, "m", if_match=f'"{info.etag}"', max_bytes=100) == b"version 1"
    await store.put(bucket, "m", b"version 2")
    for call in (store.get(bucket, "m", if_match=info.etag), store.get(bucket, "m", if_match=info.etag, max_bytes=99)):
        with pytest.raises(PreconditionFailed) as exc:
            await call
        assert exc.value.condition == "If-Match"


@pytest.mark.parametrize("size", [100, 7 * MiB], ids=["single", "multipart"])
async def test_write_once(store: ObjectStore, bucket: str, size: int) -> None:
    first = np.random.default_rng(size).bytes(size)
    info = await store.put(bucket, "once", first, if_none_match=True)
    with pytest.raises(PreconditionFailed) as exc:
        await store.put(bucket, "once", first[::-1], if_none_match=True)
    assert exc.value.condition == "If-None-Match" and (exc.value.bucket, exc.value.key) == (bucket, "once")
    # Even identical bytes are refused when no earlier attempt of ours could have written them.
    with pytest.raises(PreconditionFailed):
        await store.put(bucket, "once", first, if_none_match=True)
    assert (await store.head(bucket, "once")).etag == info.etag
    assert await store.get(bucket, "once") == first
    uploads = await store._client.list_multipart_uploads(Bucket=bucket)
    assert not uploads.get("Uploads"), "a refused multipart upload must be aborted"


async def test_missing_things_are_typed(store: ObjectStore, bucket: str) -> None:
    calls = {
        "head": lambda b: store.head(b, "nope"),
        "get": lambda b: store.get(b, "nope"),
        "get max_bytes": lambda b: store.get(b, "nope", max_bytes=10),
        "get_into": lambda b: store.get_into(b, "nope", bytearray(10)),
        "get_range": lambda b: store.get_range(b, "nope", 0, 10),
    }
    for name, call in calls.items():
        with pytest.raises(NotFound) as exc:
            await call(bucket)
        assert (exc.value.bucket, exc.value.key) == (bucket, "nope"), name

    missing = "no-such-bucket-here"
    writes = {
        "put": store.put(missing, "k", b"1"),
        "put multipart": store.put(missing, "k", bytes(7 * MiB)),
        "list": store.list(missing),
        "delete": store.delete(missing, "k"),
        "delete_many": store.delete_many(missing, ["k"]),
    }
    for name, call in {**{n: c(missing) for n, c in calls.items()}, **writes}.items():
        with pytest.raises(BucketNotFound) as bexc:
            await call
        assert bexc.value.bucket == missing, name


async def test_listing_paginates_and_delete_many_batches(store: ObjectStore, bucket: str) -> None:
    keys = [f"a/{i:05d}" for i in range(1010)] + [f"b/{i:02d}" for i in range(15)]
    await asyncio.gather(*(store.put(bucket, k, k.encode()) for k in keys))

    listed = await store.list(bucket)
    assert [i.key for i in listed] == sorted(keys)  # past S3's 1,000-key page
    assert all(i.size == len(i.key) and i.etag == md5(i.key.encode()) for i in listed)
    assert [i.key for i in await store.list(bucket, "b/")] == sorted(k for k in keys if k.startswith("b/"))
    after = await store.list(bucket, "a/", start_after="a/00995")
    assert [i.key for i in after] == [f"a/{i:05d}" for i in range(996, 1010)]
    assert [i.key async for i in store.iter_list(bucket, "a/0100")] == [f"a/0100{i}" for i in range(10)]

    assert await store.delete_many(bucket, keys + ["never-existed"]) == len(keys) + 1
    assert await store.list(bucket) == []
    assert await store.delete_many(bucket, []) == 0


async def test_delete_and_create_bucket_are_idempotent(store: ObjectStore, bucket: str) -> None:
    await store.create_bucket(bucket)  # already ours: fine
    await store.put(bucket, "k", b"1")
    await store.delete(bucket, "k")
    await store.delete(bucket, "k")  # already gone: fine
    with pytest.raises(NotFound):
        await store.head(bucket, "k")


async def test_argument_checks_happen_before_any_request(store: ObjectStore) -> None:
    with pytest.raises(ValueError):
        await store.put("x", "k", b"")  # moto and S3 reject 1-2 character bucket names
    with pytest.raises(ValueError):
        await store.get("bucket", "")
    with pytest.raises(TypeError):
        await store.get_into("bucket", "k", b"read-only bytes")
    closed = ObjectStore(store.config)
    with pytest.raises(RuntimeError):
        await closed.head("bucket", "k")


async def test_store_limits_requests_in_flight(bucket: str, store: ObjectStore) -> None:
    limited = replace(store.transfer, max_pool_connections=3)
    async with like(store, limited) as small:
        in_flight = peak = 0
        real = small._client.put_object

        async def spy(**kwargs: object) -> object:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                return await real(**kwargs)
            finally:
                in_flight -= 1

        small._client.put_object = spy  # wraps the real client call; the request still goes to the server
        await asyncio.gather(*(small.put(bucket, f"p{i}", b"z" * 1000) for i in range(20)))
    assert peak == 3
    assert len(await store.list(bucket, "p")) == 20
