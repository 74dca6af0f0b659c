"""`ObjectStore`: async byte storage on any S3-compatible endpoint.

One store owns one aiobotocore client (one pooled aiohttp connector) and a semaphore that bounds the requests it
has in flight across all operations. Every request goes through `retry.call_with_retries`; botocore's own retries
are off so the retry policy lives in one place.
"""

from __future__ import annotations

import asyncio
import builtins
import email.utils
import logging
import random
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

from aiobotocore.config import AioConfig
from aiobotocore.httpsession import AIOHTTPSession
from botocore.exceptions import ClientError

from .config import RetryConfig, S3Config, TransferConfig
from .errors import (
    AccessDenied,
    BucketNotFound,
    InvalidRange,
    NotFound,
    ObjectTooLarge,
    PreconditionFailed,
    StorageError,
    client_error_fields,
)
from .retry import call_with_retries
from .stats import TransferStats
from .transfer import (
    gather_bounded,
    md5_etag,
    multipart_put,
    quote_etag,
    ranged_get,
    read_into,
    strip_etag,
    upload_body,
)

__all__ = ["ObjectInfo", "ObjectStore"]

log = logging.getLogger("storage")

T = TypeVar("T")

_DELETE_BATCH = 1000  # S3's DeleteObjects limit
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True)
class ObjectInfo:
    """What the server knows about a stored object. ``etag`` is unquoted; ``last_modified`` is tz-aware UTC."""

    key: str
    size: int
    etag: str
    last_modified: datetime


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


async def _new_session() -> Any:
    import aioboto3
    from aiobotocore.session import AioSession

    botocore_session = AioSession()
    data_path = botocore_session.get_config_variable("data_path")
    loader = _loaders.get(data_path) or await asyncio.to_thread(_s3_model_loader, data_path)
    botocore_session.register_component("data_loader", loader)
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
        """Create the HTTP client. Idempotent."""
        if self._client_obj is not None:
            return self
        cfg, tr = self.config, self.transfer
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
        )
        session = await _new_session()
        stack = AsyncExitStack()
        self._client_obj = await stack.enter_async_context(
            session.client(
                "s3",
                endpoint_url=cfg.endpoint_url,
                region_name=cfg.region,
                aws_access_key_id=cfg.access_key_id,
                aws_secret_access_key=cfg.secret_access_key,
                aws_session_token=cfg.session_token,
                config=botocore_config,
            )
        )
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
        self, operation: str, bucket: str | None, key: str | None, attempt: Callable[[int], Awaitable[T]]
    ) -> T:
        async def counted(n: int) -> T:
            if n > 1:
                self.stats.retried(operation)
            return await attempt(n)

        with self.stats.call(operation):
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
        return self._info_from_put(key, len(view), resp)

    async def _matching_object(self, bucket: str, key: str, size: int, etag: str) -> ObjectInfo | None:
        """The stored object if it has exactly this size and ETag, else None."""
        try:
            info = await self.head(bucket, key)
        except NotFound:
            return None
        return info if info.size == size and info.etag == strip_etag(etag) else None

    @staticmethod
    def _info_from_put(key: str, size: int, resp: dict[str, Any]) -> ObjectInfo:
        date = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        try:
            when = _utc(email.utils.parsedate_to_datetime(date)) if date else datetime.now(timezone.utc)
        except (TypeError, ValueError):
            when = datetime.now(timezone.utc)
        return ObjectInfo(key=key, size=size, etag=strip_etag(resp["ETag"]), last_modified=when)

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
        return ObjectInfo(
            key=key, size=resp["ContentLength"], etag=strip_etag(resp["ETag"]), last_modified=_utc(resp["LastModified"])
        )

    async def get(
        self, bucket: str, key: str, *, max_bytes: int | None = None, if_match: str | None = None
    ) -> bytearray:
        """The whole object, as a bytearray (mutable, so e.g. ``torch.frombuffer`` can use it without a copy).

        With ``max_bytes``, a HEAD comes first and `ObjectTooLarge` is raised before anything is downloaded.
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

        def allocate(size: int) -> memoryview:
            nonlocal result
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
        """
        threshold, part = self.transfer.ranged_get_threshold, self.transfer.range_part_size
        extra = {"IfMatch": quote_etag(if_match)} if if_match else {}

        async def attempt(_: int) -> tuple[memoryview, int, ObjectInfo]:
            resp = await self._client.get_object(Bucket=bucket, Key=key, **extra)
            body, size = resp["Body"], resp["ContentLength"]
            try:
                if expected is not None and size != expected:
                    raise PreconditionFailed(bucket, key, "If-Match", operation="GetObject")
                dest = allocate(size)
            except BaseException:
                body.close()
                raise
            have = size if size <= threshold else min(part, size)
            await read_into(body, dest[:have], whole=have == size)
            info = ObjectInfo(key, size, strip_etag(resp["ETag"]), _utc(resp["LastModified"]))
            return dest, have, info

        dest, have, info = await self._call("GetObject", bucket, key, attempt)
        self.stats.received(have)  # ranged_get counts the rest range by range
        if have < len(dest):
            await ranged_get(self, bucket, key, dest, have, len(dest), info.etag)
        return info

    async def get_range(self, bucket: str, key: str, start: int, end: int, *, if_match: str | None = None) -> bytes:
        """Bytes [start, end) of the object. An ``end`` past the object's size is clipped, like a slice; an empty
        or negative range, or a ``start`` at or past the end of the object, raises `InvalidRange`."""
        _check_names(bucket, key)
        if not (isinstance(start, int) and isinstance(end, int)) or start < 0 or end <= start:
            raise InvalidRange(bucket, key, start, end)
        extra = {"IfMatch": quote_etag(if_match)} if if_match else {}

        async def attempt(_: int) -> bytes:
            resp = await self._client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}", **extra)
            match = _CONTENT_RANGE.fullmatch((resp.get("ContentRange") or "").strip())
            if match is None or int(match.group(1)) != start:
                resp["Body"].close()
                raise StorageError(f"server ignored the requested range (Content-Range "
                                   f"{resp.get('ContentRange')!r})", operation="GetObject", bucket=bucket, key=key)
            buf = bytearray(resp["ContentLength"])
            await read_into(resp["Body"], memoryview(buf))
            return bytes(buf)

        try:
            data = await self._call("GetObject", bucket, key, attempt)
            self.stats.received(len(data))
            return data
        except InvalidRange as exc:
            error = getattr(exc.__cause__, "response", {}).get("Error", {})
            size = error.get("ActualObjectSize")
            raise InvalidRange(bucket, key, start, end, int(size) if str(size).isdigit() else None) from exc.__cause__

    async def iter_list(
        self, bucket: str, prefix: str = "", *, start_after: str | None = None
    ) -> AsyncIterator[ObjectInfo]:
        """Objects under ``prefix`` in key order, fetched a page (up to 1,000 keys) at a time."""
        _check_names(bucket)
        params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        if start_after:
            params["StartAfter"] = start_after
        while True:
            page = await self._call(
                "ListObjectsV2", bucket, None, lambda _, p=dict(params): self._client.list_objects_v2(**p)
            )
            for obj in page.get("Contents") or ():
                yield ObjectInfo(
                    key=obj["Key"],
                    size=obj["Size"],
                    etag=strip_etag(obj["ETag"]),
                    last_modified=_utc(obj["LastModified"]),
                )
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")
            if not token:
                raise StorageError("truncated listing without a continuation token", operation="ListObjectsV2",
                                   bucket=bucket)
            params["ContinuationToken"] = token

    async def list(self, bucket: str, prefix: str = "", *, start_after: str | None = None) -> builtins.list[ObjectInfo]:
        """All objects under ``prefix`` in key order (follows pagination past 1,000 keys)."""
        return [info async for info in self.iter_list(bucket, prefix, start_after=start_after)]
