"""The object key layout: the one place that knows where each object lives, and which keys are genuine.

In a miner's bucket (written by others with the miner's public write key, except the outputs)::

    {run}/w{window:08d}/in/s{segment:05d}/{peer}/{tag}        a peer's signed input for one segment
    {run}/w{window:08d}/bcast/s{segment:05d}/{sender}/{tag}   one segment of a peer's broadcast
    {run}/w{window:08d}/out/s{segment:05d}/{miner}            the miner's signed reduced slice (the miner's own write)

In a peer's bucket::

    {run}/w{window:08d}/record/{peer}                         the peer's signed record of what it uploaded where
    {run}/w{window:08d}/bcast-record/{peer}                   the peer's signed record of a broadcast it sent
    {run}/w{window:08d}/evidence/{peer}                       miners' signed headers the peer was served and refused

In a validator's bucket::

    {run}/w{window:08d}/report/{validator}                    the validator's signed per-window report

**Key tags.** A miner's bucket is writable by anyone holding its public key, so a key anyone can compute could be
taken (squatted) before its writer gets there. Keys that others write into a miner's bucket therefore end in a
*tag*: the writer's sr25519 signature over the key's run, window, segment, role, writer and the bucket's owner
(:func:`make_tag`). Nobody can predict a tag (signatures are randomised) or forge one, and anyone can check it from
the key alone (:func:`tag_valid`), so readers drop junk keys without reading them, and a tag made for one miner's
bucket is refused in another's. The miner's outputs have no tag: the miner writes them itself, with its own
account's keys, and replaces anything else it finds at its own key.

Role first, then segment: each role's objects share a prefix, so a validator polling for outputs lists only
outputs, and a miner listing one segment's inputs lists only those. Zero-padded numbers make lexical order numeric
order, and a prefix per window lets retention delete a whole window with one listing.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from ..errors import KeyMismatch
from .names import check_hotkey, check_run_id
from .signing import Signer, verify

ROLES = ("in", "out", "record", "report", "bcast", "bcast-record", "evidence")
# Roles that belong to one segment and so carry ``s{segment}/`` in their key.
SEGMENTED = ("in", "out", "bcast")
# Roles others write into a miner's bucket: their keys end in the writer's tag.
TAGGED = ("in", "bcast")
TAG_HEX = 128  # a 64-byte sr25519 signature, hex
_TAG = re.compile(r"[0-9a-f]{128}")
_KEY = re.compile(
    r"(?P<run>[^/]+)/w(?P<window>[0-9]{8})/(?P<role>in|out|record|report|bcast|bcast-record|evidence)/"
    r"(?:s(?P<segment>[0-9]{5})/)?(?P<hotkey>[^/]+)(?:/(?P<tag>[^/]+))?"
)


@dataclass(frozen=True)
class ObjectKey:
    run: str
    window: int
    role: str
    hotkey: str
    segment: int | None = None
    tag: str | None = None

    def __post_init__(self) -> None:
        check_run_id(self.run)
        check_hotkey(self.hotkey)
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}")
        if not 0 <= self.window < 10**8:
            raise ValueError(f"window out of range: {self.window}")
        segmented = self.role in SEGMENTED
        if segmented != (self.segment is not None):
            raise ValueError(f"role {self.role!r} {'needs' if segmented else 'takes no'} segment")
        if self.segment is not None and not 0 <= self.segment < 10**5:
            raise ValueError(f"segment out of range: {self.segment}")
        if self.tag is not None and (self.role not in TAGGED or not _TAG.fullmatch(self.tag)):
            raise ValueError(f"role {self.role!r} takes no tag, or the tag is not {TAG_HEX} hex digits")

    def __str__(self) -> str:
        seg = f"s{self.segment:05d}/" if self.segment is not None else ""
        tag = f"/{self.tag}" if self.tag is not None else ""
        return f"{window_prefix(self.run, self.window)}{self.role}/{seg}{self.hotkey}{tag}"

    @property
    def untagged(self) -> "ObjectKey":
        """The key without its tag: what an object's signed metadata names."""
        return replace(self, tag=None) if self.tag is not None else self

    @classmethod
    def parse(cls, key: str) -> "ObjectKey":
        """The key's parts; :class:`KeyMismatch` for anything that is not a protocol key (a tagged role without a
        well-formed tag included). Whether the tag is *genuine* is :func:`tag_valid`'s question."""
        m = _KEY.fullmatch(key)
        if not m:
            raise KeyMismatch(f"not a protocol key: {key[:200]!r}")
        seg = m["segment"]
        if (m["role"] in TAGGED) != (m["tag"] is not None):
            raise KeyMismatch(f"{'missing' if m['tag'] is None else 'unexpected'} key tag: {key[:200]!r}")
        try:
            return cls(m["run"], int(m["window"]), m["role"], m["hotkey"], int(seg) if seg is not None else None,
                       m["tag"])
        except ValueError as e:  # InvalidName is a ValueError
            raise KeyMismatch(f"bad key {key[:200]!r}: {e}") from None


def window_prefix(run: str, window: int) -> str:
    return f"{check_run_id(run)}/w{window:08d}/"


def role_prefix(run: str, window: int, role: str) -> str:
    """Prefix listing every object of one role in a window (all segments)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    return f"{window_prefix(run, window)}{role}/"


def segment_prefix(run: str, window: int, segment: int, role: str) -> str:
    """Prefix listing every object of one role (``in``, ``out`` or ``bcast``) for one segment."""
    if role not in SEGMENTED:
        raise ValueError(f"role {role!r} has no segments")
    return f"{role_prefix(run, window, role)}s{segment:05d}/"


def writer_prefix(run: str, window: int, segment: int, role: str, writer: str) -> str:
    """Prefix of every key ``writer`` may have under one segment of a tagged role."""
    return f"{segment_prefix(run, window, segment, role)}{check_hotkey(writer)}/"


def input_key(run: str, window: int, segment: int, peer: str, tag: str) -> ObjectKey:
    return ObjectKey(run, window, "in", peer, segment, tag)


def output_key(run: str, window: int, segment: int, miner: str) -> ObjectKey:
    return ObjectKey(run, window, "out", miner, segment)


def record_key(run: str, window: int, peer: str) -> ObjectKey:
    return ObjectKey(run, window, "record", peer)


def report_key(run: str, window: int, validator: str) -> ObjectKey:
    return ObjectKey(run, window, "report", validator)


def broadcast_key(run: str, window: int, segment: int, sender: str, tag: str) -> ObjectKey:
    """One segment of ``sender``'s broadcast, as hosted in a miner's bucket."""
    return ObjectKey(run, window, "bcast", sender, segment, tag)


def broadcast_record_key(run: str, window: int, sender: str) -> ObjectKey:
    """``sender``'s signed record of its broadcast, in its own bucket."""
    return ObjectKey(run, window, "bcast-record", sender)


def evidence_key(run: str, window: int, peer: str) -> ObjectKey:
    """``peer``'s signed evidence of the window: miners' output headers it was served and refused."""
    return ObjectKey(run, window, "evidence", peer)


# -- key tags -----------------------------------------------------------------------------------------------------

def _tag_message(run: str, window: int, segment: int, role: str, writer: str, owner: str) -> bytes:
    return f"mapreduce/v2/key|{run}|{window}|{segment}|{role}|{writer}|{owner}".encode()


def make_tag(signer: Signer, run: str, window: int, segment: int, role: str, owner: str) -> str:
    """A fresh tag for ``signer``'s object of ``role`` and ``segment`` in the bucket of ``owner`` (a miner)."""
    if role not in TAGGED:
        raise ValueError(f"role {role!r} takes no tag")
    return signer.sign(_tag_message(run, window, segment, role, signer.hotkey, check_hotkey(owner))).hex()


def tag_valid(key: ObjectKey, owner: str) -> bool:
    """Whether ``key``'s tag was made by its writer for the bucket of ``owner``; never raises."""
    if key.tag is None or key.segment is None:
        return False
    message = _tag_message(key.run, key.window, key.segment, key.role, key.hotkey, owner)
    return verify(key.hotkey, message, bytes.fromhex(key.tag))
