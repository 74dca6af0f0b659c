"""Recovery from injected faults: 503 SlowDown, connection resets, stalls; bounded failure; write-once retries.

Every store here talks to moto through the ``fault_proxy`` fixture. Time bounds are generous for a noisy 2-core
machine but far below what an unbounded retry loop or a missed timeout would take.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace

import boto3
import numpy as np
import pytest

from storage import (
    AccessDenied,
    EmbeddedS3,
    FaultPlan,
    FaultProxy,
    ObjectStore,
    PreconditionFailed,
    RetriesExhausted,
    RetryConfig,
    S3Config,
    TransferConfig,
)

MiB = 1024 * 1024
SECRET = "do-not-leak-this-secret/ZXhhbXBsZQ"

FAST = TransferConfig(
    multipart_threshold=6 * MiB,
    part_size=5 * MiB,
    ranged_get_threshold=2 * MiB,
    range_part_size=MiB,
    max_concurrency=4,
    connect_timeout=1.0,
    read_timeout=1.0,
    operation_timeout=20.0,
)
PATIENT = RetryConfig(max_attempts=10, base_delay=0.02, max_delay=0.3, total_budget=30.0, seed=7)

@pytest.fixture
def via_proxy(
    embedded_s3: EmbeddedS3, fault_proxy: FaultProxy
) -> Callable[..., AbstractAsyncContextManager[ObjectStore]]:
    """Open an ObjectStore whose requests go through the fault proxy, with a secret worth not leaking."""

    @asynccontextmanager
    async def open_store(transfer: TransferConfig = FAST, retry: RetryConfig = PATIENT) -> AsyncIterator[ObjectStore]:
        cfg = replace(embedded_s3.config(), endpoint_url=fault_proxy.endpoint_url, secret_access_key=SECRET)
        async with ObjectStore(cfg, transfer, retry) as store:
            yield store

    return open_store


def payloads() -> dict[str, bytes]:
    rng = np.random.default_rng(42)
    sizes = {"tiny": 10, "small": 300_000, "ranged": 3 * MiB + 5, "multipart": 7 * MiB + 3}
    return {name: rng.bytes(size) for name, size in sizes.items()}


async def exercise(store: ObjectStore, bucket: str) -> None:
    """Every kind of request, concurrently; asserts the bytes survive."""
    data = payloads()
    await asyncio.gather(*(store.put(bucket, k, v) for k, v in data.items()))
    got = await asyncio.gather(*(store.get(bucket, k) for k in data))
    assert got == list(data.values())
    assert await store.get_range(bucket, "ranged", 100, 200_000) == data["ranged"][100:200_000]
    assert (await store.head(bucket, "multipart")).size == len(data["multipart"])
    assert sorted(i.key for i in await store.list(bucket)) == sorted(data)
    assert await store.delete_many(bucket, list(data)) == len(data)


async def test_recovers_from_503_slowdown(via_proxy, fault_proxy: FaultProxy, bucket: str) -> None:
    fault_proxy.plan = FaultPlan(error_rate=0.3, seed=1)
    started = time.monotonic()
    async with via_proxy() as store:
        await exercise(store, bucket)
    assert fault_proxy.counts["error"] >= 5
    assert time.monotonic() - started < 30


async def test_recovers_from_connection_resets(via_proxy, fault_proxy: FaultProxy, bucket: str) -> None:
    fault_proxy.plan = FaultPlan(reset_rate=0.3, reset_mid_share=0.5, seed=2)
    started = time.monotonic()
    async with via_proxy() as store:
        for _ in range(2):
            await exercise(store, bucket)
    counts = fault_proxy.counts
    assert counts["reset_before"] >= 2 and counts["reset_mid"] >= 2, counts
    assert time.monotonic() - started < 30


async def test_mixed_faults(via_proxy, fault_proxy: FaultProxy, bucket: str) -> None:
    fault_proxy.plan = FaultPlan(error_rate=0.1, reset_rate=0.1, stall_rate=0.03, stall_seconds=2.0, seed=5)
    started = time.monotonic()
    async with via_proxy() as store:
        for _ in range(2):
            await exercise(store, bucket)
    assert fault_proxy.faults >= 5
    assert time.monotonic() - started < 45


@pytest.mark.parametrize("after_upstream", [False, True], ids=["before-forwarding", "after-upstream-answered"])
async def test_one_stall_longer_than_read_timeout(
    via_proxy, fault_proxy: FaultProxy, bucket: str, after_upstream: bool
) -> None:
    fault_proxy.plan = FaultPlan(stall_rate=1.0, stall_seconds=8.0, max_faults=1, stall_after_upstream=after_upstream)
    async with via_proxy() as store:
        started = time.monotonic()
        await store.put(bucket, "s", b"survives a stall")
        elapsed = time.monotonic() - started
        assert await store.get(bucket, "s") == b"survives a stall"
    assert fault_proxy.counts["stall"] == 1
    # Waited for the 1 s read timeout, then retried at once instead of sitting out the 8 s stall.
    assert FAST.read_timeout <= elapsed < 6.0


async def test_persistent_errors_exhaust_bounded_attempts(via_proxy, fault_proxy: FaultProxy, bucket: str) -> None:
    fault_proxy.plan = FaultPlan(error_rate=1.0)
    retry = RetryConfig(max_attempts=4, base_delay=0.05, max_delay=0.2, total_budget=30.0)
    async with via_proxy(retry=retry) as store:
        started = time.monotonic()
        with pytest.raises(RetriesExhausted) as exc:
            await store.put(bucket, "doomed", b"never stored")
        elapsed = time.monotonic() - started
    err = exc.value
    assert (err.operation, err.bucket, err.key, err.attempts) == ("PutObject", bucket, "doomed", 4)
    assert "SlowDown" in err.last_error and "4 attempt" in str(err)
    # Exactly our 4 attempts reached the wire: neither botocore nor aiohttp retried behind our back.
    assert fault_proxy.counts["requests"] == 4 and fault_proxy.counts["error"] == 4
    assert elapsed < 5.0


async def test_total_budget_bounds_time_spent_on_stalls(via_proxy, fault_proxy: FaultProxy, bucket: str) -> None:
    fault_proxy.plan = FaultPlan(stall_rate=1.0, stall_seconds=30.0)
    slow = replace(FAST, read_timeout=0.5)
    budget = RetryConfig(max_attempts=100, base_delay=0.05, max_delay=0.2, total_budget=2.0)
    async with via_proxy(transfer=slow, retry=budget) as store:
        started = time.monotonic()
        with pytest.raises(RetriesExhausted) as exc:
            await store.get(bucket, "whatever")
        elapsed = time.monotonic() - started
    assert exc.value.attempts >= 2
    assert 1.0 <= elapsed < 4.0


async def test_write_once_put_whose_first_attempt_landed(via_proxy, fault_proxy: FaultProxy, bucket: str) -> None:
    # The PUT reaches moto and is stored, then the connection is reset before the answer arrives.
    fault_proxy.plan = FaultPlan(reset_rate=1.0, reset_mid_share=1.0, max_faults=1, methods={"PUT"})
    data = b"gradient segment, written once"
    async with via_proxy() as store:
        info = await store.put(bucket, "segment", data, if_none_match=True)
        assert info.etag == hashlib.md5(data).hexdigest() and info.size == len(data)
        assert await store.get(bucket, "segment") == data
    assert fault_proxy.counts["reset_mid"] == 1
    # Attempt 1 (landed, answer lost), attempt 2 (412), then the HEAD that recognised our own object.
    assert fault_proxy.method_counts == {"PUT": 2, "HEAD": 1, "GET": 1}


async def test_write_once_put_whose_answer_stalled(via_proxy, fault_proxy: FaultProxy, bucket: str) -> None:
    fault_proxy.plan = FaultPlan(stall_rate=1.0, stall_seconds=5.0, stall_after_upstream=True, max_faults=1,
                                 methods={"PUT"})
    data = np.random.default_rng(3).bytes(2 * MiB)  # big enough that its MD5 is computed off the event loop
    async with via_proxy() as store:
        info = await store.put(bucket, "segment", data, if_none_match=True)
    assert info.etag == hashlib.md5(data).hexdigest()
    assert fault_proxy.counts["stall"] == 1


async def test_write_once_multipart_whose_completion_answer_was_lost(
    via_proxy, fault_proxy: FaultProxy, bucket: str
) -> None:
    # Only CompleteMultipartUpload is a POST carrying an uploadId.
    fault_proxy.plan = FaultPlan(reset_rate=1.0, reset_mid_share=1.0, max_faults=1, methods={"POST"},
                                 target_contains="uploadId=")
    data = np.random.default_rng(4).bytes(7 * MiB)
    async with via_proxy() as store:
        info = await store.put(bucket, "big-segment", data, if_none_match=True)
        assert info.etag.endswith("-2") and info.size == len(data)
        assert await store.get(bucket, "big-segment") == data
        uploads = await store._client.list_multipart_uploads(Bucket=bucket)
    assert fault_proxy.counts["reset_mid"] == 1
    assert not uploads.get("Uploads")


async def test_write_once_retry_does_not_claim_someone_elses_object(
    via_proxy, fault_proxy: FaultProxy, store: ObjectStore, bucket: str
) -> None:
    await store.put(bucket, "taken", b"written by someone else")
    # Our first attempt is refused with 503 (never stored); the retry then finds the key taken.
    fault_proxy.plan = FaultPlan(error_rate=1.0, max_faults=1, methods={"PUT"})
    async with via_proxy() as proxied:
        with pytest.raises(PreconditionFailed):
            await proxied.put(bucket, "taken", b"our different bytes", if_none_match=True)
    assert fault_proxy.method_counts["HEAD"] == 1  # it did look before refusing
    assert await store.get(bucket, "taken") == b"written by someone else"


async def test_secrets_stay_out_of_errors_and_logs(
    via_proxy, fault_proxy: FaultProxy, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    fault_proxy.plan = FaultPlan(error_rate=1.0)
    # Each storage logger explicitly: importing bittensor (the chain tests do) sets a level on every logger that
    # exists at the time, so the parent's level alone would not reach storage.retry.
    for name in ["storage", *(n for n in logging.root.manager.loggerDict if n.startswith("storage."))]:
        caplog.set_level(logging.DEBUG, logger=name)
    async with via_proxy(retry=RetryConfig(max_attempts=3, base_delay=0.01)) as store:
        with pytest.raises(RetriesExhausted) as exc:
            await store.put(bucket, "k", b"v")
        assert SECRET not in repr(store)
    texts = [str(exc.value), repr(exc.value), str(exc.value.__cause__), caplog.text]
    assert caplog.text  # the retries were logged...
    assert all(SECRET not in t for t in texts)  # ...without the secret


@pytest.fixture(scope="module")
def authenticating_s3() -> Iterator[EmbeddedS3]:
    # moto checks credentials when this is 0: unknown keys get a real 403 InvalidAccessKeyId.
    with EmbeddedS3(env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as s3:
        yield s3


async def test_wrong_credentials_raise_access_denied_without_secrets(authenticating_s3: EmbeddedS3) -> None:
    cfg = S3Config(authenticating_s3.endpoint_url, "us-east-1", "AKIANOTAREALKEY12345", SECRET, "path")
    started = time.monotonic()
    async with ObjectStore(cfg, FAST, PATIENT) as store:
        with pytest.raises(AccessDenied) as exc:
            await store.create_bucket("denied-bucket")
        with pytest.raises(AccessDenied):
            await store.get("denied-bucket", "k")
    assert time.monotonic() - started < 5.0  # not retried
    assert exc.value.code == "InvalidAccessKeyId" and exc.value.status == 403
    for text in (str(exc.value), repr(exc.value), str(exc.value.__cause__)):
        assert SECRET not in text and "AKIANOTAREALKEY12345" not in text


def test_a_key_scoped_to_an_existing_bucket_can_start_without_creating_it() -> None:
    """Roles create their bucket at every start. A key allowed only objects in one existing bucket (Cloudflare R2's
    bucket-scoped tokens, an IAM user with an object policy) is refused CreateBucket: that must not stop the role
    when the bucket is there and the key can use it; a bucket it cannot use still fails."""
    # moto lets the first 4 requests through unauthenticated (the set-up below), then checks every request.
    with EmbeddedS3(env={"INITIAL_NO_AUTH_ACTION_COUNT": "4"}) as s3:
        admin = dict(endpoint_url=s3.endpoint_url, region_name="us-east-1", aws_access_key_id="setup",
                     aws_secret_access_key="setup")
        iam = boto3.client("iam", **admin)
        iam.create_user(UserName="scoped")
        key = iam.create_access_key(UserName="scoped")["AccessKey"]
        policy = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:ListBucket", "s3:DeleteObject"],
            "Resource": ["arn:aws:s3:::scoped-bucket", "arn:aws:s3:::scoped-bucket/*"]}]}
        iam.put_user_policy(UserName="scoped", PolicyName="objects", PolicyDocument=json.dumps(policy))
        boto3.client("s3", **admin).create_bucket(Bucket="scoped-bucket")

        async def start() -> None:
            cfg = S3Config(s3.endpoint_url, "us-east-1", key["AccessKeyId"], key["SecretAccessKey"], "path")
            async with ObjectStore(cfg, FAST, PATIENT) as store:
                await store.create_bucket("scoped-bucket")  # refused, and fine: the bucket is there and ours to use
                await store.put("scoped-bucket", "k", b"v")
                assert await store.get("scoped-bucket", "k") == b"v"
                with pytest.raises(AccessDenied):
                    await store.create_bucket("another-bucket")  # not there: the refusal stands

        asyncio.run(start())
