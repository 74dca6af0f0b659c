"""Names that end up inside object keys are checked here, before any key is built.

Hotkeys, run ids and bucket names come from the chain, from command lines and from other people's objects. A
name with a path separator, ``..``, a control character or an absurd length could address someone else's objects
or break a listing, so it is refused with :class:`InvalidName` instead.
"""
from __future__ import annotations

import re

from ..errors import InvalidName

# ss58 addresses are base58 (no 0, O, I, l); Bittensor's are 48 characters.
_SS58 = re.compile(r"[1-9A-HJ-NP-Za-km-z]{46,48}")
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
# S3 rules: 3-63 characters, lower case letters, digits, dots and hyphens, starting and ending alphanumeric.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_hotkey(hotkey: str) -> str:
    if not isinstance(hotkey, str) or not _SS58.fullmatch(hotkey):
        raise InvalidName(f"not an ss58 hotkey: {_describe(hotkey)}")
    return hotkey


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise InvalidName(
            f"run id must be 1-64 letters, digits, '_' or '-', starting with a letter or digit: {_describe(run_id)}"
        )
    return run_id


def check_bucket(bucket: str) -> str:
    if not isinstance(bucket, str) or not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise InvalidName(f"not a valid S3 bucket name: {_describe(bucket)}")
    return bucket
