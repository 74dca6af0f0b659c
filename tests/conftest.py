"""Fixtures shared by the whole suite.

Storage: one embedded moto S3 server for the session (``embedded_s3``), an `ObjectStore` on it per test
(``store``), a fresh bucket per test (``bucket``) and a fault-injecting proxy in front of the server
(``fault_proxy``; no faults until a test sets ``fault_proxy.plan``).

Roles: ``cluster_factory`` (tests/support/cluster.py), an in-process cluster on a local chain and that server,
with real keys; every test that runs roles in process uses it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from storage import EmbeddedS3, FaultProxy, ObjectStore, RetryConfig, TransferConfig
from tests.support.cluster import cluster_factory  # noqa: F401  (a fixture, used by name)

MiB = 1024 * 1024

# Small enough that a few MiB exercise every path (multipart needs parts of at least 5 MiB, S3's minimum).
TEST_TRANSFER = TransferConfig(
    multipart_threshold=6 * MiB,
    part_size=5 * MiB,
    ranged_get_threshold=2 * MiB,
    range_part_size=1 * MiB,
    max_concurrency=4,
    connect_timeout=2.0,
    read_timeout=5.0,
    operation_timeout=30.0,
)
TEST_RETRY = RetryConfig(max_attempts=6, base_delay=0.02, max_delay=0.5, total_budget=30.0, seed=1)


@pytest.fixture(autouse=True)
def no_internal_errors(caplog) -> Iterator[None]:
    """A role that hits a bug logs it as an internal error and carries on (a failure must never stop a role); in
    a test that is a failure, even when what the test asserts still holds."""
    yield
    bugs = [r for r in caplog.get_records("call") if r.name.startswith("mapreduce") and "internal error" in
            r.getMessage()]
    assert not bugs, f"internal error logged: {bugs[0].getMessage()}\n{bugs[0].exc_text or ''}"


@pytest.fixture(scope="session")
def embedded_s3() -> Iterator[EmbeddedS3]:
    with EmbeddedS3() as s3:
        yield s3


@pytest.fixture
async def store(embedded_s3: EmbeddedS3) -> AsyncIterator[ObjectStore]:
    async with ObjectStore(embedded_s3.config(), TEST_TRANSFER, TEST_RETRY) as s:
        yield s


@pytest.fixture
async def bucket(store: ObjectStore) -> str:
    name = f"test-{uuid.uuid4().hex[:20]}"
    await store.create_bucket(name)
    return name


@pytest.fixture
def fault_proxy(embedded_s3: EmbeddedS3) -> Iterator[FaultProxy]:
    with FaultProxy(embedded_s3.endpoint_url) as proxy:
        yield proxy
