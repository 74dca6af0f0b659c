"""The object key layout: the one place that knows where each object lives.

In a miner's bucket::

    {run}/w{window:08d}/s{segment:05d}/in/{peer_hotkey}       a peer's signed input for one segment
    {run}/w{window:08d}/s{segment:05d}/out/{miner_hotkey}     the miner's signed reduced slice
    {run}/w{window:08d}/s{segment:05d}/bcast/{sender_hotkey}  one segment of a peer's broadcast, signed by the sender

In a peer's bucket::

    {run}/w{window:08d}/record/{peer_hotkey}                  the peer's signed record of what it uploaded where
    {run}/w{window:08d}/bcast-record/{peer_hotkey}            the peer's signed record of a broadcast it sent

In a validator's bucket::

    {run}/w{window:08d}/report/{validator_hotkey}             the validator's per-window report (JSON)

Zero-padded windows and segments make lexical listing order equal numeric order, and a prefix per window lets
retention delete a whole window with one listing.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import KeyMismatch
from .names import check_hotkey, check_run_id

ROLES = ("in", "out", "record", "report", "bcast", "bcast-record")
# Roles that belong to one segment and so carry ``s{segment}/`` in their key.
SEGMENTED = ("in", "out", "bcast")
_KEY = re.compile(
    r"(?P<run>[^/]+)/w(?P<window>\d{8})/(?:s(?P<segment>\d{5})/)?"
    r"(?P<role>in|out|record|report|bcast|bcast-record)/(?P<hotkey>[^/]+)"
)


@dataclass(frozen=True)
class ObjectKey:
    run: str
    window: int
    role: str
    hotkey: str
    segment: int | None = None

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

    def __str__(self) -> str:
        seg = f"s{self.segment:05d}/" if self.segment is not None else ""
        return f"{window_prefix(self.run, self.window)}{seg}{self.role}/{self.hotkey}"

    @classmethod
    def parse(cls, key: str) -> "ObjectKey":
        m = _KEY.fullmatch(key)
        if not m:
            raise KeyMismatch(f"not a protocol key: {key[:200]!r}")
        seg = m["segment"]
        try:
            return cls(m["run"], int(m["window"]), m["role"], m["hotkey"], int(seg) if seg is not None else None)
        except ValueError as e:
            raise KeyMismatch(f"bad key {key[:200]!r}: {e}") from None


def window_prefix(run: str, window: int) -> str:
    return f"{check_run_id(run)}/w{window:08d}/"


def segment_prefix(run: str, window: int, segment: int, role: str) -> str:
    """Prefix listing every object of one role (``in``, ``out`` or ``bcast``) for one segment."""
    return f"{window_prefix(run, window)}s{segment:05d}/{role}/"


def input_key(run: str, window: int, segment: int, peer: str) -> ObjectKey:
    return ObjectKey(run, window, "in", peer, segment)


def output_key(run: str, window: int, segment: int, miner: str) -> ObjectKey:
    return ObjectKey(run, window, "out", miner, segment)


def record_key(run: str, window: int, peer: str) -> ObjectKey:
    return ObjectKey(run, window, "record", peer)


def report_key(run: str, window: int, validator: str) -> ObjectKey:
    return ObjectKey(run, window, "report", validator)


def broadcast_key(run: str, window: int, segment: int, sender: str) -> ObjectKey:
    """One segment of ``sender``'s broadcast, as hosted in a miner's bucket."""
    return ObjectKey(run, window, "bcast", sender, segment)


def broadcast_record_key(run: str, window: int, sender: str) -> ObjectKey:
    """``sender``'s signed record of its broadcast, in its own bucket."""
    return ObjectKey(run, window, "bcast-record", sender)
