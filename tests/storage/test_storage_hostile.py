"""ObjectStore against a hostile endpoint: moto behind `HostileFront` (real HTTP), answers rewritten to lie.

Whatever a server answers, the store must end quickly with a typed `StorageError` and never size an allocation
from a number it has not checked. Time bounds are asserted only where a bound is the point (an endless listing
ends, a stalled or trickling answer is given up); every call that could hang on unbounded code runs under
`bounded` so a regression fails instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import json
import math
import pickle
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import replace
from datetime import datetime, timezone
from typing import TypeVar

import pytest

import storage.client
from storage import (
    MAX_LIST_KEYS,
    AccessDenied,
    EmbeddedS3,
    InvalidEndpoint,
    ListingTooLong,
    MalformedResponse,
    ObjectStore,
    ObjectTooLarge,
    RetriesExhausted,
    RetryConfig,
    S3Config,
    StorageError,
    TransferConfig,
    check_endpoint,
)
from storage.retry import call_with_retries
from storage.transfer import range_length
from tests.conftest import TEST_TRANSFER
from tests.support.hostile_front import HostileFront

MiB = 1024 * 1024
T = TypeVar("T")

# The suite's test transfer settings (tests/conftest.py), with short timeouts: hostile servers stall on purpose.
QUICK = replace(TEST_TRANSFER, connect_timeout=1.0, read_timeout=1.0, operation_timeout=5.0)
RETRY = RetryConfig(max_attempts=4, base_delay=0.01, max_delay=0.1, total_budget=10.0, seed=3)
TS_2100 = 4102444800  # 2100-01-01T00:00:00Z: a server clock far ahead


async def bounded(call: Awaitable[T], seconds: float = 60.0) -> T:
    """``await call``, failing the test (TimeoutError) rather than hanging when the code under test does not end."""
    return await asyncio.wait_for(call, seconds)


@pytest.fixture(scope="module")
def front_server(embedded_s3: EmbeddedS3) -> Iterator[HostileFront]:
    with HostileFront(embedded_s3.endpoint_url) as front:
        yield front


@pytest.fixture
def front(front_server: HostileFront) -> Iterator[HostileFront]:
    front_server.clear()
    front_server.requests.clear()
    yield front_server
    front_server.clear()


@pytest.fixture
async def via(embedded_s3: EmbeddedS3, front: HostileFront) -> AsyncIterator[ObjectStore]:
    """A store whose every request goes through the hostile front."""
    async with ObjectStore(replace(embedded_s3.config(), endpoint_url=front.endpoint_url), QUICK, RETRY) as s:
        yield s


def listing_requests(front: HostileFront, bucket: str) -> int:
    return sum(1 for r in front.requests if r.path.strip("/") == bucket and "list-type=2" in r.query)


def object_requests(front: HostileFront, method: str) -> int:
    return sum(1 for r in front.requests if r.method == method and r.path.count("/") >= 2)


# -- listings --------------------------------------------------------------------------------------------------------


async def test_endless_listing_with_fresh_tokens_ends_at_the_page_cap(
    via: ObjectStore, front: HostileFront, bucket: str
) -> None:
    front.endless_listing(where=bucket)  # empty truncated pages, a new token each time, forever
    started = time.monotonic()
    with pytest.raises(ListingTooLong) as exc:
        await bounded(via.list(bucket, "w1/"))
    assert time.monotonic() - started < 60
    assert (exc.value.bucket, exc.value.prefix, exc.value.seen) == (bucket, "w1/", 0)
    assert listing_requests(front, bucket) == math.ceil(MAX_LIST_KEYS / 1000) + 2


async def test_endless_listing_repeating_its_token_ends_at_once(
    via: ObjectStore, front: HostileFront, bucket: str
) -> None:
    front.endless_listing(where=bucket, repeat_token=True, junk_keys=3)
    with pytest.raises(ListingTooLong) as exc:
        await bounded(via.list(bucket, "w/"))
    assert listing_requests(front, bucket) == 2 and "token" in str(exc.value)


async def test_endless_listing_with_junk_keys_stops_past_max_keys(
    via: ObjectStore, front: HostileFront, bucket: str
) -> None:
    front.endless_listing(where=bucket, junk_keys=1000)
    got = []
    with pytest.raises(ListingTooLong) as exc:
        async def consume() -> None:
            async for info in via.iter_list(bucket, "w2/", max_keys=2500):
                got.append(info)

        await bounded(consume())
    assert len(got) <= 2500 and all(i.key.startswith("w2/junk-") for i in got)
    assert exc.value.seen > 2500 and (exc.value.bucket, exc.value.prefix) == (bucket, "w2/")
    assert listing_requests(front, bucket) == 3


async def test_listed_key_outside_the_prefix_is_malformed(via: ObjectStore, front: HostileFront, bucket: str) -> None:
    front.endless_listing(where=bucket, junk_keys=1, junk_prefix="elsewhere/")
    with pytest.raises(MalformedResponse) as exc:
        await bounded(via.list(bucket, "w3/"))
    assert exc.value.bucket == bucket and "prefix" in str(exc.value)


@pytest.mark.parametrize("size", [-1, "12abc", 2**64, ""], ids=["negative", "garbage", "over-int64", "empty"])
async def test_listed_size_that_is_not_a_size_is_malformed(
    via: ObjectStore, store: ObjectStore, front: HostileFront, bucket: str, size: int | str
) -> None:
    await store.put(bucket, "s/obj", b"12345")
    front.listing_size(size, where=f"{bucket}/s/")
    with pytest.raises(MalformedResponse):
        await bounded(via.list(bucket, "s/"))


async def test_listed_size_of_5tb_is_reported_as_it_is(
    via: ObjectStore, store: ObjectStore, front: HostileFront, bucket: str
) -> None:
    # A valid S3 size: the store reports it, callers bound what they download (`get`'s max_bytes, get_into's buffer).
    await store.put(bucket, "s/obj", b"12345")
    front.listing_size(5 * 10**12, where=f"{bucket}/s/")
    (info,) = await bounded(via.list(bucket, "s/"))
    assert info.size == 5 * 10**12
    with pytest.raises(ObjectTooLarge):
        await bounded(via.get(bucket, "s/obj", max_bytes=4))


async def test_listing_entries_without_size_or_etag_are_malformed(
    via: ObjectStore, store: ObjectStore, front: HostileFront, bucket: str
) -> None:
    await store.put(bucket, "m/obj", b"12345")
    front.missing_fields(where=f"{bucket}/m/")
    with pytest.raises(MalformedResponse):
        await bounded(via.list(bucket, "m/"))
    for call in (via.head(bucket, "m/obj"), via.get(bucket, "m/obj"), via.get_into(bucket, "m/obj", bytearray(10))):
        with pytest.raises(MalformedResponse):
            await bounded(call)


async def test_writes_answered_without_an_etag_are_malformed(
    via: ObjectStore, store: ObjectStore, front: HostileFront, bucket: str
) -> None:
    front.missing_fields(where=f"{bucket}/w/")
    with pytest.raises(MalformedResponse):
        await bounded(via.put(bucket, "w/single", b"small"))
    with pytest.raises(MalformedResponse):
        await bounded(via.put(bucket, "w/multi", bytes(7 * MiB)))  # UploadPart without an ETag
    uploads = await store._client.list_multipart_uploads(Bucket=bucket)
    assert not uploads.get("Uploads"), "the failed multipart upload must be aborted"


async def test_max_keys_must_be_a_count(store: ObjectStore, bucket: str) -> None:
    for bad in (-1, 2.5, "10", True):
        with pytest.raises(ValueError):
            await store.list(bucket, max_keys=bad)  # type: ignore[arg-type]
    await store.put(bucket, "k/1", b"1")
    assert len(await store.list(bucket, "k/", max_keys=None)) == len(await store.list(bucket, "k/", max_keys=1)) == 1
    with pytest.raises(ListingTooLong):
        await store.list(bucket, "k/", max_keys=0)


@pytest.mark.parametrize(
    ("content_range", "length", "start", "end", "ok"),
    [
        ("bytes 0-99/300", 100, 0, 100, True),
        ("bytes 250-299/300", 50, 250, 1000, True),  # clipped where the object ends
        ("bytes 10-19/*", 10, 10, 20, True),  # total unknown, but the whole span
        ("bytes 10-14/*", 5, 10, 20, False),  # cut short without saying the object ends there
        ("bytes 250-289/300", 40, 250, 1000, False),  # cut short before the object's end
        ("bytes 0-99/50", 100, 0, 100, False),  # ends past its own total
        ("bytes 1-100/300", 100, 0, 100, False),  # another start
        ("bytes 0-199/300", 200, 0, 100, False),  # more than asked
        ("bytes 0-99/300", 10**12, 0, 100, False),
        ("bytes 0-99/300", "100", 0, 100, False),
        ("bytes 0-99/300", None, 0, 100, False),
        ("bytes 0-99/300", True, 0, 1, False),
        (None, 100, 0, 100, False),  # the Range header was ignored
        ("bytes 0-9" + "9" * 30 + "/300", 100, 0, 100, False),
        ("bytes \u0660-99/300", 100, 0, 100, False),  # a non-ASCII digit
    ],
)
def test_range_length_checks_every_field(
    content_range: str | None, length: object, start: int, end: int, ok: bool
) -> None:
    resp = {"ContentRange": content_range, "ContentLength": length}
    if ok:
        assert range_length(resp, start, end, bucket="bkt", key="k") == length
    else:
        with pytest.raises(MalformedResponse):
            range_length(resp, start, end, bucket="bkt", key="k")


async def test_malformed_xml_answers_end_typed_and_bounded(
    via: ObjectStore, store: ObjectStore, front: HostileFront, bucket: str
) -> None:
    # botocore reads a 200 whose XML does not parse as a body cut short by the network (a 500), so it is retried;
    # the retry policy bounds it like any other 500.
    await store.put(bucket, "x/obj", b"1")
    front.malformed_xml(where=bucket)
    with pytest.raises(RetriesExhausted) as exc:
        await bounded(via.list(bucket, "x/"))
    assert exc.value.attempts == RETRY.max_attempts == listing_requests(front, bucket)
    with pytest.raises(RetriesExhausted):
        await bounded(via.delete_many(bucket, ["x/obj"]))


async def test_oversized_xml_answer_is_refused(
    via: ObjectStore, front: HostileFront, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage.client, "MAX_RESPONSE_BODY", 256 * 1024)
    front.malformed_xml(where=bucket, size=4 * MiB)
    with pytest.raises(MalformedResponse) as exc:
        await bounded(via.list(bucket, "big/"))
    assert "262144" in str(exc.value)


# -- lying clocks ----------------------------------------------------------------------------------------------------


async def test_lying_clock_is_reported_exactly(
    via: ObjectStore, store: ObjectStore, front: HostileFront, bucket: str
) -> None:
    await store.put(bucket, "t/obj", b"abc")
    front.last_modified(TS_2100, where=f"{bucket}/t/")
    (listed,) = await bounded(via.list(bucket, "t/"))
    head = await bounded(via.head(bucket, "t/obj"))
    got = await bounded(via.get_into(bucket, "t/obj", bytearray(3)))
    want = datetime(2100, 1, 1, tzinfo=timezone.utc)
    for info in (listed, head, got):
        assert info.last_modified == want and info.last_modified.tzinfo is not None


@pytest.mark.parametrize(
    "stamp", ["yesterday", "1e300", "0000-01-01T00:00:00.000Z", "0001-01-01T00:00:00+05:00"],
    ids=["words", "epoch-overflow", "year-zero", "before-year-one-in-utc"],
)
async def test_garbage_timestamps_are_malformed(
    via: ObjectStore, store: ObjectStore, front: HostileFront, bucket: str, stamp: str
) -> None:
    await store.put(bucket, "t/obj", b"abc")
    front.last_modified(stamp, where=f"{bucket}/t/")
    with pytest.raises(MalformedResponse):
        await bounded(via.list(bucket, "t/"))
    with pytest.raises(MalformedResponse):
        await bounded(via.head(bucket, "t/obj"))


# -- lying lengths ---------------------------------------------------------------------------------------------------


async def test_ranged_get_with_a_huge_content_length_is_refused_before_allocating(
    via: ObjectStore, store: ObjectStore, front: HostileFront, bucket: str
) -> None:
    await store.put(bucket, "r/obj", bytes(range(256)) * 12)
    front.lie_content_length(where=f"{bucket}/r/", length=10**12)
    with pytest.raises(MalformedResponse) as exc:
        await bounded(via.get_range(bucket, "r/obj", 0, 100))
    assert not isinstance(exc.value.__cause__, MemoryError)
    assert object_requests(front, "GET") == 1  # not retried


@pytest.mark.parametrize("length", [101, 99, 0], ids=["one-more", "one-less", "zero"])
async def test_ranged_get_with_a_wrong_content_length_is_malformed(
    via: ObjectStore, store: ObjectStore, front: HostileFront, bucket: str, length: int
) -> None:
    await store.put(bucket, "r/obj", bytes(range(256)) * 12)
    front.lie_content_length(where=f"{bucket}/r/", length=length)
    with pytest.raises(MalformedResponse):
        await bounded(via.get_range(bucket, "r/obj", 0, 100))


async def test_whole_get_with_a_huge_content_length_is_refused_before_allocating(
    via: ObjectStore, store: ObjectStore, front: HostileFront, bucket: str
) -> None:
    await store.put(bucket, "g/obj", b"a small object")
    front.lie_content_length(where=f"{bucket}/g/", length=10**12)
    with pytest.raises(ObjectTooLarge) as exc:
        await bounded(via.get(bucket, "g/obj"))
    assert (exc.value.size, exc.value.limit) == (10**12, TransferConfig().max_get_bytes)
    with pytest.raises(ObjectTooLarge):
        await bounded(via.get_into(bucket, "g/obj", bytearray(64)))


@pytest.mark.parametrize("length", ["-5", "lots"], ids=["negative", "garbage"])
async def test_garbage_content_length_is_typed(
    via: ObjectStore, store: ObjectStore, front: HostileFront, bucket: str, length: str
) -> None:
    await store.put(bucket, "g/obj", b"a small object")
    front.lie_content_length(where=f"{bucket}/g/", length=length)
    for call in (via.get(bucket, "g/obj"), via.get_range(bucket, "g/obj", 0, 4),
                 via.get_into(bucket, "g/obj", bytearray(64))):
        with pytest.raises(StorageError):
            await bounded(call)


async def test_get_without_max_bytes_is_capped_by_max_get_bytes(
    embedded_s3: EmbeddedS3, store: ObjectStore, bucket: str
) -> None:
    await store.put(bucket, "c/obj", bytes(3000))
    small = replace(QUICK, max_get_bytes=1000)
    async with ObjectStore(embedded_s3.config(), small, RETRY) as capped:
        with pytest.raises(ObjectTooLarge) as exc:
            await capped.get(bucket, "c/obj")
        assert (exc.value.size, exc.value.limit) == (3000, 1000)
        assert len(await capped.get(bucket, "c/obj", max_bytes=5000)) == 3000  # an explicit cap wins
    with pytest.raises(ValueError):
        TransferConfig(max_get_bytes=0)


# -- slow answers ----------------------------------------------------------------------------------------------------


async def test_stalled_answers_are_given_up_within_the_budget(
    embedded_s3: EmbeddedS3, store: ObjectStore, front: HostileFront, bucket: str
) -> None:
    await store.put(bucket, "slow/obj", b"x" * 1000)
    front.stall(30.0, where=f"{bucket}")
    retry = replace(RETRY, total_budget=3.0)
    async with ObjectStore(replace(embedded_s3.config(), endpoint_url=front.endpoint_url), QUICK, retry) as via:
        started = time.monotonic()
        with pytest.raises(RetriesExhausted):
            await bounded(via.get(bucket, "slow/obj"))
        with pytest.raises(RetriesExhausted):
            await bounded(via.list(bucket, "slow/"))
    assert time.monotonic() - started < 15


async def test_trickling_answers_are_given_up_within_the_budget(
    embedded_s3: EmbeddedS3, store: ObjectStore, front: HostileFront, bucket: str
) -> None:
    await store.put(bucket, "slow/obj", b"x" * 100_000)
    front.trickle(2000, where=f"{bucket}")  # bytes keep coming, so the socket read timeout never fires
    transfer, retry = replace(QUICK, operation_timeout=1.0), replace(RETRY, total_budget=3.0)
    async with ObjectStore(replace(embedded_s3.config(), endpoint_url=front.endpoint_url), transfer, retry) as via:
        started = time.monotonic()
        with pytest.raises(RetriesExhausted):
            await bounded(via.get(bucket, "slow/obj"))
        with pytest.raises(RetriesExhausted):
            await bounded(via.get_range(bucket, "slow/obj", 0, 50_000))
    assert time.monotonic() - started < 15


# -- every failure is typed ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [KeyError("ETag"), ValueError("bad int"), TypeError("NoneType"), UnicodeDecodeError("utf-8", b"\xff", 0, 1, "no"),
     OverflowError("big"), AttributeError("nope"), ET.ParseError("junk"), MemoryError(), RuntimeError("tz offset"),
     IndexError("empty")],
    ids=lambda e: type(e).__name__,
)
async def test_untyped_failures_inside_an_attempt_become_malformed_response(error: Exception) -> None:
    attempts = 0

    async def attempt(_: int) -> None:
        nonlocal attempts
        attempts += 1
        raise error

    with pytest.raises(MalformedResponse) as exc:
        await call_with_retries(attempt, RETRY, operation="GetObject", bucket="bkt", key="k")
    assert attempts == 1 and exc.value.__cause__ is error
    assert type(error).__name__ in str(exc.value) and (exc.value.operation, exc.value.key) == ("GetObject", "k")


def test_new_errors_are_typed_and_picklable() -> None:
    errors = [
        MalformedResponse("Size is not an integer", operation="ListObjectsV2", bucket="bkt", key="k"),
        ListingTooLong("bkt", "w/", 100_001, "more than 100000 keys"),
        InvalidEndpoint("ftp://x", "scheme must be http or https"),
    ]
    for err in errors:
        assert isinstance(err, StorageError)
        clone = pickle.loads(pickle.dumps(err))
        assert type(clone) is type(err) and str(clone) == str(err) and clone.__dict__ == err.__dict__
    assert errors[1].seen == 100_001 and errors[1].prefix == "w/" and "100001" in str(errors[1])
    assert "ftp://x" in str(errors[2]) and "scheme" in str(errors[2])


# -- endpoints -------------------------------------------------------------------------------------------------------

GOOD_ENDPOINTS = [
    "http://127.0.0.1:9000",
    "https://s3.us-east-1.amazonaws.com",
    "https://0123abcd.r2.cloudflarestorage.com/",
    "http://[::1]:9000",
    "http://[2001:db8::7]",
    "http://localhost",
    "http://minio:9000/",
    "https://xn--bcher-kva.example",
    "HTTPS://Example.COM:443",
    "http://host:65535",
]

BAD_ENDPOINTS = {
    "ftp": "ftp://x",
    "no-scheme": "host:9000",
    "scheme-relative": "//host",
    "empty": "",
    "no-host": "http://",
    "open-bracket": "http://[::1",
    "port-too-big": "http://host:99999",
    "port-zero": "http://host:0",
    "port-empty": "http://host:",
    "port-words": "http://host:abc",
    "port-sign": "http://host:+80",
    "port-unicode-digits": "http://host:\u0663\u0663",
    "space": "http://exa mple.com",
    "label-64": "http://" + "a" * 64 + ".com",
    "name-254": "http://" + ".".join(["a" * 62] * 4) + ".com",
    "too-long": "http://a.com/" + "x" * 250,
    "userinfo": "http://user:hunter2@host",
    "query": "http://host?x=1",
    "fragment": "http://host#top",
    "path": "http://host/bucket",
    "non-ascii": "http://h\u00f6st.com",
    "leading-hyphen": "http://-a.com",
    "empty-label": "http://a..b",
    "trailing-dot": "http://host.",
    "underscore": "http://a_b.com",
    "bad-punycode": "http://xn--zz.com",
    "five-octets": "http://1.2.3.4.5",
    "numeric-tld": "http://999.1.1.1",
    "zone-id": "http://[fe80::1%25eth0]",
    "newline": "http://host\n",
    "backslash": "http://host\\@evil",
}


@pytest.mark.parametrize("url", GOOD_ENDPOINTS)
def test_check_endpoint_accepts_good_urls(url: str) -> None:
    assert check_endpoint(url) == url


@pytest.mark.parametrize("url", list(BAD_ENDPOINTS.values()), ids=list(BAD_ENDPOINTS))
def test_check_endpoint_rejects_bad_urls(url: str) -> None:
    with pytest.raises(InvalidEndpoint) as exc:
        check_endpoint(url)
    assert exc.value.reason and "hunter2" not in str(exc.value) and "hunter2" not in repr(exc.value.args)


@pytest.mark.parametrize("value", [None, b"http://host", 42])
def test_check_endpoint_rejects_non_strings(value: object) -> None:
    with pytest.raises(InvalidEndpoint):
        check_endpoint(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url",
    ["http://[::1", "http://host:99999", "ftp://x", "http://exa mple.com", "http://" + "a" * 64 + ".com",
     "http://[fe80::1%25" + "a" * 70 + "]", "http://user:hunter2@host"],
    ids=["open-bracket", "port-too-big", "ftp", "space", "label-64", "long-zone-id", "userinfo"],
)
async def test_open_refuses_a_bad_endpoint(url: str) -> None:
    store = ObjectStore(S3Config(url, access_key_id="a", secret_access_key="b"), QUICK, RETRY)
    with pytest.raises(InvalidEndpoint) as exc:
        await bounded(store.open(), 10)
    assert "hunter2" not in str(exc.value)
    await store.close()


# -- anonymous requests ----------------------------------------------------------------------------------------------

MARKER_KEY = "AKIAMARKERNOTSENT123"
MARKER_SECRET = "marker-secret-that-must-not-be-used"


def public_policy(bucket: str) -> str:
    # moto checks anonymous object reads against the bucket policy (as S3 does) with "s3:<Method>Object" actions.
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:HeadObject"],
                       "Resource": f"arn:aws:s3:::{bucket}/*"}],
    })


def test_anonymous_config() -> None:
    cfg = S3Config("http://127.0.0.1:9000", anonymous=True, addressing_style="path")
    assert cfg.anonymous and not S3Config().anonymous
    assert "anonymous=True" in repr(cfg)
    with pytest.raises(ValueError):
        S3Config(access_key_id=MARKER_KEY, secret_access_key=MARKER_SECRET, anonymous=True)
    assert S3Config.from_env(None, environ={"MR_S3_ANONYMOUS": "1", "AWS_ACCESS_KEY_ID": "a",
                                            "AWS_SECRET_ACCESS_KEY": "b"}).anonymous is False
    keyed = S3Config(access_key_id=MARKER_KEY, secret_access_key=MARKER_SECRET)
    assert MARKER_SECRET not in repr(keyed) and MARKER_KEY not in repr(keyed)


async def test_anonymous_requests_carry_no_credentials(
    front: HostileFront, store: ObjectStore, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Credentials in the environment must not be picked up (botocore's chain would read these first).
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", MARKER_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", MARKER_SECRET)
    await store._client.put_bucket_policy(Bucket=bucket, Policy=public_policy(bucket))
    big = bytes(range(256)) * (28 * 1024)  # 7 MiB: a multipart upload
    cfg = S3Config(front.endpoint_url, anonymous=True, addressing_style="path")
    async with ObjectStore(cfg, QUICK, RETRY) as anon:
        await anon.put(bucket, "a/small", b"anonymous bytes")
        await anon.put(bucket, "a/big", big)
        assert await anon.get(bucket, "a/small") == b"anonymous bytes"
        assert await anon.get(bucket, "a/big") == big
        assert await anon.get(bucket, "a/big", max_bytes=len(big)) == big
        assert await anon.get_range(bucket, "a/big", 10, 20) == big[10:20]
        assert (await anon.head(bucket, "a/small")).size == 15
        assert [i.key for i in await anon.list(bucket, "a/")] == ["a/big", "a/small"]
    assert len(front.requests) >= 10
    for seen in front.requests:
        assert "authorization" not in seen.headers, seen
        assert not any(h.startswith("x-amz-security-token") for h in seen.headers), seen
        text = f"{seen.path}?{seen.query} " + " ".join(f"{k}: {v}" for k, v in seen.headers.items())
        assert "x-amz-credential" not in text.lower() and "x-amz-signature" not in text.lower(), seen
        assert MARKER_KEY not in text and MARKER_SECRET not in text, seen


async def test_moto_default_settings_for_anonymous_requests(
    front: HostileFront, store: ObjectStore, bucket: str
) -> None:
    """What moto's server does with unsigned requests by default, like S3 with a private bucket: new keys can be
    written and the bucket listed; an existing key cannot be read, overwritten or deleted unless the bucket's
    policy (or the key's ACL) allows that action to anyone."""
    cfg = S3Config(front.endpoint_url, anonymous=True, addressing_style="path")
    async with ObjectStore(cfg, QUICK, RETRY) as anon:
        await anon.put(bucket, "d/k", b"v")
        assert [i.key for i in await anon.list(bucket, "d/")] == ["d/k"]
        for call in (anon.get(bucket, "d/k"), anon.head(bucket, "d/k"), anon.put(bucket, "d/k", b"w"),
                     anon.delete(bucket, "d/k")):
            with pytest.raises(AccessDenied):
                await call
        await store._client.put_bucket_policy(Bucket=bucket, Policy=public_policy(bucket))
        assert await anon.get(bucket, "d/k") == b"v"
    assert [i.key for i in await store.list(bucket, "d/")] == ["d/k"]
