"""`SteppedChain`: the local chain with blocks produced on demand, so a benchmark measures work, not waiting.

A `LocalChain` produces blocks on a wall-clock schedule: a window's phases must be sized for the slowest case and
every role then idles until its deadline block. Here the benchmark produces the blocks itself (like a dev chain's
manual sealing): the upload deadline block the moment the last peer's upload returns, the reduce deadline block
the moment the last miner has written its outputs. Each block's timestamp is the wall time it was produced, so
lateness checks (``Last-Modified`` against deadline timestamps) work exactly as on the real clock. Registrations,
commitments and weights are the SQLite chain's own, shared with child processes through the file.
"""
from __future__ import annotations

import bisect
import os
import threading
import time
from collections.abc import Mapping

from .base import ChainError
from .local import LocalChain

__all__ = ["SteppedChain"]


class SteppedChain(LocalChain):
    """A `LocalChain` whose current block only moves when :meth:`advance_to` is called.

    ``block`` and ``stamps`` (block -> unix time it was produced) let a child process attach at the parent's
    position (:meth:`attach`); the child's chain then stays at that block.
    """

    poll_interval = 0.005

    def __init__(self, path: str | os.PathLike, *, _conn=None, block: int = 0,
                 stamps: Mapping[int, float] | None = None) -> None:
        super().__init__(path, _conn=_conn)
        self._step_lock = threading.Lock()
        self._block = block
        stamps = dict(stamps or {0: self.genesis_time})
        self._stamped = sorted(stamps)
        self._times = [stamps[b] for b in self._stamped]

    @classmethod
    def attach(cls, path: str | os.PathLike, block: int, stamps: Mapping[int, float]) -> "SteppedChain":
        """Open the chain in ``path`` frozen at ``block``, with the parent's block timestamps."""
        return cls(path, block=block, stamps=stamps)

    def __reduce__(self):
        return (type(self).attach, (str(self.path), self._block, self.stamps()))

    def stamps(self) -> dict[int, float]:
        """Every block this chain was advanced to, with the wall time it was produced."""
        with self._step_lock:
            return dict(zip(self._stamped, self._times))

    def advance_to(self, block: int) -> float:
        """Produce every block up to ``block`` now; returns their timestamp (a block already produced keeps its
        own)."""
        with self._step_lock:
            if block <= self._block:
                return self._times[bisect.bisect_left(self._stamped, block)] if block else self._times[0]
            now = max(time.time(), self._times[-1])
            self._stamped.append(block)
            self._times.append(now)
            self._block = block
            return now

    def current_block(self) -> int:
        return self._block

    def block_at(self, unix_time: float) -> int:
        with self._step_lock:
            i = bisect.bisect_right(self._times, unix_time)
            return self._stamped[i - 1] if i else 0

    def block_timestamp_unchecked(self, block: int) -> float:
        # Blocks skipped by one advance were all produced at that moment; future blocks are not known yet, so
        # their estimate is "now", which is only used by LocalChain.wait_for_block to pick a pause.
        with self._step_lock:
            i = bisect.bisect_left(self._stamped, block)
            return self._times[i] if i < len(self._stamped) else time.time()

    def wait_for_block(self, block: int, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._block < block:
            if deadline is not None and time.monotonic() > deadline:
                raise ChainError(f"block {block} not produced within {timeout}s")
            time.sleep(self.poll_interval)
        return self._block
