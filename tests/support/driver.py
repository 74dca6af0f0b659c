"""Produce one window's blocks on a `SteppedChain` when the work of each phase is done, not on a schedule.

On a wall-clock chain a role test races the clock (a loaded machine makes a role miss a deadline) and idles until
every deadline block. :class:`WindowDriver` instead advances the chain block by block with a short tick, and holds
the two blocks that end work:

- the upload deadline, until every expected peer's inputs are in its miners' buckets (one per segment and replica
  of the window's plan) and its signed upload record is in its own bucket (written after its last input landed, so
  inputs planted under its name do not count as its upload);
- the reduce deadline, until the miners' listings are final (`mapreduce.windows.settle_time` of the upload
  deadline: no honest role writes an output before), then until every expected miner's outputs are in its bucket,
  and then a grace: ``read_grace`` seconds when a validator runs (it polls outputs every
  ``ValidatorConfig.poll_interval`` and must read each header before the deadline), else a few ticks (the miner
  reads the block once its writes return).

What it waits for is observed from outside, by listing the buckets through the cluster's store pool; a test adds
its own conditions with ``uploaded``/``reduced`` (callables returning a bool, or an awaitable of one). After
``timeout`` seconds in one hold (the reduce hold's counted from the settle time) the block is produced anyway (and
the phase noted in ``timed_out``), so a test that expects something to be missing still ends. Every block is
stamped with the wall time it was produced, so the roles' lateness and settle-time rules work as on a real chain.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from mapreduce.chain.stepped import SteppedChain
from mapreduce.errors import KeyMismatch
from mapreduce.network import Network
from mapreduce.plan import Plan
from mapreduce.validator import ValidatorConfig
from mapreduce.wire import keys
from mapreduce.wire.signing import Signer
from mapreduce.windows import settle_time

if TYPE_CHECKING:
    from tests.support.cluster import Cluster

log = logging.getLogger(__name__)

Condition = Callable[[], bool | Awaitable[bool]]

# Four polls of a validator's outputs: it lists them at most one poll after they appear, then reads each header.
READ_GRACE = 4 * ValidatorConfig().poll_interval


class WindowDriver:
    """Drive ``window`` of ``cluster`` (on a `SteppedChain`) from the current block to the window's last block.

    ``peers``/``miners``: hotkeys expected to upload / to write their outputs (default: all the cluster's peers /
    miners; pass ``()`` when none does). ``validator``: a validator observes the window, so hold the reduce
    deadline ``read_grace`` s after the last output appears. ``unreachable``: miners whose buckets peers cannot
    write to (a stalling endpoint): the upload hold does not wait for inputs there, nor for the peers' upload
    records (a peer writes its record once every upload ended, here at the deadline). ``vanishing``: miners whose
    buckets lose inputs as they land (a miner deleting them): the upload hold does not wait for inputs there, but
    still for the records. ``tick``: seconds between blocks, and between looks at the buckets while holding a
    deadline.
    """

    def __init__(self, cluster: "Cluster", window: int, *, peers: Iterable[str] | None = None,
                 miners: Iterable[str] | None = None, validator: bool = False, unreachable: Iterable[str] = (),
                 vanishing: Iterable[str] = (), tick: float = 0.02,
                 timeout: float = 60.0, read_grace: float = READ_GRACE, uploaded: Condition | None = None,
                 reduced: Condition | None = None) -> None:
        if not isinstance(cluster.chain, SteppedChain):
            raise TypeError("a WindowDriver needs a cluster on a SteppedChain (cluster_factory(stepped=True))")
        self.cluster = cluster
        self.chain: SteppedChain = cluster.chain
        self.window = window
        self.phases = cluster.spec.windows.phases(window)
        self.peers = [s.hotkey for s in cluster.signers["peers"]] if peers is None else list(peers)
        self.miners = [s.hotkey for s in cluster.signers["miners"]] if miners is None else list(miners)
        self.validator = validator
        self.unreachable = set(unreachable)
        self.vanishing = set(vanishing)
        self.tick = tick
        self.timeout = timeout
        self.read_grace = read_grace
        self.uploaded = uploaded
        self.reduced = reduced
        self.timed_out: list[str] = []  # the phases whose hold ran out (their deadline was produced anyway)
        self._buckets = {s.hotkey: cluster.bucket_of(role, i)
                         for role, group in cluster.signers.items() for i, s in enumerate(group)}
        # A view of the network of our own (the plan needs one), with no role and no bucket.
        self._net = Network(cluster.spec, self.chain, Signer.from_uri("//window-driver"), cluster.pool,
                            chain_poll=tick)
        self._plan: Plan | None = None
        self._outputs_at: float | None = None

    async def run(self) -> list[str]:
        """Produce every block up to the window's last; returns :attr:`timed_out`."""
        p = self.phases
        await self._tick_to(p.start_block)
        self._plan = await self._net.plan(self.window)
        await self._tick_to(p.upload_deadline - 1)
        await self._hold("upload", self._uploads_done, self.uploaded)
        stamp = self._produce(p.upload_deadline)
        await self._tick_to(p.reduce_deadline - 1)
        # No honest role writes an output before its input listing is final; the hold's timeout starts after.
        settled = settle_time(stamp, self.cluster.spec.windows.clock_skew_seconds)
        await asyncio.sleep(max(0.0, settled - time.time()))
        await self._hold("reduce", self._outputs_done, self.reduced)
        self._produce(p.reduce_deadline)
        await self._tick_to(p.end_block)
        return self.timed_out

    # -- blocks -----------------------------------------------------------------------------------------------------

    def _produce(self, block: int) -> float:
        return self.chain.advance_to(block)

    async def _tick_to(self, block: int) -> None:
        while self.chain.current_block() < block:
            await asyncio.sleep(self.tick)
            self._produce(self.chain.current_block() + 1)

    async def _hold(self, phase: str, *conditions: Condition | None) -> None:
        give_up = time.monotonic() + self.timeout
        while True:
            if all([await _holds(c) for c in conditions if c is not None]):
                return
            if time.monotonic() > give_up:
                self.timed_out.append(phase)
                log.warning("window %d: %s deadline produced after waiting %.0fs for work that did not finish",
                            self.window, phase, self.timeout)
                return
            await asyncio.sleep(self.tick)

    # -- what the buckets hold --------------------------------------------------------------------------------------

    async def _keys(self, owner: str, role: str) -> set[keys.ObjectKey]:
        """The protocol keys of ``role`` for the window in ``owner``'s bucket."""
        store = await self.cluster.pool.own_store()
        found = set()
        for info in await store.list(self._buckets[owner], keys.role_prefix(self.cluster.spec.run_id, self.window,
                                                                             role)):
            try:
                found.add(keys.ObjectKey.parse(info.key))
            except KeyMismatch:
                continue
        return found

    async def _uploads_done(self) -> bool:
        plan = self._plan
        wanted = {(miner, seg.index, peer) for seg in plan.segments for miner in plan.miners_for(seg.index)
                  for peer in self.peers if miner not in self.unreachable | self.vanishing}
        have = {(miner, k.segment, k.hotkey) for miner in {m for m, _, _ in wanted}
                for k in await self._keys(miner, "in")}
        if not wanted <= have:
            return False
        if self.unreachable:
            return True
        for peer in self.peers:
            if keys.record_key(self.cluster.spec.run_id, self.window, peer) not in await self._keys(peer, "record"):
                return False
        return True

    async def _outputs_done(self) -> bool:
        for miner in self.miners:
            have = await self._keys(miner, "out")
            if any(keys.output_key(self.cluster.spec.run_id, self.window, seg.index, miner) not in have
                   for seg in self._plan.segments_for(miner)):
                return False
        if self._outputs_at is None:
            self._outputs_at = time.monotonic()
        grace = self.read_grace if self.validator else 5 * self.tick
        return time.monotonic() - self._outputs_at >= grace


async def _holds(condition: Condition) -> bool:
    result = condition()
    if inspect.isawaitable(result):
        result = await result
    return bool(result)
