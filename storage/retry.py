"""The one place where requests are retried.

botocore's own retries are switched off (see `ObjectStore`), so what happens on a failure is decided here alone:
retryable failures (throttling, any 5xx, timeouts, dropped or reset connections, truncated bodies) are retried with
full-jitter exponential backoff within `RetryConfig`'s attempt and time limits; anything else is translated into a
typed `StorageError` at once.

Whatever an endpoint answers, what leaves an attempt is typed: the server may be hostile, and an answer that makes
botocore's parser or our own code trip (a KeyError on a missing field, a ValueError on a garbage number, a
RuntimeError from botocore's timestamp parser, a MemoryError) becomes a `MalformedResponse`, not retried: a server
that lies does not heal by being asked again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ConnectionError as BotoConnectionError,
    HTTPClientError,
    IncompleteReadError,
    ResponseStreamingError,
    SSLError,
)

from .config import RetryConfig
from .errors import (
    AccessDenied,
    MalformedResponse,
    RetriesExhausted,
    StorageError,
    client_error_fields,
    from_client_error,
)

__all__ = ["is_retryable", "backoff_delay", "call_with_retries", "TruncatedBody", "ResponseTooLarge"]

log = logging.getLogger("storage.retry")

T = TypeVar("T")

# Error codes S3 (and R2/MinIO) use for "try again later" that are not all 5xx.
RETRYABLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "TooManyRequests",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "InternalError",
        "ServiceUnavailable",
        # A concurrent conditional write to the same key is in flight; S3 asks for a retry.
        "ConditionalRequestConflict",
        "OperationAborted",
    }
)
RETRYABLE_STATUS = frozenset({408, 429})


class TruncatedBody(Exception):
    """The response body ended before the promised number of bytes (a dropped connection in disguise)."""


class ResponseTooLarge(Exception):
    """A response body that is read whole (XML, errors) is larger than any real answer; it was not read."""


def is_retryable(exc: BaseException) -> bool:
    """Whether a failed request may succeed if sent again."""
    if isinstance(exc, ClientError):
        code, status, _ = client_error_fields(exc)
        return code in RETRYABLE_CODES or status in RETRYABLE_STATUS or (status is not None and status >= 500)
    if isinstance(exc, (SSLError, aiohttp.ClientSSLError)):
        return False  # a certificate problem does not heal itself
    return isinstance(
        exc,
        (
            BotoConnectionError,  # connect timeouts, refused connections
            HTTPClientError,  # read timeouts, connections closed mid-request, broken response streams
            IncompleteReadError,
            ResponseStreamingError,
            TruncatedBody,
            aiohttp.ClientError,  # payload errors and disconnects while we stream a body ourselves
            TimeoutError,
            ConnectionError,
        ),
    )


def backoff_delay(policy: RetryConfig, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
    cap = min(policy.max_delay, policy.base_delay * (2 ** (attempt - 1)))
    if not policy.jitter:
        return cap
    return (rng or random).uniform(0.0, cap)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        code, status, message = client_error_fields(exc)
        return f"{code} (HTTP {status}){': ' + message if message else ''}"
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timed out"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _translate(exc: Exception, operation: str, bucket: str | None, key: str | None) -> StorageError:
    """Typed error for a failure that retrying will not fix.

    Failures of the transport (botocore's, aiohttp's, the OS's) become a `StorageError`; anything else raised while
    an answer was being read and parsed means the answer was not what S3 sends: `MalformedResponse`.
    """
    if isinstance(exc, ClientError):
        return from_client_error(exc, operation=operation, bucket=bucket, key=key)
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return AccessDenied(bucket, key, operation=operation, code="NoCredentials", status=None)
    if isinstance(exc, ResponseTooLarge):
        return MalformedResponse(str(exc), operation=operation, bucket=bucket, key=key)
    if isinstance(exc, (BotoCoreError, aiohttp.ClientError, OSError)):
        # OSError: a local failure (no file descriptors left, say), not the server's words; not retried before
        # either, and not the server's fault, so not a MalformedResponse.
        return StorageError(
            f"{operation} on s3://{bucket or ''}/{key or ''} failed: {_describe(exc)}",
            operation=operation, bucket=bucket, key=key,
        )
    return MalformedResponse(
        f"the answer made the client fail ({_describe(exc)[:200]})", operation=operation, bucket=bucket, key=key
    )


async def call_with_retries(
    attempt_fn: Callable[[int], Awaitable[T]],
    policy: RetryConfig,
    *,
    operation: str,
    bucket: str | None = None,
    key: str | None = None,
    attempt_timeout: float | None = None,
    limiter: asyncio.Semaphore | None = None,
    rng: random.Random | None = None,
) -> T:
    """Run ``attempt_fn(attempt_number)`` until it succeeds, fails for good, or runs out of attempts or time.

    Each attempt first takes a slot from ``limiter`` (waiting for it does not count against any timeout) and then
    gets ``attempt_timeout`` seconds, clipped to what is left of ``policy.total_budget``. The budget starts with
    the first attempt. `StorageError` raised by ``attempt_fn`` passes through untouched; any other exception that
    is not retried leaves as a typed `StorageError` (see `_translate`) with the original as ``__cause__``.
    """
    started: float | None = None
    attempt = 0
    while True:
        attempt += 1
        try:
            if limiter is not None:
                await limiter.acquire()
            try:
                now = time.monotonic()
                if started is None:
                    started = now
                remaining = policy.total_budget - (now - started)
                timeout = remaining if attempt_timeout is None else min(attempt_timeout, remaining)
                if timeout <= 0:
                    raise TimeoutError("retry budget spent before the attempt could start")
                async with asyncio.timeout(timeout):
                    return await attempt_fn(attempt)
            finally:
                if limiter is not None:
                    limiter.release()
        except StorageError:
            raise
        except Exception as exc:
            if not is_retryable(exc):
                raise _translate(exc, operation, bucket, key) from exc
            elapsed = time.monotonic() - (started or time.monotonic())
            delay = backoff_delay(policy, attempt, rng)
            if attempt >= policy.max_attempts or elapsed + delay >= policy.total_budget:
                raise RetriesExhausted(operation, bucket, key, attempt, _describe(exc), elapsed) from exc
            log.debug(
                "%s s3://%s/%s attempt %d failed (%s); retrying in %.2fs",
                operation, bucket, key or "", attempt, _describe(exc), delay,
            )
            await asyncio.sleep(delay)
