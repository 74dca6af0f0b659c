"""One exception hierarchy for everything the protocol rejects.

Every rejection carries a short ``reason`` code: miners, peers and validators count rejections per window by that
code, so a code names one failure and never changes meaning.
"""
from __future__ import annotations


class ProtocolError(Exception):
    """Base of every error this package raises on purpose."""

    reason = "protocol_error"


class InvalidName(ProtocolError, ValueError):
    """A run id, hotkey or bucket name that may not reach an object key."""

    reason = "invalid_name"


class NoBucketOnChain(ProtocolError):
    """The hotkey has no bucket in the window's directory (never committed one, or its commitment was refused)."""

    reason = "no_bucket"


class NotAParticipant(ProtocolError):
    """This process's hotkey cannot take part in the role it tries to play (not registered, no bucket committed,
    or excluded by the run's allow/deny lists)."""

    reason = "not_a_participant"


class InvalidObject(ProtocolError):
    """An object failed a check; nothing in it may be trusted."""

    reason = "invalid_object"


class Oversized(InvalidObject):
    reason = "oversized"


class Truncated(InvalidObject):
    reason = "truncated"


class PickleRejected(InvalidObject):
    """Pickle (or a torch.save zip, which holds a pickle): never deserialised."""

    reason = "pickle"


class HeaderTooLarge(InvalidObject):
    reason = "header_too_large"


class MalformedHeader(InvalidObject):
    reason = "malformed_header"


class DisallowedDtype(InvalidObject):
    reason = "disallowed_dtype"


class ShapeMismatch(InvalidObject):
    reason = "shape_mismatch"


class OffsetMismatch(InvalidObject):
    """Tensor offsets that overlap, leave gaps, or disagree with the data length."""

    reason = "offset_mismatch"


class NonFinite(InvalidObject):
    reason = "non_finite"


class OutOfBounds(InvalidObject):
    """Finite values beyond the run spec's ``max_abs_value``: a sum of enough of them could overflow fp32."""

    reason = "out_of_bounds"


class HashMismatch(InvalidObject):
    reason = "hash_mismatch"


class BadSignature(InvalidObject):
    reason = "bad_signature"


class UnknownHotkey(InvalidObject):
    """Signed by a hotkey that is not registered, or not allowed, on this run."""

    reason = "unknown_hotkey"


class KeyMismatch(InvalidObject):
    """The object's metadata does not match the key it was found under."""

    reason = "key_mismatch"


class MetadataMismatch(InvalidObject):
    """Well-formed, but for another run, window, segment or role than expected."""

    reason = "metadata_mismatch"


class Late(InvalidObject):
    """Written after its deadline: it does not count."""

    reason = "late"


class NotAllowed(InvalidObject):
    """Registered, but outside the allowed set: excluded by the run spec's or this process's allow and deny lists."""

    reason = "not_allowed"


class MalformedReport(InvalidObject):
    """A validator's signed report whose JSON is not a report of that validator and window."""

    reason = "malformed_report"


class JunkKey(InvalidObject):
    """A key in a listing that no participant wrote: not of the protocol's layout, not by a participant of the
    window in that role, or with a key tag that is not its writer's signature for this bucket (mapreduce/wire/keys.py).
    Dropped before anything is read."""

    reason = "junk_key"


class PhaseOver(ProtocolError):
    """Work on a window phase was still running when the chain reached the phase's last block: stopped, because
    what it would produce no longer counts (mapreduce.network.Network.before_block)."""

    reason = "deadline"


class Squatted(ProtocolError):
    """A write-once key we chose already holds an object that is not ours."""

    reason = "squatted"


class BroadcastFailed(ProtocolError):
    """A broadcast could not be sent, or received whole. ``rejected`` counts, by reason, everything that was
    refused on the way (copies, records, senders), so the caller can tell a missing sender from bad miners."""

    reason = "broadcast_failed"

    def __init__(self, message: str, rejected: "dict[str, int] | None" = None):
        super().__init__(message)
        self.rejected = dict(rejected or {})
