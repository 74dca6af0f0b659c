"""`MemoryS3`: an S3 server in this process's memory, and `MemoryStore`, an `ObjectStore` that talks to it.

A pluggable transport, as in httpx: `MemoryStore` is an `ObjectStore` whose client is an in-memory S3 instead of
aiobotocore over HTTP, so everything above the wire is the real code: argument checks, retries, the typed errors,
the checks of every answer, multipart uploads and ranged downloads, and the request and byte counters
(`TransferStats`). What it leaves out is HTTP and XML. moto over HTTP costs a few milliseconds per request on this
machine; a benchmark of a network with hundreds of participants (``python -m bench.scale``) makes hundreds of
thousands of requests per window, which in memory cost tens of microseconds each.

The server keeps S3's semantics where the protocol relies on them:

- write-once puts (``If-None-Match: *``, also on completing a multipart upload) fail with 412;
- ETags are the MD5 of the body, or S3's multipart form (MD5 of the parts' MD5s, dash, part count);
- ``Last-Modified`` has one-second resolution: an object written at t is stamped ``floor(t)`` (moto and S3 both);
- listings are in key order, at most 1,000 keys per page, with opaque continuation tokens (which win over
  ``StartAfter``, as on S3);
- ranged GETs clip a range past the end and answer 416 (with the object's size) for one that starts at or past
  it; ``If-Match`` is checked before the range (412);
- a HEAD of a missing key or bucket is a bare 404 (HEAD answers have no body), so the store asks HeadBucket, as
  against S3; multipart parts other than the last must be at least 5 MiB.

Nothing else of S3 (policies, credentials, versioning) is modelled: every client may do everything.
Use ``MemoryS3().store(config, transfer, retry, stats)`` as a `StorePool`'s ``store_factory``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import email.utils
import hashlib
import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from botocore.exceptions import ClientError

from .client import ObjectStore
from .config import MIN_PART_SIZE, RetryConfig, S3Config, TransferConfig
from .endpoint import _check as _check_endpoint
from .stats import TransferStats
from .transfer import multipart_etag, quote_etag, strip_etag

__all__ = ["MemoryS3", "MemoryStore"]

_PAGE = 1000  # keys per ListObjectsV2 page: S3's default and maximum


def _error(operation: str, code: str, status: int, message: str = "", **fields: Any) -> ClientError:
    """What botocore raises for an S3 error answer; HEAD answers carry no body, so only their status code."""
    error = {"Code": code, "Message": message, **{k: str(v) for k, v in fields.items()}}
    return ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


def _stamp(now: float) -> datetime:
    """S3's ``Last-Modified``: the second the object was written, truncated."""
    return datetime.fromtimestamp(int(now), timezone.utc)


@dataclass(frozen=True)
class _Object:
    data: bytes
    etag: str  # unquoted
    last_modified: datetime
    content_type: str


@dataclass
class _Upload:
    key: str
    content_type: str
    parts: dict[int, bytes] = field(default_factory=dict)


@dataclass
class _Bucket:
    objects: dict[str, _Object] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)  # sorted: listings bisect it
    uploads: dict[str, _Upload] = field(default_factory=dict)


async def _body_bytes(body: Any) -> bytes:
    """A request body as `ObjectStore` sends it: bytes-like, or an async iterable of slices (`BodyStream`)."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    return b"".join([bytes(piece) async for piece in body])


class _Stream:
    """The part of aiohttp's StreamReader that `storage.transfer.read_into` uses."""

    def __init__(self, data: memoryview) -> None:
        self._data = data
        self._pos = 0

    async def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else min(len(self._data), self._pos + n)
        piece = bytes(self._data[self._pos:end])
        self._pos = end
        return piece


class _Body:
    """A GetObject answer's ``Body``, as aiobotocore hands it over: ``.content`` to read, ``close()``."""

    def __init__(self, data: memoryview) -> None:
        self.content = _Stream(data)

    def close(self) -> None:
        pass


class MemoryS3:
    """The server: buckets and their objects, shared by every `MemoryStore` made from it (one per participant's
    endpoint and credentials, as over HTTP). ``latency``: seconds each request waits before it is answered (0: it
    only yields to the event loop once, so concurrent requests interleave as they would over a network).
    ``requests`` counts what the server was asked, by operation (the clients count for themselves too)."""

    def __init__(self, *, latency: float = 0.0, endpoint_url: str = "http://memory.invalid") -> None:
        self.latency = latency
        self.endpoint_url = endpoint_url
        self.requests: Counter[str] = Counter()
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()  # a store may be used from several event loops (threads) at once
        self._upload_ids = itertools.count(1)

    def __repr__(self) -> str:
        return f"MemoryS3(endpoint_url={self.endpoint_url!r}, buckets={len(self._buckets)})"

    # Context managers only so that code written for `EmbeddedS3` (``with EmbeddedS3() as s3``) takes either.
    def __enter__(self) -> MemoryS3:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    async def __aenter__(self) -> MemoryS3:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    def config(self) -> S3Config:
        """An `S3Config` for this server (the credentials are never checked)."""
        return S3Config(endpoint_url=self.endpoint_url, region="us-east-1", access_key_id="testing",
                        secret_access_key="testing", addressing_style="path")

    @staticmethod
    def transfer_config() -> TransferConfig:
        """`TransferConfig`'s defaults: splitting costs nothing extra here, so requests are counted as against S3."""
        return TransferConfig()

    def store(self, config: S3Config | None = None, transfer: TransferConfig | None = None,
              retry: RetryConfig | None = None, stats: TransferStats | None = None) -> MemoryStore:
        """A store on this server (unopened); the signature of a `StorePool` ``store_factory``."""
        return MemoryStore(self, config or self.config(), transfer or TransferConfig(), retry or RetryConfig(), stats)

    def reset(self) -> None:
        """Forget every bucket and object."""
        with self._lock:
            self._buckets.clear()
            self.requests.clear()

    def bytes_stored(self) -> int:
        with self._lock:
            return sum(len(o.data) for b in self._buckets.values() for o in b.objects.values())

    # -- the S3 operations, by botocore's names and parameters ------------------------------------------------------

    async def _arrive(self, operation: str) -> None:
        with self._lock:
            self.requests[operation] += 1
        await asyncio.sleep(self.latency)

    def _bucket(self, operation: str, name: str) -> _Bucket:
        bucket = self._buckets.get(name)
        if bucket is None:
            if operation in ("HeadObject", "HeadBucket"):
                raise _error(operation, "404", 404, "Not Found")
            raise _error(operation, "NoSuchBucket", 404, "The specified bucket does not exist", BucketName=name)
        return bucket

    def _object(self, operation: str, bucket: _Bucket, key: str) -> _Object:
        obj = bucket.objects.get(key)
        if obj is None:
            if operation == "HeadObject":
                raise _error(operation, "404", 404, "Not Found")
            raise _error(operation, "NoSuchKey", 404, "The specified key does not exist.", Key=key)
        return obj

    @staticmethod
    def _check_if_match(operation: str, obj: _Object, if_match: str | None) -> None:
        if if_match is not None and strip_etag(if_match) not in ("*", obj.etag):
            if operation == "HeadObject":
                raise _error(operation, "412", 412, "Precondition Failed")
            raise _error(operation, "PreconditionFailed", 412, "At least one of the pre-conditions you specified "
                         "did not hold", Condition="If-Match")

    def _store(self, operation: str, bucket_name: str, key: str, data: bytes, etag: str, content_type: str,
               if_none_match: str | None) -> _Object:
        """Write ``key``; atomic, so two write-once puts of one key cannot both succeed."""
        with self._lock:
            bucket = self._bucket(operation, bucket_name)
            if if_none_match == "*" and key in bucket.objects:
                raise _error(operation, "PreconditionFailed", 412, "At least one of the pre-conditions you "
                             "specified did not hold", Condition="If-None-Match")
            if key not in bucket.objects:
                bisect.insort(bucket.keys, key)
            obj = bucket.objects[key] = _Object(data, etag, _stamp(time.time()), content_type)
            return obj

    @staticmethod
    def _written(obj: _Object) -> dict[str, Any]:
        date = email.utils.format_datetime(obj.last_modified, usegmt=True)
        return {"ETag": quote_etag(obj.etag), "ResponseMetadata": {"HTTPStatusCode": 200,
                                                                   "HTTPHeaders": {"date": date}}}

    async def create_bucket(self, *, Bucket: str, **_: Any) -> dict[str, Any]:
        await self._arrive("CreateBucket")
        with self._lock:
            if Bucket in self._buckets:
                raise _error("CreateBucket", "BucketAlreadyOwnedByYou", 409, "Your previous request to create the "
                             "named bucket succeeded and you already own it.", BucketName=Bucket)
            self._buckets[Bucket] = _Bucket()
        return {}

    async def head_bucket(self, *, Bucket: str) -> dict[str, Any]:
        await self._arrive("HeadBucket")
        self._bucket("HeadBucket", Bucket)
        return {}

    async def put_object(self, *, Bucket: str, Key: str, Body: Any, ContentType: str = "binary/octet-stream",
                         IfNoneMatch: str | None = None, **_: Any) -> dict[str, Any]:
        await self._arrive("PutObject")
        data = await _body_bytes(Body)
        etag = hashlib.md5(data, usedforsecurity=False).hexdigest()
        return self._written(self._store("PutObject", Bucket, Key, data, etag, ContentType, IfNoneMatch))

    async def get_object(self, *, Bucket: str, Key: str, Range: str | None = None, IfMatch: str | None = None,
                         **_: Any) -> dict[str, Any]:
        await self._arrive("GetObject")
        with self._lock:
            obj = self._object("GetObject", self._bucket("GetObject", Bucket), Key)
        self._check_if_match("GetObject", obj, IfMatch)
        size = len(obj.data)
        answer: dict[str, Any] = {"ETag": quote_etag(obj.etag), "LastModified": obj.last_modified,
                                  "ContentType": obj.content_type}
        if Range is None:
            return {**answer, "Body": _Body(memoryview(obj.data)), "ContentLength": size}
        first_text, _, last_text = Range.removeprefix("bytes=").partition("-")
        first = int(first_text)
        last = min(size - 1, int(last_text)) if last_text else size - 1
        if first >= size:
            raise _error("GetObject", "InvalidRange", 416, "The requested range is not satisfiable",
                         RangeRequested=Range, ActualObjectSize=size)
        return {**answer, "Body": _Body(memoryview(obj.data)[first:last + 1]), "ContentLength": last - first + 1,
                "ContentRange": f"bytes {first}-{last}/{size}"}

    async def head_object(self, *, Bucket: str, Key: str, IfMatch: str | None = None, **_: Any) -> dict[str, Any]:
        await self._arrive("HeadObject")
        with self._lock:
            obj = self._object("HeadObject", self._bucket("HeadObject", Bucket), Key)
        self._check_if_match("HeadObject", obj, IfMatch)
        return {"ContentLength": len(obj.data), "ETag": quote_etag(obj.etag), "LastModified": obj.last_modified,
                "ContentType": obj.content_type}

    async def delete_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        await self._arrive("DeleteObject")
        with self._lock:
            self._delete(self._bucket("DeleteObject", Bucket), Key)
        return {}

    async def delete_objects(self, *, Bucket: str, Delete: dict[str, Any]) -> dict[str, Any]:
        await self._arrive("DeleteObjects")
        with self._lock:
            bucket = self._bucket("DeleteObjects", Bucket)
            for item in Delete["Objects"]:
                self._delete(bucket, item["Key"])
        return {"Errors": []}

    @staticmethod
    def _delete(bucket: _Bucket, key: str) -> None:
        if bucket.objects.pop(key, None) is not None:
            del bucket.keys[bisect.bisect_left(bucket.keys, key)]

    async def list_objects_v2(self, *, Bucket: str, Prefix: str = "", StartAfter: str | None = None,
                              ContinuationToken: str | None = None, MaxKeys: int = _PAGE) -> dict[str, Any]:
        await self._arrive("ListObjectsV2")
        after = StartAfter or ""
        if ContinuationToken is not None:
            try:
                after = base64.urlsafe_b64decode(ContinuationToken.encode()).decode("utf-8", "surrogatepass")
            except (binascii.Error, UnicodeError, ValueError):
                raise _error("ListObjectsV2", "InvalidArgument", 400, "The continuation token provided is "
                             "incorrect") from None
        with self._lock:
            bucket = self._bucket("ListObjectsV2", Bucket)
            keys = bucket.keys
            i = max(bisect.bisect_left(keys, Prefix), bisect.bisect_right(keys, after))
            page: list[str] = []
            while i < len(keys) and keys[i].startswith(Prefix) and len(page) < min(MaxKeys, _PAGE):
                page.append(keys[i])
                i += 1
            truncated = i < len(keys) and keys[i].startswith(Prefix)
            contents = [{"Key": k, "Size": len(o.data), "ETag": quote_etag(o.etag), "LastModified": o.last_modified,
                         "StorageClass": "STANDARD"} for k, o in ((k, bucket.objects[k]) for k in page)]
        answer: dict[str, Any] = {"IsTruncated": truncated, "KeyCount": len(contents), "Prefix": Prefix,
                                  "MaxKeys": MaxKeys}
        if contents:
            answer["Contents"] = contents
        if truncated:
            answer["NextContinuationToken"] = base64.urlsafe_b64encode(
                page[-1].encode("utf-8", "surrogatepass")).decode()
        return answer

    async def create_multipart_upload(self, *, Bucket: str, Key: str, ContentType: str = "binary/octet-stream",
                                      **_: Any) -> dict[str, Any]:
        await self._arrive("CreateMultipartUpload")
        with self._lock:
            upload_id = f"upload-{next(self._upload_ids)}"
            self._bucket("CreateMultipartUpload", Bucket).uploads[upload_id] = _Upload(Key, ContentType)
        return {"UploadId": upload_id, "Bucket": Bucket, "Key": Key}

    def _upload(self, operation: str, bucket: str, upload_id: str) -> _Upload:
        upload = self._bucket(operation, bucket).uploads.get(upload_id)
        if upload is None:
            raise _error(operation, "NoSuchUpload", 404, "The specified upload does not exist.", UploadId=upload_id)
        return upload

    async def upload_part(self, *, Bucket: str, Key: str, UploadId: str, PartNumber: int, Body: Any,
                          **_: Any) -> dict[str, Any]:
        await self._arrive("UploadPart")
        data = await _body_bytes(Body)
        with self._lock:
            self._upload("UploadPart", Bucket, UploadId).parts[PartNumber] = data
        return {"ETag": quote_etag(hashlib.md5(data, usedforsecurity=False).hexdigest())}

    async def complete_multipart_upload(self, *, Bucket: str, Key: str, UploadId: str,
                                        MultipartUpload: dict[str, Any], IfNoneMatch: str | None = None,
                                        **_: Any) -> dict[str, Any]:
        await self._arrive("CompleteMultipartUpload")
        with self._lock:
            upload = self._upload("CompleteMultipartUpload", Bucket, UploadId)
            parts = MultipartUpload["Parts"]
            datas = []
            for n, part in enumerate(parts):
                data = upload.parts.get(part["PartNumber"])
                if data is None or hashlib.md5(data, usedforsecurity=False).hexdigest() != strip_etag(part["ETag"]):
                    raise _error("CompleteMultipartUpload", "InvalidPart", 400, "One or more of the specified parts "
                                 "could not be found.")
                if n < len(parts) - 1 and len(data) < MIN_PART_SIZE:
                    raise _error("CompleteMultipartUpload", "EntityTooSmall", 400, "Your proposed upload is smaller "
                                 "than the minimum allowed size")
                datas.append(data)
        etag = multipart_etag([strip_etag(p["ETag"]) for p in parts])
        # Stamped when the upload completes, like moto (which the test suite's real-server runs use).
        obj = self._store("CompleteMultipartUpload", Bucket, Key, b"".join(datas), etag, upload.content_type,
                          IfNoneMatch)
        with self._lock:
            self._buckets[Bucket].uploads.pop(UploadId, None)
        return {**self._written(obj), "Bucket": Bucket, "Key": Key}

    async def abort_multipart_upload(self, *, Bucket: str, Key: str, UploadId: str, **_: Any) -> dict[str, Any]:
        await self._arrive("AbortMultipartUpload")
        with self._lock:
            self._upload("AbortMultipartUpload", Bucket, UploadId)
            self._buckets[Bucket].uploads.pop(UploadId)
        return {}

    async def list_multipart_uploads(self, *, Bucket: str, **_: Any) -> dict[str, Any]:
        await self._arrive("ListMultipartUploads")
        with self._lock:
            uploads = self._bucket("ListMultipartUploads", Bucket).uploads
            return {"Uploads": [{"Key": u.key, "UploadId": i} for i, u in sorted(uploads.items())]}


class _Client:
    """One store's handle on the server: its own object (a test may wrap one of its methods, as on an aiobotocore
    client), every call answered by the shared server."""

    def __init__(self, server: MemoryS3) -> None:
        self._server = server

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


class MemoryStore(ObjectStore):
    """An `ObjectStore` whose transport is a `MemoryS3`: the same methods, checks, errors and counters."""

    def __init__(self, server: MemoryS3, config: S3Config, transfer: TransferConfig = TransferConfig(),
                 retry: RetryConfig = RetryConfig(), stats: TransferStats | None = None) -> None:
        super().__init__(config, transfer, retry, stats)
        self.server = server

    def __repr__(self) -> str:
        state = "open" if self._client_obj is not None else "closed"
        return f"MemoryStore({self.server!r}, {state})"

    async def open(self) -> MemoryStore:
        """Idempotent. An endpoint URL `ObjectStore` would refuse is refused here too (`InvalidEndpoint`)."""
        if self._client_obj is None:
            if self.config.endpoint_url is not None:
                _check_endpoint(self.config.endpoint_url, allow_path=True)
            self._client_obj = _Client(self.server)
            self._limiter = asyncio.Semaphore(self.transfer.max_pool_connections)
        return self

    async def close(self) -> None:
        self._client_obj = None
