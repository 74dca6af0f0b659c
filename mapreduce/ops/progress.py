"""Progress displays: a live byte counter for a long-running process, and bars for finite jobs.

Both use tqdm and are on only where someone watches: when stderr is a terminal (``enabled=None``). Under pm2,
systemd or a pipe they print nothing, so logs stay one line per event. While a live display is on, log records
are routed through tqdm so they print above it instead of tearing it.
"""
from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from typing import IO, TypeVar

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from storage import TransferStats

T = TypeVar("T")


def _wanted(enabled: bool | None, file: IO[str]) -> bool:
    if enabled is not None:
        return enabled
    isatty = getattr(file, "isatty", None)
    return bool(isatty and isatty())


class TransferProgress:
    """A one-line display of the bytes a process moved, read from its :class:`TransferStats` every ``interval``.

    ``start()`` inside a running event loop, ``close()`` when done (idempotent).
    """

    def __init__(self, stats: TransferStats, desc: str, *, enabled: bool | None = None, interval: float = 0.5,
                 file: IO[str] | None = None):
        self.stats = stats
        self.desc = desc
        self.interval = interval
        self.file = file if file is not None else sys.stderr
        self.enabled = _wanted(enabled, self.file)
        self._bar: tqdm | None = None
        self._task: asyncio.Task | None = None
        self._redirect: AbstractContextManager | None = None

    def start(self) -> TransferProgress:
        if not self.enabled or self._bar is not None:
            return self
        self._bar = tqdm(desc=self.desc, unit="B", unit_scale=True, unit_divisor=1024, file=self.file,
                         dynamic_ncols=True, leave=False)
        self._redirect = logging_redirect_tqdm()
        self._redirect.__enter__()
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def refresh(self) -> None:
        """Bring the display up to date with the counters now."""
        if self._bar is None:
            return
        snap = self.stats.snapshot()
        moved = snap.bytes_sent + snap.bytes_received
        self._bar.update(moved - self._bar.n)
        calls = sum(op.calls for op in snap.operations.values())
        retries = sum(op.retries for op in snap.operations.values())
        errors = sum(sum(op.errors.values()) for op in snap.operations.values())
        self._bar.set_postfix_str(f"up {_size(snap.bytes_sent)}, down {_size(snap.bytes_received)}, {calls} calls, "
                                  f"{retries} retries, {errors} errors", refresh=True)

    async def _run(self) -> None:
        while True:
            self.refresh()
            await asyncio.sleep(self.interval)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._bar is not None:
            self.refresh()
            self._bar.close()
            self._bar = None
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None


def bar(items: Iterable[T], desc: str, *, total: int | None = None, unit: str = "obj",
        enabled: bool | None = None, file: IO[str] | None = None) -> Iterator[T]:
    """``items``, with a progress bar on a terminal (a report's downloads, a prune's deletions)."""
    out = file if file is not None else sys.stderr
    return iter(tqdm(items, desc=desc, total=total, unit=unit, file=out, disable=not _wanted(enabled, out),
                     leave=False, dynamic_ncols=True))


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
