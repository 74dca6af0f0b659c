"""Where the miners' outputs of one window are: one listing per miner per poll round, with backoff.

A reader that wants several segments from one miner asks once for all of them: the miner's outputs share the prefix
``{run}/w{window}/out/`` in its bucket (:mod:`mapreduce.wire.keys`), so one small listing per miner per round finds
every output it has written, instead of a listing per segment. Rounds start every ``poll_interval`` seconds and
back off (x1.5) to ``max_poll_interval`` while nothing new appears; a miner is polled only while some segment is
still wanted from it. After the reduce deadline the watch polls once more and closes: what it has not seen then
does not count.

Anyone holding a miner's public write key can put junk under that prefix, so a listing is capped; past the cap
the watch lists exactly the wanted keys instead (one listing per wanted segment: junk costs the reader a few more
requests, never a missed output).
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter

from storage import ListingTooLong, ObjectInfo, StorageError

from .errors import InvalidObject, NoBucketOnChain
from .listing import PER_WRITER_KEYS, cap_for
from .network import Network
from .plan import Plan
from .wire import keys
from .wire.keys import ObjectKey

log = logging.getLogger(__name__)


class OutputWatch:
    """The latest listing entry of each wanted ``(miner, segment)`` output of ``plan``'s window."""

    def __init__(self, net: Network, plan: Plan, miners: list[str], rejected: Counter, *, poll_interval: float,
                 max_poll_interval: float, timeout: float):
        self.net = net
        self.plan = plan
        self.rejected = rejected
        self.poll_interval = poll_interval
        self.max_poll_interval = max(poll_interval, max_poll_interval)
        self.timeout = timeout
        self.wanted: dict[str, set[int]] = {m: set() for m in miners}
        self.found: dict[tuple[str, int], ObjectInfo] = {}
        self.unreachable: set[str] = set()  # miners that could not be listed after the deadline
        self.closed = False
        self.rounds = 0
        self._round = asyncio.Event()
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}

    def want(self, miner: str, segment: int) -> None:
        self.wanted.setdefault(miner, set()).add(segment)

    def settle(self, segment: int) -> None:
        """The segment is decided: stop polling for it."""
        for segments in self.wanted.values():
            segments.discard(segment)

    def output(self, miner: str, segment: int) -> ObjectInfo | None:
        return self.found.get((miner, segment))

    async def next_round(self) -> None:
        """Wait until the current poll round ends (or the watch closes)."""
        if not self.closed:
            await self._round.wait()

    async def run(self) -> None:
        deadline = self.net.phases(self.plan.window).reduce_deadline
        interval = self.poll_interval
        try:
            while True:
                past = await self.net.block() >= deadline
                now = asyncio.get_running_loop().time()
                miners = [m for m, segments in self.wanted.items() if segments]
                # A miner whose listings fail is asked less and less often (its own backoff), except at the end.
                due = [m for m in miners if past or self._retry_at.get(m, 0.0) <= now]
                news = await asyncio.gather(*(self._poll(m, past) for m in due))
                self.rounds += 1
                if past or not miners:
                    return
                self._wake()
                interval = self.poll_interval if any(news) else min(self.max_poll_interval, interval * 1.5)
                await asyncio.sleep(interval)
        finally:
            self.closed = True
            self._wake()

    def _wake(self) -> None:
        self._round.set()
        self._round = asyncio.Event()

    async def _poll(self, miner: str, past_deadline: bool) -> bool:
        """One listing of ``miner``'s outputs; whether it showed anything new."""
        try:
            listing = await asyncio.wait_for(self._list(miner), self.timeout)
        except (StorageError, NoBucketOnChain, asyncio.TimeoutError) as e:
            failures = self._failures[miner] = self._failures.get(miner, 0) + 1
            self._retry_at[miner] = asyncio.get_running_loop().time() + min(
                self.max_poll_interval * 2, self.poll_interval * 2 ** failures)
            if past_deadline:
                self.unreachable.add(miner)
                self.rejected["unreachable"] += 1
                log.warning("window %d: miner %s unreachable: %s", self.plan.window, miner[:10],
                            str(e) or "timed out")
            return False
        self._failures.pop(miner, None)
        mine = {s.index for s in self.plan.segments_for(miner)}
        news = False
        for info in listing:
            try:
                k = ObjectKey.parse(info.key)
            except InvalidObject:
                continue
            if k.role != "out" or k.hotkey != miner or k.segment not in mine or k.window != self.plan.window:
                continue
            slot = (miner, k.segment)
            if slot not in self.found or self.found[slot].etag != info.etag:
                self.found[slot] = info
                news = True
        return news

    async def _list(self, miner: str) -> list[ObjectInfo]:
        run, window = self.net.spec.run_id, self.plan.window
        bucket = await self.net.bucket(window, miner)
        segments = self.plan.segments_for(miner)
        try:
            return await bucket.store.list(bucket.name, keys.role_prefix(run, window, "out"),
                                           max_keys=cap_for(len(segments)))
        except ListingTooLong:  # junk under out/: list exactly the keys still wanted
            found: list[ObjectInfo] = []
            for segment in sorted(self.wanted.get(miner, ())):
                key = str(keys.output_key(run, window, segment, miner))
                found += [i for i in await bucket.store.list(bucket.name, key, max_keys=PER_WRITER_KEYS)
                          if i.key == key]
            return found
