"""`ObjectStore`: async byte storage on any S3-compatible endpoint.

One store owns one aiobotocore client (one pooled aiohttp connector) and a semaphore that bounds the requests it
has in flight across all operations. Every request goes through `retry.call_with_retries`; botocore's own retries
are off so the retry policy lives in one place.

Any endpoint may be run by a hostile party (participants commit their own), so nothing a server says is used
before it is checked: sizes are checked before a buffer is sized from them, listings are bounded in keys and pages,
bodies read whole are capped, and every field an `ObjectInfo` is built from is type-checked; a wrong answer is a
`MalformedResponse`.
"""

from __future__ import annotations

import asyncio
import builtins
import email.utils
import hashlib
import logging
import random
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack
from datetime import datetime, timezone
from typing import Any, TypeVar

from aiobotocore.config import AioConfig
from aiobotocore.httpsession import AIOHTTPSession
from botocore import UNSIGNED
from botocore.exceptions import ClientError

from .config import MiB, RetryConfig, S3Config, TransferConfig
from .info import ObjectInfo
from .endpoint import _check as _check_endpoint
from .errors import (
    AccessDenied,
    BucketNotFound,
    InvalidEndpoint,
    InvalidRange,
    ListingTooLong,
    MalformedResponse,
    NotFound,
    ObjectTooLarge,
    PreconditionFailed,
    StorageError,
    client_error_fields,
)
from .retry import ResponseTooLarge, call_with_retries
from .stats import TransferStats
from .transfer import (
    gather_bounded,
    md5_etag,
    multipart_put,
    quote_etag,
    range_length,
    ranged_get,
    read_into,
    strip_etag,
    upload_body,
)

__all__ = ["ObjectInfo", "ObjectStore", "MAX_LIST_KEYS", "MAX_RESPONSE_BODY"]

log = logging.getLogger("storage")

T = TypeVar("T")

_DELETE_BATCH = 1000  # S3's DeleteObjects limit
_LIST_PAGE = 1000  # keys per ListObjectsV2 page (S3's, R2's and MinIO's)

# Default cap of `ObjectStore.iter_list`: far above any prefix this system lists, far below what exhausts memory.
MAX_LIST_KEYS = 100_000
# Cap on a response body read whole (XML answers, error bodies); object bodies are streamed and never count.
# A full ListObjectsV2 page of 1,000 keys of 1,024 bytes, every byte escaped, stays under 8 MiB.
MAX_RESPONSE_BODY = 32 * MiB
# A listed continuation token longer than this is no real store's (they are a few hundred bytes).
_MAX_TOKEN = 16 * 1024
# Sizes are S3 "Long"s: anything above is not a size, whatever the server says.
_MAX_SIZE = 2**63 - 1


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _byte_view(data: bytes | bytearray | memoryview) -> memoryview:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, bytearray or memoryview, not {type(data).__name__}")
    view = memoryview(data)
    if not view.c_contiguous:
        raise ValueError("data must be C-contiguous")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def _check_names(bucket: str, key: str | None = None) -> None:
    if not isinstance(bucket, str) or not 3 <= len(bucket) <= 63:
        raise ValueError(f"bucket name must be a string of 3 to 63 characters, got {bucket!r}")
    if key is not None and (not isinstance(key, str) or not key or len(key.encode()) > 1024):
        raise ValueError(f"key must be a non-empty string of at most 1024 bytes, got {key!r}")


def _shown(value: object) -> str:
    return "missing" if value is None else f"{type(value).__name__} {str(value)[:40]!r}"


def _checked_info(
    key: str, size: object, etag: object, last_modified: object, *, operation: str, bucket: str, size_name: str
) -> ObjectInfo:
    """An `ObjectInfo` from fields a server sent, each checked: `MalformedResponse` names the first that is wrong.

    botocore fills these from headers or XML by the model's types, but leaves out what the server left out and
    hands over whatever its parser made of the rest, so a hostile answer reaches here as None, a negative or
    absurd number, or a date out of range.
    """

    def malformed(detail: str) -> MalformedResponse:
        return MalformedResponse(detail, operation=operation, bucket=bucket, key=key)

    if type(size) is not int or not 0 <= size <= _MAX_SIZE:
        raise malformed(f"{size_name} is {_shown(size)}, not a size in bytes")
    if not isinstance(etag, str):
        raise malformed(f"ETag is {_shown(etag)}, not a string")
    if not isinstance(last_modified, datetime):
        raise malformed(f"LastModified is {_shown(last_modified)}, not a date")
    try:
        when = _utc(last_modified)
    except (OverflowError, ValueError) as exc:
        raise malformed(f"LastModified {str(last_modified)[:40]!r} is out of range") from exc
    return ObjectInfo(key=key, size=size, etag=strip_etag(etag), last_modified=when)


def _listed_info(obj: object, *, bucket: str, prefix: str) -> ObjectInfo:
    """One ``Contents`` entry of a listing, checked: a key under ``prefix`` and valid size, ETag and date."""
    if not isinstance(obj, dict):
        raise MalformedResponse(f"listing entry is {_shown(obj)}", operation="ListObjectsV2", bucket=bucket)
    key = obj.get("Key")
    if not isinstance(key, str) or not key or len(key.encode("utf-8", "surrogatepass")) > 1024:
        raise MalformedResponse(f"listed Key is {_shown(key)}, not a key", operation="ListObjectsV2", bucket=bucket)
    if not key.startswith(prefix):
        raise MalformedResponse(f"listed key {key[:200]!r} is not under the prefix {prefix!r}",
                                operation="ListObjectsV2", bucket=bucket, key=key)
    return _checked_info(key, obj.get("Size"), obj.get("ETag"), obj.get("LastModified"),
                         operation="ListObjectsV2", bucket=bucket, size_name="Size")


class _SingleShotHTTPSession(AIOHTTPSession):
    """aiobotocore's HTTP session minus aiohttp's hidden retry.

    aiohttp silently resends an idempotent request (PUT included) once when its connection drops. That hides a
    failed attempt from retry.py, which must see every one: a write-once put whose first attempt landed is only
    recognised as ours if we know there was a first attempt.
    """

    async def _get_session(self, proxy_url: str | None) -> Any:
        session = await super()._get_session(proxy_url)
        session._retry_connection = False  # no public switch in aiohttp 3.14; tests/storage/test_faults.py guards it
        return session

    async def send(self, request: Any) -> Any:
        """Send as aiobotocore does, but read bodies that are read whole (every answer except an object's bytes)
        ourselves, up to `MAX_RESPONSE_BODY`: aiobotocore would read any length a server sends into memory."""
        whole = not request.stream_output
        request.stream_output = True  # aiobotocore then leaves the body to us
        try:
            response = await super().send(request)
        finally:
            request.stream_output = not whole
        if whole or response.status_code >= 300:  # botocore reads error bodies whole too
            # A HEAD's Content-Length is the object's size; the answer itself has no body.
            response._content = await _read_capped(response.raw, MAX_RESPONSE_BODY,
                                                   declared=request.method.upper() != "HEAD")
        return response


async def _read_capped(raw: Any, cap: int, declared: bool = True) -> bytes:
    """The whole body of aiohttp response ``raw``; `ResponseTooLarge` (connection dropped) past ``cap`` bytes.
    ``declared``: whether the Content-Length header describes this body (not for a HEAD)."""
    declared = raw.content_length if declared else None
    chunks, total = [], 0
    try:
        if declared is not None and declared > cap:
            raise ResponseTooLarge(f"the answer's body is {declared} bytes, over the cap of {cap}")
        while chunk := await raw.content.read(1 << 16):
            total += len(chunk)
            if total > cap:
                raise ResponseTooLarge(f"the answer's body is over the cap of {cap} bytes")
            chunks.append(chunk)
    except BaseException:
        raw.close()
        raise
    return b"".join(chunks)


_loaders: dict[str | None, Any] = {}
_loaders_lock = threading.Lock()


def _s3_model_loader(data_path: str | None) -> Any:
    """A botocore data loader with the S3 model files already parsed, shared by every store in the process.

    Parsing them takes ~50-100 ms of blocking JSON work; the loader only caches what it read, so sharing it is
    safe, and every store after the first opens in a few milliseconds.
    """
    from botocore.loaders import create_loader

    with _loaders_lock:
        loader = _loaders.get(data_path)
        if loader is None:
            loader = create_loader(data_path)
            loader.load_service_model("s3", "service-2")
            loader.load_service_model("s3", "endpoint-rule-set-1")
            for name in ("endpoints", "partitions", "sdk-default-configuration", "_retry"):
                loader.load_data(name)
            _loaders[data_path] = loader
        return loader


def _parse_timestamp(value: Any) -> datetime:
    """botocore's timestamp parser for the two forms S3 answers with: RFC 7231 in headers (``Last-Modified: Tue,
    01 Dec 2026 03:27:12 GMT``) and ISO 8601 in listings (``2026-12-01T03:27:12.000Z``), in UTC. botocore's own
    (dateutil) takes ~0.1 ms a call, a tenth of the client's CPU per ranged GET; anything else still goes to it."""
    from botocore.utils import parse_timestamp

    if isinstance(value, str):
        try:
            if value.endswith(" GMT"):
                return _utc(email.utils.parsedate_to_datetime(value))
            if value.endswith("Z") and "T" in value:
                return _utc(datetime.fromisoformat(value))
        except (ValueError, TypeError):
            pass
    return parse_timestamp(value)


async def _new_session() -> Any:
    import aioboto3
    from aiobotocore.session import AioSession

    botocore_session = AioSession()
    data_path = botocore_session.get_config_variable("data_path")
    loader = _loaders.get(data_path) or await asyncio.to_thread(_s3_model_loader, data_path)
    botocore_session.register_component("data_loader", loader)
    botocore_session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_parse_timestamp)
    return aioboto3.Session(botocore_session=botocore_session)


class ObjectStore:
    """Async S3 client for whole objects and byte ranges.

    Use as ``async with ObjectStore(config) as store: ...`` (or ``await store.open()`` / ``await store.close()``).
    All methods raise `StorageError` subclasses; retryable failures are retried per ``retry`` and surface as
    `RetriesExhausted` when they persist. ``stats`` counts bytes and requests (pass one `TransferStats` to
    several stores to add them up); a new one is made if none is given.
    """

    def __init__(
        self, config: S3Config, transfer: TransferConfig = TransferConfig(), retry: RetryConfig = RetryConfig(),
        stats: TransferStats | None = None,
    ) -> None:
        self.config = config
        self.transfer = transfer
        self.retry = retry
        self.stats = stats if stats is not None else TransferStats()
        self._stack: AsyncExitStack | None = None
        self._client_obj: Any = None
        self._limiter: asyncio.Semaphore | None = None
        self._rng = random.Random(retry.seed)

    def __repr__(self) -> str:
        state = "open" if self._client_obj is not None else "closed"
        return f"ObjectStore(endpoint_url={self.config.endpoint_url!r}, region={self.config.region!r}, {state})"

    # -- lifecycle -------------------------------------------------------------------------------------------------

    async def open(self) -> ObjectStore:
        """Create the HTTP client. Idempotent.

        An endpoint URL we will not use raises `InvalidEndpoint` here, before any request: the rules of
        `storage.check_endpoint`, except that a base path is allowed (botocore supports one).
        """
        if self._client_obj is not None:
            return self
        cfg, tr = self.config, self.transfer
        if cfg.endpoint_url is not None:
            _check_endpoint(cfg.endpoint_url, allow_path=True)
        botocore_config = AioConfig(
            max_pool_connections=tr.max_pool_connections,
            connect_timeout=tr.connect_timeout,
            read_timeout=tr.read_timeout,
            # retry.py owns retries; botocore's would multiply our attempts and hide failures from our budget.
            retries={"total_max_attempts": 1, "mode": "standard"},
            # Without this botocore SHA-256s every upload body on plain-HTTP endpoints, on the event loop.
            # Over HTTPS, TLS already protects the bytes; callers hash their content end to end anyway.
            s3={"addressing_style": cfg.addressing_style, "payload_signing_enabled": False},
            # The flexible CRC checksums (botocore >= 1.36 defaults) are not understood by every S3-compatible
            # store, and computing them blocks the loop; only send them where an operation requires one.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            # botocore's validator rejects memoryview bodies although everything below it accepts them, and
            # zero-copy parts need memoryviews; our public methods check their own arguments.
            parameter_validation=False,
            http_session_cls=_SingleShotHTTPSession,
            # Unsigned requests; botocore then also skips its credential chain (environment, profile, IMDS).
            **({"signature_version": UNSIGNED} if cfg.anonymous else {}),
        )
        session = await _new_session()
        stack = AsyncExitStack()
        try:
            self._client_obj = await stack.enter_async_context(
                session.client(
                    "s3",
                    endpoint_url=cfg.endpoint_url,
                    region_name=cfg.region,
                    aws_access_key_id=None if cfg.anonymous else cfg.access_key_id,
                    aws_secret_access_key=None if cfg.anonymous else cfg.secret_access_key,
                    aws_session_token=None if cfg.anonymous else cfg.session_token,
                    config=botocore_config,
                )
            )
        except (ValueError, UnicodeError) as exc:  # what botocore and yarl raise for URLs they cannot use
            await stack.aclose()
            raise InvalidEndpoint(cfg.endpoint_url, f"refused by botocore ({type(exc).__name__}: {exc})") from exc
        self._stack = stack
        self._limiter = asyncio.Semaphore(tr.max_pool_connections)
        return self

    async def close(self) -> None:
        """Close the HTTP client and its connections. Idempotent."""
        stack, self._stack, self._client_obj = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def __aenter__(self) -> ObjectStore:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def _client(self) -> Any:
        if self._client_obj is None:
            raise RuntimeError("ObjectStore is not open; use `async with ObjectStore(...) as store`")
        return self._client_obj

    async def _call(
        self, operation: str, bucket: str | None, key: str | None, attempt: Callable[[int], Awaitable[T]],
        *, ranged: bool = False, target: str | None = None,
    ) -> T:
        """One call, retried under the policy and counted in ``stats``: ``ranged`` for a byte-range GET, ``target``
        the listed prefix of a listing (default ``key``)."""
        _ = self._client  # a closed store is a programming error: RuntimeError here, not a failed attempt

        async def counted(n: int) -> T:
            if n > 1:
                self.stats.retried(operation)
            return await attempt(n)

        with self.stats.call(operation, ranged=ranged, target=key if target is None else target):
            return await call_with_retries(
                counted,
                self.retry,
                operation=operation,
                bucket=bucket,
                key=key,
                attempt_timeout=self.transfer.operation_timeout,
                limiter=self._limiter,
                rng=self._rng,
            )

    # -- buckets ---------------------------------------------------------------------------------------------------

    async def create_bucket(self, bucket: str) -> None:
        """Create ``bucket``; fine if we already own it."""
        _check_names(bucket)
        extra: dict[str, Any] = {}
        if self.config.region not in ("us-east-1", "auto"):
            extra["CreateBucketConfiguration"] = {"LocationConstraint": self.config.region}

        async def attempt(_: int) -> None:
            try:
                await self._client.create_bucket(Bucket=bucket, **extra)
            except ClientError as exc:
                code = client_error_fields(exc)[0]
                if code == "BucketAlreadyOwnedByYou":
                    return
                if code == "BucketAlreadyExists" and await self._bucket_exists(bucket):
                    return  # some stores say "exists" to its owner too; we can use it, which is what counts
                if code == "AccessDenied" and await self._bucket_listable(bucket):
                    return  # a key scoped to an existing bucket may not create buckets (R2's bucket tokens)
                raise

        await self._call("CreateBucket", bucket, None, attempt)

    async def _bucket_exists(self, bucket: str) -> bool:
        """One raw HeadBucket; False on 404, other failures raise."""
        try:
            await self._client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            if client_error_fields(exc)[1] == 404:
                return False
            raise
        return True

    async def _bucket_listable(self, bucket: str) -> bool:
        """One raw ListObjectsV2 of at most one key: whether the bucket exists and our key may list it (S3 answers
        HeadBucket only with s3:ListBucket, which some stores then still refuse; the listing is the real test)."""
        try:
            await self._client.list_objects_v2(Bucket=bucket, MaxKeys=1)
        except ClientError:
            return False
        return True

    # -- writes ----------------------------------------------------------------------------------------------------

    async def put(
        self,
        bucket: str,
        key: str,
        data: bytes | bytearray | memoryview,
        *,
        if_none_match: bool = False,
        content_type: str = "application/octet-stream",
    ) -> ObjectInfo:
        """Store ``data`` at ``key``; a single PutObject below ``multipart_threshold``, parallel parts above.

        With ``if_none_match=True`` the write only happens if the key does not exist yet (write-once) and
        `PreconditionFailed` is raised otherwise. If an attempt's answer was lost and its retry finds the key taken,
        the stored object is compared with ours (size and ETag) and the put succeeds if they match.
        ``last_modified`` of the result is the server's clock at the response (second resolution).
        """
        _check_names(bucket, key)
        view = _byte_view(data)
        if len(view) >= self.transfer.multipart_threshold:
            # multipart_put counts each part's bytes as it lands, so progress shows during a long upload
            return await multipart_put(self, bucket, key, view, if_none_match=if_none_match, content_type=content_type)

        extra = {"IfNoneMatch": "*"} if if_none_match else {}
        body = upload_body(view)
        attempts = 0

        async def attempt(n: int) -> dict[str, Any]:
            nonlocal attempts
            attempts = n
            return await self._client.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type, **extra)

        try:
            resp = await self._call("PutObject", bucket, key, attempt)
        except PreconditionFailed:
            if attempts > 1:
                # Only now is the MD5 worth computing: it is the ETag our own earlier attempt would have left.
                etag = md5_etag(view) if len(view) < 1 << 20 else await asyncio.to_thread(md5_etag, view)
                info = await self._matching_object(bucket, key, len(view), etag)
                if info is not None:
                    log.debug("write-once put of s3://%s/%s landed on an earlier attempt", bucket, key)
                    self.stats.sent(len(view))
                    return info
            raise
        self.stats.sent(len(view))
        return self._info_from_put(bucket, key, len(view), resp, "PutObject")

    async def _matching_object(self, bucket: str, key: str, size: int, etag: str) -> ObjectInfo | None:
        """The stored object if it has exactly this size and ETag, else None."""
        try:
            info = await self.head(bucket, key)
        except NotFound:
            return None
        return info if info.size == size and info.etag == strip_etag(etag) else None

    @staticmethod
    def _info_from_put(bucket: str, key: str, size: int, resp: dict[str, Any], operation: str) -> ObjectInfo:
        date = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        try:
            when = _utc(email.utils.parsedate_to_datetime(date)) if date else datetime.now(timezone.utc)
        except (TypeError, ValueError, OverflowError, IndexError):
            when = datetime.now(timezone.utc)
        return _checked_info(key, size, resp.get("ETag"), when, operation=operation, bucket=bucket,
                             size_name="size")

    async def delete(self, bucket: str, key: str) -> None:
        """Delete ``key``; deleting a missing key is not an error."""
        _check_names(bucket, key)
        await self._call("DeleteObject", bucket, key, lambda _: self._client.delete_object(Bucket=bucket, Key=key))

    async def delete_many(self, bucket: str, keys: Iterable[str]) -> int:
        """Delete ``keys`` in batches of 1,000 (run in parallel); return how many the server reported deleted.

        Keys that did not exist count as deleted. A key the server refused to delete raises `StorageError`
        (`AccessDenied` if that was the reason) after every batch has been tried.
        """
        _check_names(bucket)
        keys = builtins.list(keys)
        for key in keys:
            _check_names(bucket, key)
        batches = [keys[i : i + _DELETE_BATCH] for i in range(0, len(keys), _DELETE_BATCH)]
        failures: builtins.list[dict[str, Any]] = []

        async def delete_batch(i: int) -> int:
            objects = [{"Key": k} for k in batches[i]]
            resp = await self._call(
                "DeleteObjects",
                bucket,
                None,
                lambda _: self._client.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True}),
            )
            errors = resp.get("Errors") or []
            if not isinstance(errors, builtins.list) or len(errors) > len(objects):
                raise MalformedResponse(f"{_shown(errors)} errors for {len(objects)} keys", operation="DeleteObjects",
                                        bucket=bucket)
            failures.extend(errors)
            return len(objects) - len(errors)

        deleted = sum(await gather_bounded(len(batches), delete_batch, self.transfer.max_concurrency))
        if failures:
            first = failures[0]
            code = str(first.get("Code") or "Unknown")
            if code == "AccessDenied":
                raise AccessDenied(bucket, first.get("Key"), operation="DeleteObjects")
            raise StorageError(
                f"DeleteObjects on s3://{bucket}: {len(failures)} of {len(keys)} keys not deleted, "
                f"first {first.get('Key')!r}: {code}",
                operation="DeleteObjects", bucket=bucket, key=first.get("Key"), code=code,
            )
        return deleted

    # -- reads -----------------------------------------------------------------------------------------------------

    async def head(self, bucket: str, key: str) -> ObjectInfo:
        """Size, ETag and modification time of ``key``; `NotFound` or `BucketNotFound` if absent."""
        return await self._head(bucket, key)

    async def _head(self, bucket: str, key: str, if_match: str | None = None) -> ObjectInfo:
        _check_names(bucket, key)
        extra = {"IfMatch": quote_etag(if_match)} if if_match else {}
        try:
            resp = await self._call(
                "HeadObject", bucket, key, lambda _: self._client.head_object(Bucket=bucket, Key=key, **extra)
            )
        except NotFound:
            # A HEAD 404 has no body, so a missing bucket looks like a missing key until we ask.
            try:
                exists = await self._call("HeadBucket", bucket, None, lambda _: self._bucket_exists(bucket))
            except StorageError:
                exists = True  # cannot tell (e.g. no permission on the bucket): report what we know
            if not exists:
                raise BucketNotFound(bucket, operation="HeadObject") from None
            raise
        return _checked_info(key, resp.get("ContentLength"), resp.get("ETag"), resp.get("LastModified"),
                             operation="HeadObject", bucket=bucket, size_name="Content-Length")

    async def get(
        self, bucket: str, key: str, *, max_bytes: int | None = None, if_match: str | None = None
    ) -> bytearray:
        """The whole object, as a bytearray (mutable, so e.g. ``torch.frombuffer`` can use it without a copy).

        With ``max_bytes``, a HEAD comes first and `ObjectTooLarge` is raised before anything is downloaded.
        Without, the GET's Content-Length is checked against ``transfer.max_get_bytes`` before the buffer is made
        (`ObjectTooLarge` too, the rest of the body unread).
        Objects above ``ranged_get_threshold`` are fetched as parallel ranges into one preallocated buffer, each
        range conditional on the ETag seen first, so a concurrent overwrite fails with `PreconditionFailed`
        rather than mixing versions. ``if_match`` makes the whole read conditional.
        """
        _check_names(bucket, key)
        if max_bytes is not None:
            info = await self._head(bucket, key, if_match)
            if info.size > max_bytes:
                raise ObjectTooLarge(bucket, key, info.size, max_bytes)
            buf = bytearray(info.size)
            if info.size:
                await self._download(bucket, key, lambda _: memoryview(buf), info.etag, expected=info.size)
            return buf

        result = bytearray()
        limit = self.transfer.max_get_bytes

        def allocate(size: int) -> memoryview:
            nonlocal result
            if size > limit:
                raise ObjectTooLarge(bucket, key, size, limit)
            result = bytearray(size)
            return memoryview(result)

        await self._download(bucket, key, allocate, if_match)
        return result

    async def get_into(self, bucket: str, key: str, out: Any, *, if_match: str | None = None) -> ObjectInfo:
        """Download the whole object into ``out``, any writable C-contiguous buffer at least as large as the object
        (a numpy array, ``tensor.numpy()``, a bytearray, an mmap), without an intermediate copy. The object's bytes
        land in ``out[:info.size]``; `ObjectTooLarge` (nothing downloaded) if it does not fit."""
        _check_names(bucket, key)
        view = memoryview(out)
        if view.readonly or not view.c_contiguous:
            raise TypeError("out must be a writable, C-contiguous buffer")
        view = view.cast("B") if view.format != "B" or view.ndim != 1 else view

        def allocate(size: int) -> memoryview:
            if size > len(view):
                raise ObjectTooLarge(bucket, key, size, len(view))
            return view[:size]

        return await self._download(bucket, key, allocate, if_match)

    async def _download(
        self,
        bucket: str,
        key: str,
        allocate: Callable[[int], memoryview],
        if_match: str | None,
        *,
        expected: int | None = None,
    ) -> ObjectInfo:
        """One plain GET, then parallel ranges if its Content-Length is above ``ranged_get_threshold``.

        The GET's body fills ``allocate(size)`` whole when small; when large, only its first range is read from it
        and the rest follows as parallel ranges conditional on its ETag. No object costs a HEAD, small ones cost
        exactly one request. ``expected`` (a size from an earlier HEAD) must match, or the object has changed.
        The answer's Content-Length, ETag and Last-Modified are checked before ``allocate`` sees the size.
        """
        threshold, part = self.transfer.ranged_get_threshold, self.transfer.range_part_size
        extra = {"IfMatch": quote_etag(if_match)} if if_match else {}

        async def attempt(_: int) -> tuple[memoryview, int, ObjectInfo]:
            resp = await self._client.get_object(Bucket=bucket, Key=key, **extra)
            body = resp["Body"]
            try:
                info = _checked_info(key, resp.get("ContentLength"), resp.get("ETag"), resp.get("LastModified"),
                                     operation="GetObject", bucket=bucket, size_name="Content-Length")
                size = info.size
                if expected is not None and size != expected:
                    raise PreconditionFailed(bucket, key, "If-Match", operation="GetObject")
                dest = allocate(size)
            except BaseException:
                body.close()
                raise
            have = size if size <= threshold else min(part, size)
            await read_into(body, dest[:have], whole=have == size)
            return dest, have, info

        dest, have, info = await self._call("GetObject", bucket, key, attempt)
        self.stats.received(have)  # ranged_get counts the rest range by range
        if have < len(dest):
            await ranged_get(self, bucket, key, dest, have, len(dest), info.etag)
        return info

    async def get_range(self, bucket: str, key: str, start: int, end: int, *, if_match: str | None = None) -> bytes:
        """Bytes [start, end) of the object. An ``end`` past the object's size is clipped, like a slice; an empty
        or negative range, or a ``start`` at or past the end of the object, raises `InvalidRange`. An answer whose
        Content-Range or Content-Length does not fit the request is a `MalformedResponse`, raised before any
        buffer is sized from it."""
        _check_names(bucket, key)
        if not (isinstance(start, int) and isinstance(end, int)) or start < 0 or end <= start:
            raise InvalidRange(bucket, key, start, end)
        extra = {"IfMatch": quote_etag(if_match)} if if_match else {}

        async def attempt(_: int) -> bytes:
            resp = await self._client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}", **extra)
            try:
                length = range_length(resp, start, end, bucket=bucket, key=key)
            except BaseException:
                resp["Body"].close()
                raise
            buf = bytearray(length)
            await read_into(resp["Body"], memoryview(buf))
            return bytes(buf)

        try:
            data = await self._call("GetObject", bucket, key, attempt, ranged=True)
            self.stats.received(len(data))
            return data
        except InvalidRange as exc:
            error = getattr(exc.__cause__, "response", {}).get("Error", {})
            size = str(error.get("ActualObjectSize"))
            known = size.isascii() and size.isdigit() and len(size) <= 19  # the server's text: "²".isdigit() too
            raise InvalidRange(bucket, key, start, end, int(size) if known else None) from exc.__cause__

    async def iter_list(
        self, bucket: str, prefix: str = "", *, start_after: str | None = None, max_keys: int | None = MAX_LIST_KEYS
    ) -> AsyncIterator[ObjectInfo]:
        """Objects under ``prefix`` in key order, fetched a page (up to 1,000 keys) at a time.

        A listing is the server's to end, and a hostile one never would, so it is bounded: `ListingTooLong` as soon
        as more than ``max_keys`` keys have arrived (before any of the page that brought the count over is
        yielded), when a continuation token comes back a second time, or when a truncated page would need more
        pages than ``ceil(max_keys / 1000) + 2`` (which ends an endless run of empty pages too).
        ``max_keys=None`` lifts the key and page limits: only for an endpoint you trust. Every entry is checked
        (a key under ``prefix``, a size, an ETag, a date) and a wrong one is a `MalformedResponse`.
        """
        _check_names(bucket)
        if max_keys is not None and (type(max_keys) is not int or max_keys < 0):
            raise ValueError(f"max_keys must be a non-negative int or None, got {max_keys!r}")
        max_pages = None if max_keys is None else -(-max_keys // _LIST_PAGE) + 2
        params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        if start_after:
            params["StartAfter"] = start_after
        seen = pages = 0
        tokens: set[bytes] = set()  # digests: a hostile server's tokens may be long
        while True:
            page = await self._call(
                "ListObjectsV2", bucket, None, lambda _, p=dict(params): self._client.list_objects_v2(**p),
                target=prefix,
            )
            pages += 1
            contents = page.get("Contents") or []
            if not isinstance(contents, builtins.list):
                raise MalformedResponse(f"Contents is {_shown(contents)}", operation="ListObjectsV2", bucket=bucket)
            seen += len(contents)
            if max_keys is not None and seen > max_keys:
                raise ListingTooLong(bucket, prefix, seen, f"more than max_keys={max_keys} keys")
            for info in [_listed_info(obj, bucket=bucket, prefix=prefix) for obj in contents]:
                yield info
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")
            if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN:
                raise MalformedResponse(f"truncated listing with continuation token {_shown(token)}",
                                        operation="ListObjectsV2", bucket=bucket)
            digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
            if digest in tokens:
                raise ListingTooLong(bucket, prefix, seen, f"the server sent continuation token {token[:40]!r} twice")
            if max_pages is not None and pages >= max_pages:
                raise ListingTooLong(bucket, prefix, seen, f"more than {max_pages} pages for max_keys={max_keys}")
            tokens.add(digest)
            params["ContinuationToken"] = token

    async def list(
        self, bucket: str, prefix: str = "", *, start_after: str | None = None, max_keys: int | None = MAX_LIST_KEYS
    ) -> builtins.list[ObjectInfo]:
        """All objects under ``prefix`` in key order (follows pagination past 1,000 keys); bounded as `iter_list`."""
        return [info async for info in self.iter_list(bucket, prefix, start_after=start_after, max_keys=max_keys)]
