"""How long our own process kept us from running: the part of a delay that is ours, not a remote party's.

A validator judges timing by when *it* saw something: an output counts only if the validator had read its header
by the reduce deadline. When the validator's own event loop is starved (a busy host, a blocking call, the GIL held
by another thread), it lists and asks late, and an honest miner would pay for the validator's slowness.
:class:`LoopLag` measures that slowness from inside: a task that asks to wake every ``tick`` seconds and records
each wake-up that came late. A remote party cannot make those wake-ups late by holding an answer (a held request
leaves the loop idle and the ticks on time). A late read that our own stalls may explain
(mapreduce/validator.py, ``Observation.own_stall``) proves nothing either way: the validator drops that check
rather than score it 0, and never credits it (an endpoint may have held the read while we stalled).
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass
class LoopLag:
    """Record the event loop's stalls while used as a context manager (``with lag:`` inside a running loop);
    :meth:`within` sums those inside an interval.

    ``tick``: how often to wake; ``threshold``: lateness below it is scheduling noise, not a stall. Times are
    ``time.time()`` seconds, as the roles stamp what they see.
    """

    tick: float = 0.02
    threshold: float = 0.01
    stalls: list[tuple[float, float]] = field(default_factory=list)  # (start, end) of each stall, oldest first

    async def run(self) -> None:
        """Measure until cancelled."""
        while True:
            asked = time.time()
            await asyncio.sleep(self.tick)
            woke = time.time()
            late = woke - asked - self.tick
            if late > self.threshold:
                self.stalls.append((woke - late, woke))

    def within(self, start: float, end: float) -> float:
        """Seconds of stall between ``start`` and ``end``: how much of that interval our loop was not running."""
        total = 0.0
        for a, b in self.stalls:
            total += max(0.0, min(b, end) - max(a, start))
        return total

    def __enter__(self) -> "LoopLag":
        self._task = asyncio.get_running_loop().create_task(self.run())
        return self

    def __exit__(self, *exc: object) -> None:
        self._task.cancel()
