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
from ..errors import (BroadcastFailed, InvalidName, InvalidObject, NoBucketOnChain, NotAParticipant, PhaseOver,
                      ProtocolError, Squatted)

_ADVICE: list[tuple[type[BaseException], str]] = [
    (AccessDenied, "check that MR_S3_ACCESS_KEY_ID / MR_S3_SECRET_ACCESS_KEY (in the environment or the "
                   "--env-file) belong to a key allowed to read, write and list this bucket; see "
                   "docs/OPERATIONS.md, *Permissions*"),
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
                      "(the whole commitment must fit in 128 bytes; try them with `python -m mapreduce commitment "
                      "encode`)"),
    (InvalidName, "fix the name the message quotes: the run id in --spec, --bucket, or a hotkey in "
                  "--whitelist.hotkeys / --blacklist.hotkeys"),
    (NoBucketOnChain, "the hotkey has no valid bucket commitment on chain: a miner or validator commits its own at "
                      "start; for another party, wait for it to commit, or check --netuid"),
    (NotAParticipant, "register the hotkey on --netuid (btcli subnet register) and check the run spec's "
                      "allow_hotkeys / deny_hotkeys and your --whitelist.hotkeys / --blacklist.hotkeys"),
    (PhaseOver, "the work did not finish within its window phase: this machine or its link to S3 is too slow for "
                "the run's block times; see docs/OPERATIONS.md, *When something is wrong*"),
    (Squatted, "someone else wrote at a key this process must write once: run one process per hotkey and bucket, "
               "and check who else holds write access to the bucket"),
    (BroadcastFailed, "the message says which segments or records were missing; retry in a later window"),
    (InvalidObject, "an object failed verification: the reason code after the error type names the check "
                    "(docs/PROTOCOL.md, *Objects*, lists them); python -m mapreduce inspect runs every check on it"),
    (ProtocolError, "the error type and reason code name the rule that failed (docs/PROTOCOL.md, *A window, "
                    "step by step*)"),
]


def advice(exc: BaseException) -> str:
    """The next step for ``exc``, or an empty string when there is nothing specific to say."""
    for kind, text in _ADVICE:
        if isinstance(exc, kind):
            return text
    return ""


def describe(exc: BaseException) -> str:
    """``"<ErrorType>: <message>. What to do: <advice>"`` for a log line."""
    reason = getattr(exc, "reason", None)
    text = f"{type(exc).__name__}" + (f" [{reason}]" if isinstance(reason, str) else "") + f": {exc}"
    hint = advice(exc)
    return f"{text}. What to do: {hint}" if hint else text
