"""Configuration dataclasses: where the endpoint is (`S3Config`), how bytes move (`TransferConfig`) and how
failures are retried (`RetryConfig`).

All three are frozen so a default instance can safely be shared; derive variants with `dataclasses.replace`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["S3Config", "TransferConfig", "RetryConfig", "MiB"]

MiB = 1024 * 1024

AddressingStyle = Literal["auto", "path", "virtual"]
_ADDRESSING_STYLES = ("auto", "path", "virtual")

# S3's multipart limits; R2 and MinIO share them.
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * 1024 * MiB
MAX_PARTS = 10_000


def _mask(value: str | None, *, keep: int = 0) -> str | None:
    if value is None:
        return None
    if keep and len(value) >= 4 * keep:
        return "****" + value[-keep:]
    return "****"


@dataclass(frozen=True)
class S3Config:
    """Where and as whom to talk S3.

    ``endpoint_url=None`` means AWS itself. Use ``addressing_style="path"`` for MinIO and moto (bucket in the URL
    path rather than the host name). Credentials left as None fall through to botocore's usual chain (environment,
    profile, instance role). ``repr()`` masks the credentials.

    ``anonymous=True`` sends unsigned requests and reads no credentials from anywhere: for endpoints run by
    someone else (a miner's bucket, say) that allow public access, so that nothing of ours, not even an access key
    id from the environment, reaches a server that may be hostile. It excludes credentials; `from_env` never sets it.
    """

    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = None
    addressing_style: AddressingStyle = "auto"
    session_token: str | None = None
    anonymous: bool = False

    def __post_init__(self) -> None:
        if self.addressing_style not in _ADDRESSING_STYLES:
            raise ValueError(f"addressing_style must be one of {_ADDRESSING_STYLES}, got {self.addressing_style!r}")
        if not self.region:
            raise ValueError("region must not be empty (use 'auto' for Cloudflare R2)")
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("access_key_id and secret_access_key must be given together")
        if self.anonymous and (self.access_key_id or self.session_token):
            raise ValueError("anonymous=True sends no credentials; leave access_key_id, secret_access_key and "
                             "session_token unset")

    def __repr__(self) -> str:
        return (
            f"S3Config(endpoint_url={self.endpoint_url!r}, region={self.region!r}, "
            f"access_key_id={_mask(self.access_key_id, keep=4)!r}, "
            f"secret_access_key={_mask(self.secret_access_key)!r}, addressing_style={self.addressing_style!r}, "
            f"session_token={_mask(self.session_token)!r}, anonymous={self.anonymous!r})"
        )

    __str__ = __repr__

    @classmethod
    def from_env(
        cls,
        env_file: str | os.PathLike[str] | None = ".env",
        prefix: str = "MR_S3_",
        *,
        environ: Mapping[str, str] | None = None,
    ) -> S3Config:
        """Build a config from ``{prefix}*`` variables, falling back to the standard ``AWS_*`` ones.

        Reads ``env_file`` (dotenv syntax) if it exists; variables already in the process environment (or in
        ``environ``, when given) win over the file. Empty values count as unset. Recognised, with their fallbacks:
        ``ENDPOINT_URL`` (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL), ``REGION`` (AWS_REGION, AWS_DEFAULT_REGION),
        ``ACCESS_KEY_ID`` (AWS_ACCESS_KEY_ID), ``SECRET_ACCESS_KEY`` (AWS_SECRET_ACCESS_KEY), ``SESSION_TOKEN``
        (AWS_SESSION_TOKEN) and ``ADDRESSING_STYLE``.
        """
        values: dict[str, str] = {}
        if env_file is not None and os.path.isfile(env_file):
            from dotenv import dotenv_values

            values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
        values.update(os.environ if environ is None else environ)

        def pick(name: str, *fallbacks: str) -> str | None:
            for var in (prefix + name, *fallbacks):
                value = values.get(var, "").strip()
                if value:
                    return value
            return None

        return cls(
            endpoint_url=pick("ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
            region=pick("REGION", "AWS_REGION", "AWS_DEFAULT_REGION") or "us-east-1",
            access_key_id=pick("ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"),
            secret_access_key=pick("SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"),
            addressing_style=(pick("ADDRESSING_STYLE") or "auto").lower(),  # type: ignore[arg-type]
            session_token=pick("SESSION_TOKEN", "AWS_SESSION_TOKEN"),
        )


    def to_env(self, prefix: str = "MR_S3_") -> dict[str, str]:
        """The ``{prefix}*`` variables `from_env` reads back as this config: ``from_env(None, prefix,
        environ=cfg.to_env(prefix)) == cfg``.

        Every variable is present; an unset field is an empty string, which `from_env` reads as unset, so the dict
        laid over an environment (``{**os.environ, **cfg.to_env()}``) replaces any ``{prefix}*`` values already
        there (the ``AWS_*`` fallbacks still fill what is unset). The dict holds the credentials: pass it to a
        process's environment, never to a log. An anonymous config has no such form (`from_env` never makes one):
        ValueError.
        """
        if self.anonymous:
            raise ValueError("an anonymous S3Config has no MR_S3_* form: from_env never reads one")
        values = {"ENDPOINT_URL": self.endpoint_url, "REGION": self.region, "ACCESS_KEY_ID": self.access_key_id,
                  "SECRET_ACCESS_KEY": self.secret_access_key, "ADDRESSING_STYLE": self.addressing_style,
                  "SESSION_TOKEN": self.session_token}
        return {prefix + name: value or "" for name, value in values.items()}


@dataclass(frozen=True)
class TransferConfig:
    """How bytes move: when to split, how big the pieces, how many at once, how long to wait.

    Objects of ``multipart_threshold`` bytes or more are uploaded as ``part_size`` parts, ``max_concurrency`` at a
    time (part size grows automatically if the object would need more than 10,000 parts). Downloads of objects
    larger than ``ranged_get_threshold`` fetch ``range_part_size`` ranges in parallel. ``max_pool_connections`` caps
    the HTTP connections, and requests in flight, of one `ObjectStore` across all its operations.

    ``max_get_bytes`` caps `ObjectStore.get` when the caller gives no ``max_bytes``: the buffer is sized from the
    server's Content-Length, which a hostile server can set to anything, so it is checked against this first.

    Timeouts are per request attempt: ``connect_timeout`` to open a connection, ``read_timeout`` for the socket to
    stay silent, ``operation_timeout`` for one whole attempt (one PutObject, one part, one ranged GET, including
    reading its body). A timed-out attempt is retried under `RetryConfig`.
    """

    # Each field's ``help`` is its one-line meaning, shown by command lines that make flags of these fields.
    multipart_threshold: int = field(default=16 * MiB, metadata={
        "help": "bytes from which an object is uploaded in parts"})
    part_size: int = field(default=8 * MiB, metadata={
        "help": "bytes per uploaded part (5 MiB to 5 GiB; grows if an object would need more than 10,000)"})
    max_concurrency: int = field(default=8, metadata={"help": "parts or ranges of one object moved at once"})
    ranged_get_threshold: int = field(default=16 * MiB, metadata={
        "help": "bytes above which a download fetches ranges in parallel"})
    range_part_size: int = field(default=8 * MiB, metadata={"help": "bytes per range of a parallel download"})
    max_pool_connections: int = field(default=32, metadata={
        "help": "HTTP connections (requests in flight) of one store across all its operations"})
    connect_timeout: float = field(default=5.0, metadata={"help": "seconds to open a connection"})
    read_timeout: float = field(default=30.0, metadata={
        "help": "seconds the socket may stay silent within a request"})
    operation_timeout: float = field(default=300.0, metadata={
        "help": "seconds one whole request attempt may take (one PUT, one part, one ranged GET, body included)"})
    max_get_bytes: int = field(default=1024 * MiB, metadata={
        "help": "largest object a read accepts when the caller sets no bound (a server's Content-Length is "
                "checked against it)"})

    def __post_init__(self) -> None:
        if not MIN_PART_SIZE <= self.part_size <= MAX_PART_SIZE:
            raise ValueError(f"part_size must be within [{MIN_PART_SIZE}, {MAX_PART_SIZE}] (S3 limits)")
        if min(self.multipart_threshold, self.ranged_get_threshold, self.range_part_size, self.max_get_bytes) < 1:
            raise ValueError("thresholds, range_part_size and max_get_bytes must be positive")
        if self.max_concurrency < 1 or self.max_pool_connections < 1:
            raise ValueError("max_concurrency and max_pool_connections must be at least 1")
        if min(self.connect_timeout, self.read_timeout, self.operation_timeout) <= 0:
            raise ValueError("timeouts must be positive")


@dataclass(frozen=True)
class RetryConfig:
    """Exponential backoff for retryable failures (throttling, 5xx, timeouts, dropped connections).

    Attempt *n* (n >= 1) that fails waits ``min(max_delay, base_delay * 2**(n-1))`` before the next one; with
    ``jitter`` (full jitter) a uniform random fraction of that. At most ``max_attempts`` requests are sent and no
    retry starts once ``total_budget`` seconds have passed since the first attempt; then `RetriesExhausted`.
    """

    # Each field's ``help`` is its one-line meaning, shown by command lines that make flags of these fields.
    max_attempts: int = field(default=8, metadata={"help": "requests sent for one operation at most"})
    base_delay: float = field(default=0.2, metadata={
        "help": "seconds waited after the first failed attempt; doubles with each further one"})
    max_delay: float = field(default=10.0, metadata={"help": "longest wait between two attempts, in seconds"})
    jitter: bool = field(default=True, metadata={
        "help": "wait a uniform random fraction of each delay (full jitter), so clients do not retry in step"})
    total_budget: float = field(default=120.0, metadata={
        "help": "seconds after the first attempt from which no retry starts; whichever of this and max_attempts "
                "comes first ends the retries (with the default delays, 8 attempts wait at most 22.6 s in all)"})
    seed: int | None = field(default=None, compare=False, metadata={
        "help": "seed of the jitter's random numbers: not part of the policy, only of its reproducibility in tests"})

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.total_budget <= 0:
            raise ValueError("delays must be non-negative and total_budget positive")
