"""One exception hierarchy for everything `storage/` raises.

Every public method raises a `StorageError` subclass (or `ValueError`/`TypeError` for misuse of the API itself),
never a botocore or aiohttp exception, and never an untyped one whatever the server answers: any endpoint may be run
by a hostile party, so a wrong answer is a `MalformedResponse`, an endless listing a `ListingTooLong`. Messages
carry the operation, bucket, key and the server's error code, and never credentials: they are built only from
those fields and the server's own error message (cut short and made printable).

Instances pickle cleanly (the positional constructor arguments are kept in ``args``), so they can cross process
boundaries.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "StorageError",
    "NotFound",
    "BucketNotFound",
    "PreconditionFailed",
    "ObjectTooLarge",
    "AccessDenied",
    "RetriesExhausted",
    "InvalidRange",
    "MalformedResponse",
    "ListingTooLong",
    "InvalidEndpoint",
    "from_client_error",
]

# S3 error codes that mean "your credentials may not do this".
_ACCESS_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "AccountProblem",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidToken",
        "SignatureDoesNotMatch",
        "TokenRefreshRequired",
    }
)


def _where(bucket: str | None, key: str | None) -> str:
    if bucket is None:
        return ""
    return f"s3://{bucket}/{key}" if key is not None else f"s3://{bucket}"


class StorageError(Exception):
    """Base class of every error raised by `storage`.

    Attributes: ``operation`` (S3 operation name such as ``"PutObject"``, or None), ``bucket``, ``key``, ``code``
    (the S3 error code, e.g. ``"SlowDown"``, or None) and ``status`` (HTTP status, or None).
    """

    def __init__(
        self,
        message: str,
        *,
        operation: str | None = None,
        bucket: str | None = None,
        key: str | None = None,
        code: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.operation = operation
        self.bucket = bucket
        self.key = key
        self.code = code
        self.status = status

    def __str__(self) -> str:
        return self.message


class NotFound(StorageError):
    """The object does not exist (the bucket does)."""

    def __init__(self, bucket: str, key: str, *, operation: str | None = None) -> None:
        super().__init__(
            f"not found: {_where(bucket, key)}",
            operation=operation, bucket=bucket, key=key, code="NoSuchKey", status=404,
        )
        self.args = (bucket, key)


class BucketNotFound(StorageError):
    """The bucket does not exist."""

    def __init__(self, bucket: str, *, operation: str | None = None) -> None:
        super().__init__(
            f"bucket not found: {_where(bucket, None)}",
            operation=operation, bucket=bucket, code="NoSuchBucket", status=404,
        )
        self.args = (bucket,)


class PreconditionFailed(StorageError):
    """A conditional request failed.

    ``condition`` is ``"If-None-Match"`` for a write-once put onto an existing key, ``"If-Match"`` when the object's
    ETag no longer matches the one given.
    """

    def __init__(self, bucket: str, key: str, condition: str, *, operation: str | None = None) -> None:
        super().__init__(
            f"precondition {condition} failed for {_where(bucket, key)}",
            operation=operation,
            bucket=bucket,
            key=key,
            code="PreconditionFailed",
            status=412,
        )
        self.args = (bucket, key, condition)
        self.condition = condition


class ObjectTooLarge(StorageError):
    """The object is larger than the caller's limit; nothing was downloaded."""

    def __init__(self, bucket: str, key: str, size: int, limit: int) -> None:
        super().__init__(
            f"{_where(bucket, key)} is {size} bytes, over the limit of {limit}",
            operation="HeadObject", bucket=bucket, key=key,
        )
        self.args = (bucket, key, size, limit)
        self.size = size
        self.limit = limit


class AccessDenied(StorageError):
    """The credentials are missing, wrong, expired or not allowed to do this."""

    def __init__(
        self,
        bucket: str | None,
        key: str | None = None,
        *,
        operation: str | None = None,
        code: str = "AccessDenied",
        status: int | None = 403,
    ) -> None:
        where = _where(bucket, key) or "the endpoint"
        super().__init__(
            f"access denied ({code}) on {operation or 'request'} for {where}",
            operation=operation,
            bucket=bucket,
            key=key,
            code=code,
            status=status,
        )
        self.args = (bucket, key)


class RetriesExhausted(StorageError):
    """A retryable failure persisted through every allowed attempt or past the time budget.

    ``attempts`` is how many requests were sent, ``elapsed`` the seconds spent, ``last_error`` a one-line text
    of the last failure (its exception is also chained as ``__cause__``).
    """

    def __init__(
        self, operation: str, bucket: str | None, key: str | None, attempts: int, last_error: str, elapsed: float = 0.0
    ) -> None:
        where = _where(bucket, key) or "the endpoint"
        super().__init__(
            f"{operation} on {where} failed after {attempts} attempt(s) in {elapsed:.1f}s; last error: {last_error}",
            operation=operation,
            bucket=bucket,
            key=key,
        )
        self.args = (operation, bucket, key, attempts, last_error, elapsed)
        self.attempts = attempts
        self.last_error = last_error
        self.elapsed = elapsed


class InvalidRange(StorageError):
    """The byte range is empty, negative, or starts at or past the end of the object."""

    def __init__(self, bucket: str, key: str, start: int, end: int, size: int | None = None) -> None:
        detail = f" (object size {size})" if size is not None else ""
        super().__init__(
            f"invalid range [{start}, {end}) for {_where(bucket, key)}{detail}",
            operation="GetObject",
            bucket=bucket,
            key=key,
            code="InvalidRange",
            status=416,
        )
        self.args = (bucket, key, start, end, size)
        self.start = start
        self.end = end
        self.size = size


class MalformedResponse(StorageError):
    """The server's answer does not make sense: a missing or ill-typed field, a length that disagrees with the
    request, a key outside the listed prefix, a body over the size any real answer has.

    Not retryable: a server that lies does not heal by being asked again. ``detail`` says what was wrong; when the
    answer made the parsing code itself fail, that exception is chained as ``__cause__`` and named in ``detail``.
    """

    def __init__(
        self, detail: str, *, operation: str | None = None, bucket: str | None = None, key: str | None = None
    ) -> None:
        where = _where(bucket, key) or "the endpoint"
        super().__init__(
            f"malformed answer to {operation or 'request'} on {where}: {detail}",
            operation=operation, bucket=bucket, key=key,
        )
        self.args = (detail,)
        self.detail = detail


class ListingTooLong(StorageError):
    """A listing went on longer than the caller allowed (``max_keys``), or in a way no real listing does (a
    continuation token sent twice, more pages than the keys allowed could fill).

    ``prefix`` is the listed prefix, ``seen`` how many keys had arrived, ``reason`` which limit was hit.
    """

    def __init__(self, bucket: str, prefix: str, seen: int, reason: str) -> None:
        super().__init__(
            f"listing of {_where(bucket, prefix)} stopped after {seen} keys: {reason}",
            operation="ListObjectsV2", bucket=bucket,
        )
        self.args = (bucket, prefix, seen, reason)
        self.prefix = prefix
        self.seen = seen
        self.reason = reason


def _masked_endpoint(endpoint: object) -> str:
    """An endpoint fit for messages: userinfo (which may hold a password) masked, cut at 120 characters."""
    text = endpoint if isinstance(endpoint, str) else f"<{type(endpoint).__name__}>"
    if "@" in text:  # whatever precedes the last "@" may be userinfo, however malformed the rest
        scheme, sep, _ = text.partition("://")
        start = len(scheme) + len(sep) if sep else 0
        text = text[:start] + "****@" + text.rpartition("@")[2]
    return text if len(text) <= 120 else text[:117] + "..."


class InvalidEndpoint(StorageError):
    """An endpoint URL we will not talk to (see `storage.check_endpoint`); ``reason`` says why.

    ``endpoint`` is the URL with any userinfo masked and cut at 120 characters; the raw URL is not kept, since
    whoever committed it may have put a password in it.
    """

    def __init__(self, endpoint: object, reason: str) -> None:
        masked = _masked_endpoint(endpoint)
        super().__init__(f"invalid endpoint {masked!r}: {reason}")
        self.args = (masked, reason)
        self.endpoint = masked
        self.reason = reason


def _server_text(value: Any, limit: int) -> str:
    """Text a server chose, made safe for one log line: printable, at most ``limit`` characters."""
    text = "".join(c if c.isprintable() else "?" for c in str(value)[: limit + 1])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def client_error_fields(err: Any) -> tuple[str, int | None, str]:
    """(code, HTTP status, server message) of a botocore ``ClientError``.

    Code and message come from the server, which may be hostile: they are cut short (a code at 64 characters, a
    message at 300) and stripped of control characters, since they end up in messages and logs.
    """
    response = getattr(err, "response", None) or {}
    error = response.get("Error") or {}
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    if not isinstance(status, int):
        status = None
    code = _server_text(error.get("Code") or status or "Unknown", 64)
    return code, status, _server_text(error.get("Message") or "", 300)


def from_client_error(err: Any, *, operation: str, bucket: str | None, key: str | None) -> StorageError:
    """Translate a non-retryable botocore ``ClientError`` into a typed `StorageError`.

    A HEAD answers a missing key and a missing bucket with the same body-less 404; that ambiguity is resolved by
    the caller (`ObjectStore.head`), here a bare 404 with a key means NotFound.
    """
    code, status, message = client_error_fields(err)
    if code == "NoSuchBucket":
        return BucketNotFound(bucket or "?", operation=operation)
    if code in ("NoSuchKey", "NotFound") or (status == 404 and code == "404"):
        if key is None:
            return BucketNotFound(bucket or "?", operation=operation)
        return NotFound(bucket or "?", key, operation=operation)
    if code == "PreconditionFailed" or status == 412:
        condition = (getattr(err, "response", None) or {}).get("Error", {}).get("Condition") or "If-Match"
        return PreconditionFailed(bucket or "?", key or "", condition, operation=operation)
    if code == "InvalidRange" or status == 416:
        return InvalidRange(bucket or "?", key or "", -1, -1)
    if code in _ACCESS_CODES or status == 403:
        return AccessDenied(bucket, key, operation=operation, code=code, status=status)
    where = _where(bucket, key) or "the endpoint"
    detail = f": {message}" if message else ""
    return StorageError(
        f"{operation} on {where} failed with {code} (HTTP {status}){detail}",
        operation=operation,
        bucket=bucket,
        key=key,
        code=code,
        status=status,
    )
