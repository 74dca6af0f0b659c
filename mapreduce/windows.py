"""Block windows: the protocol's clock, derived from the chain alone.

``window = block // blocks_per_window``. Each window starts with an upload phase (peers write their segments),
then a reduce phase (miners write reduced slices); the rest of the window is for downloads and validation, which
overlap the next window's upload phase. Every participant computes the same phases from the block number, and
judges lateness by the timestamp the chain records for the deadline block, so no participant's clock decides.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WindowConfig:
    """Window length and phase deadlines, in blocks."""

    blocks_per_window: int = 10
    upload_blocks: int = 4
    reduce_blocks: int = 4
    # Seconds of tolerance when comparing a storage server's Last-Modified with a block timestamp: S3 stamps
    # objects with one-second resolution and the servers' clocks are not the chain's.
    clock_skew_seconds: float = 1.0
    # How far before its first block a window is anchored: its plan is seeded by the anchor block's hash and its
    # directory read as of that block. A block is final only some blocks behind the head (subtensor's GRANDPA
    # finalizes ~2 behind), and a reorg must never change a window's plan, so the anchor is far enough back to be
    # final when the window opens; processes also wait for it to be final before using it (network.py).
    finality_blocks: int = 3

    def __post_init__(self) -> None:
        if self.blocks_per_window < 2 or self.upload_blocks < 1 or self.reduce_blocks < 1:
            raise ValueError("windows need at least one block for upload and one for reduce")
        if self.upload_blocks + self.reduce_blocks > self.blocks_per_window:
            raise ValueError(
                f"upload_blocks + reduce_blocks ({self.upload_blocks + self.reduce_blocks}) "
                f"exceeds blocks_per_window ({self.blocks_per_window})"
            )
        if self.clock_skew_seconds < 0:
            raise ValueError("clock_skew_seconds must be >= 0")
        if not 0 <= self.finality_blocks <= self.blocks_per_window:
            raise ValueError(f"finality_blocks must be in 0..blocks_per_window ({self.blocks_per_window})")

    def window_of(self, block: int) -> int:
        return block // self.blocks_per_window

    def first_window_anchored_after(self, block: int) -> int:
        """The first window whose anchor block comes after ``block + 1``: whatever is on chain by then (a
        registration, a commitment submitted at ``block``, which lands in ``block + 1``) is in its directory, with a
        block to spare. Where processes that just joined agree to start."""
        return self.window_of(block + 1 + self.finality_blocks) + 1

    def phases(self, window: int) -> "Phases":
        start = window * self.blocks_per_window
        upload_deadline = start + self.upload_blocks
        return Phases(
            window=window,
            anchor_block=max(0, start - self.finality_blocks),
            start_block=start,
            upload_deadline=upload_deadline,
            reduce_deadline=upload_deadline + self.reduce_blocks,
            end_block=start + self.blocks_per_window,
        )


@dataclass(frozen=True)
class Phases:
    """The blocks that bound one window's phases.

    - ``anchor_block``: ``finality_blocks`` before the start. The plan is seeded by this block's hash and the
      directory (who is registered, where their buckets are) read as of this block, both once it is final: known
      to all, and the same for all, when the window opens.
    - ``start_block``: the upload phase opens.
    - ``upload_deadline``: inputs must exist, by the storage server's clock, no later than this block's timestamp.
    - ``reduce_deadline``: outputs likewise; the hosting checks' sampling seed is this block's hash (read once it
      is final), which nobody knows before the deadline.
    """

    window: int
    anchor_block: int
    start_block: int
    upload_deadline: int
    reduce_deadline: int
    end_block: int

    @property
    def plan_seed_block(self) -> int:
        return self.anchor_block

    @property
    def sample_seed_block(self) -> int:
        return self.reduce_deadline

    def phase_at(self, block: int) -> str:
        """``"upload"``, ``"reduce"``, ``"download"``, or ``"before"``/``"after"`` outside this window."""
        if block < self.start_block:
            return "before"
        if block < self.upload_deadline:
            return "upload"
        if block < self.reduce_deadline:
            return "reduce"
        if block < self.end_block:
            return "download"
        return "after"


# S3 stamps Last-Modified to the second, so an object written at t carries a stamp in (t - 1, t].
LAST_MODIFIED_RESOLUTION = 1.0
# Allowance for the lister's clock against the storage server's (both NTP-synced in practice).
SETTLE_MARGIN = 0.25


def on_time(written_at: float, deadline_timestamp: float, skew: float) -> bool:
    """Whether an object the storage server stamped at ``written_at`` (unix seconds) counts for a deadline."""
    return written_at <= deadline_timestamp + skew


def settle_time(deadline_timestamp: float, skew: float) -> float:
    """When every object that will count for a deadline is visible: one that counts has a stamp no later than
    ``deadline + skew``, so it was written before ``deadline + skew + 1`` s. Miners and validators list a
    deadline's objects only after this time (by their clock), or they could miss an input that counts."""
    return deadline_timestamp + skew + LAST_MODIFIED_RESOLUTION + SETTLE_MARGIN


def from_the_future(written_at: float, now: float, skew: float) -> bool:
    """Whether a ``Last-Modified`` stamp is impossible: later than the observer's own clock now (plus the clock
    allowance and S3's one-second resolution). Only a server that lies makes one, and the owner of the bucket it
    serves answers for it; none of that server's stamps can make an input late."""
    return written_at > now + skew + LAST_MODIFIED_RESOLUTION
