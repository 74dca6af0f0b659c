"""What to do about an error that stops a miner, a validator or an ops command: one sentence per kind.

The error's own message says what went wrong (operation, bucket, key, server message: never credentials); this
adds the operator's next step. Checked in order, most specific first, so a subclass gets its own advice.
"""
from __future__ import annotations

from storage import (
    AccessDenied,
    BucketNotFound,
    NotFound,
    ObjectTooLarge,
    PreconditionFailed,
    RetriesExhausted,
    StorageError,
)

from ..chain.base import ChainError, ChainTimeout
from ..directory import CommitmentError
from ..errors import InvalidObject, ProtocolError

_ADVICE: list[tuple[type[BaseException], str]] = [
    (AccessDenied, "check that MR_S3_ACCESS_KEY_ID / MR_S3_SECRET_ACCESS_KEY (in the environment or the "
                   "--env-file) belong to a key allowed to read, write and list this bucket; see "
                   "docs/OPERATIONS.md, Permissions"),
    (BucketNotFound, "create the bucket, or check --bucket, MR_S3_ENDPOINT_URL and MR_S3_REGION (R2: region auto)"),
    (RetriesExhausted, "the S3 endpoint did not answer in time: check MR_S3_ENDPOINT_URL, the network and the "
                       "provider's status page; the process can simply be restarted"),
    (PreconditionFailed, "an object that must be written once already exists: another process may be using the "
                         "same hotkey and bucket; run one process per hotkey"),
    (ObjectTooLarge, "an object is larger than the run spec allows: check that everyone uses the same --spec"),
    (NotFound, "an expected object is missing: check the bucket and the run spec (--spec)"),
    (StorageError, "check MR_S3_ENDPOINT_URL, MR_S3_REGION, MR_S3_ADDRESSING_STYLE (path for MinIO) and the "
                   "credentials; rerun with --logging.debug for each request"),
    (ChainTimeout, "the chain did not answer in time: check --subtensor.network / --subtensor.chain_endpoint and "
                   "the network, then restart"),
    (ChainError, "check --netuid, --subtensor.network and that the hotkey is registered "
                 "(btcli subnet register)"),
    (CommitmentError, "a bucket commitment on chain is malformed: check the bucket name and MR_PUBLIC_* values "
                      "(the whole commitment must fit in 128 bytes)"),
    (InvalidObject, "an object failed verification: its reason code is listed in docs/PROTOCOL.md"),
    (ProtocolError, "see docs/PROTOCOL.md for the rule named in the message"),
]


def advice(exc: BaseException) -> str:
    """The next step for ``exc``, or an empty string when there is nothing specific to say."""
    for kind, text in _ADVICE:
        if isinstance(exc, kind):
            return text
    return ""


def describe(exc: BaseException) -> str:
    """``"<ErrorType>: <message>. What to do: <advice>"`` for a log line."""
    text = f"{type(exc).__name__}: {exc}"
    hint = advice(exc)
    return f"{text}. What to do: {hint}" if hint else text
