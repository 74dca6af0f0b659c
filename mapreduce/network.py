"""What every role shares: the run spec, the chain, the buckets of others, and this process's hotkey.

Chain calls are synchronous (the SDK is); they run in worker threads so the event loop never blocks. Directory
and plan are cached per window: within a window everyone must act on the same snapshot, and reading the
metagraph once per window is also what the real chain's rate limits want.

Two kinds of bucket access, never mixed up: a process reaches **its own bucket** with its own account's keys and
endpoint (``MR_S3_*``: it may create, write and replace objects there), and **everyone else's** through the
location they published on chain, with the scoped keys they published or, when they published none, with
anonymous requests. The account's keys are never sent to an endpoint someone else chose.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from typing import Awaitable, Callable, TypeVar

from storage import ObjectStore, RetryConfig, S3Config, TransferConfig, TransferStats

from . import seeds
from .chain.base import Chain, ChainError
from .directory import LEGACY, Admission, BucketLocation, Directory
from .errors import PhaseOver
from .kernels import warm_math_kernels
from .plan import Plan, Segment, make_plan
from .spec import RunSpec
from .windows import Phases, settle_time
from .wire.codec import Expect
from .wire.expect import input_expect, output_expect
from .wire.signing import Signer

log = logging.getLogger(__name__)

T = TypeVar("T")


StoreFactory = Callable[[S3Config, TransferConfig, RetryConfig, TransferStats], ObjectStore]
"""Makes the (unopened) store for one endpoint and credentials: ``ObjectStore`` itself by default, or another
transport behind the same interface (``storage.MemoryS3.store``: an in-memory S3, for benchmarks at scale)."""


class StorePool:
    """One :class:`ObjectStore` per endpoint and credentials, opened on first use, closed together.

    ``stats`` adds up the bytes and requests of all of them: what this process moved (for metrics and progress).
    """

    def __init__(self, default: S3Config, transfer: TransferConfig | None = None, retry: RetryConfig | None = None,
                 *, store_factory: StoreFactory | None = None, stats: TransferStats | None = None):
        """``default``: this process's own endpoint and account keys (its own bucket is reached with them).
        ``store_factory``: the transport (default: :class:`ObjectStore`, real HTTP); ``stats``: counters to add
        this pool's traffic to (default: new ones)."""
        self.default = default
        self._transfer = transfer or TransferConfig()
        self._retry = retry or RetryConfig()
        self._factory: StoreFactory = store_factory or ObjectStore
        self._stores: dict[tuple[str | None, str, str, str | None, str | None, bool], ObjectStore] = {}
        self.stats = stats if stats is not None else TransferStats()
        self._lock = asyncio.Lock()

    def sibling(self, stats: TransferStats | None = None) -> "StorePool":
        """A new pool with this one's configuration and transport but its own stores and counters: another
        participant's, as on a separate machine."""
        return StorePool(self.default, self._transfer, self._retry, store_factory=self._factory, stats=stats)

    @property
    def transfer(self) -> TransferConfig:
        return self._transfer

    @property
    def retry(self) -> RetryConfig:
        return self._retry

    def config_for(self, loc: BucketLocation) -> S3Config:
        """How to reach another party's bucket: where its commitment's provider says (AWS: botocore's endpoint for
        the committed region; R2: the account's endpoint, region auto; another S3: the committed endpoint, path
        style if flagged; see :class:`BucketLocation`), with its published keys, or anonymously when it published
        none. Never with our account's keys. Only an ``mr1`` location falls back on our own endpoint (when it has
        none), region and addressing style, as that format meant."""
        if loc.provider == LEGACY:
            base = replace(self.default, endpoint_url=loc.endpoint or self.default.endpoint_url)
        else:
            # Nothing of ours: the same commitment must reach the same place from every reader.
            base = replace(self.default, endpoint_url=loc.client_endpoint, region=loc.client_region,
                           addressing_style=loc.addressing_style)
        if loc.access_key_id:
            return replace(base, access_key_id=loc.access_key_id, secret_access_key=loc.secret_access_key,
                           session_token=None, anonymous=False)
        return replace(base, access_key_id=None, secret_access_key=None, session_token=None, anonymous=True)

    async def own_store(self) -> ObjectStore:
        """The store for our own bucket: our endpoint, our account's keys."""
        return await self._open(self.default)

    async def store_for(self, loc: BucketLocation) -> ObjectStore:
        """The store for another party's bucket (see :meth:`config_for`)."""
        return await self._open(self.config_for(loc))

    async def _open(self, cfg: S3Config) -> ObjectStore:
        # The region and addressing style too: two AWS buckets in different regions share endpoint_url None.
        ident = (cfg.endpoint_url, cfg.region, cfg.addressing_style, cfg.access_key_id, cfg.secret_access_key,
                 cfg.anonymous)
        async with self._lock:
            store = self._stores.get(ident)
            if store is None:
                store = self._factory(cfg, self._transfer, self._retry, self.stats)
                await store.__aenter__()
                self._stores[ident] = store
            return store

    async def close(self) -> None:
        async with self._lock:
            stores, self._stores = list(self._stores.values()), {}
        for s in stores:
            await s.__aexit__(None, None, None)


@dataclass(frozen=True)
class Bucket:
    """A participant's bucket, opened: the store that reaches it, its name, and its owner's hotkey (key tags of
    objects others write into a miner's bucket are made for that owner: mapreduce/wire/keys.py)."""

    store: ObjectStore
    name: str
    owner: str = ""


class Network:
    def __init__(self, spec: RunSpec, chain: Chain, signer: Signer, pool: StorePool,
                 admission: Admission | None = None, chain_signer: object | None = None,
                 chain_poll: float | None = None):
        """``chain_signer`` signs chain writes: the bittensor ``Wallet`` on a real chain (the SDK needs it), or by
        default the hotkey ``Keypair`` (enough for the local chain). ``admission`` is this process's own lists; the
        run spec's apply on top (:class:`~mapreduce.directory.Admission`)."""
        # Before any of our worker threads runs torch next to the program's own: VML's first calls race (kernels.py).
        warm_math_kernels()
        # Both together, checked now: two allow lists with nothing in common is a configuration error, not a run.
        self.policy = Admission.from_spec(spec).narrow(admission or Admission())
        self.spec = spec
        self._chain_signer = chain_signer if chain_signer is not None else signer.keypair
        self.chain = chain
        self.signer = signer
        self.pool = pool
        self.admission = admission
        self._poll = chain_poll if chain_poll is not None else min(1.0, getattr(chain, "poll_interval", 1.0))
        self._directories: dict[int, Directory] = {}
        self._plans: dict[int, Plan] = {}
        self._final_hashes: dict[int, str] = {}
        # The first block whose directory holds our own commitment (0: it was on chain before we started).
        self._listed_from = 0

    @property
    def hotkey(self) -> str:
        return self.signer.hotkey

    @property
    def chain_signer(self) -> object:
        return self._chain_signer

    # -- the chain, off the event loop --------------------------------------------------------------------------

    async def block(self) -> int:
        return await asyncio.to_thread(self.chain.current_block)

    async def wait_for_block(self, block: int) -> int:
        """Wait for ``block``; returns the current block."""
        return await self._wait_until(self.chain.current_block, block, "block number")

    async def wait_for_final(self, block: int) -> int:
        """Wait for ``block`` to be final (:meth:`Chain.finalized_block`); returns the finalized block."""
        return await self._wait_until(self.chain.finalized_block, block, "finalized block")

    async def _wait_until(self, read: Callable[[], int], block: int, what: str) -> int:
        """Poll ``read`` until it reaches ``block``. A chain that cannot be read meanwhile (a node restarting, a
        dropped connection) is waited out, logged once per outage, not the end of the caller."""
        outage = None
        while True:
            try:
                now = await asyncio.to_thread(read)
            except ChainError as e:
                if outage is None:
                    outage = time.monotonic()
                    log.warning("cannot read the chain's %s (%s); retrying", what, e)
                await asyncio.sleep(max(self._poll, 1.0))
                continue
            if outage is not None:
                log.info("chain readable again after %.0fs", time.monotonic() - outage)
                outage = None
            if now >= block:
                return now
            await asyncio.sleep(self._poll)

    def phase_end(self, block: int) -> asyncio.Task:
        """A task that finishes when the chain reaches ``block``: one shared cutoff for many pieces of work
        (:meth:`within`). Cancel it when done with it."""
        return asyncio.ensure_future(self.wait_for_block(block))

    @staticmethod
    async def within(cutoff: asyncio.Future, work: Awaitable[T]) -> T:
        """``await work``, unless ``cutoff`` finishes first: then ``work`` is cancelled and
        :class:`~mapreduce.errors.PhaseOver` raised. Every phase of a window has a last block; nothing another
        party does (a stalling endpoint, a trickling body) may keep a role in a phase past it."""
        task = asyncio.ensure_future(work)
        try:
            await asyncio.wait({task, cutoff}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                return task.result()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise PhaseOver("still running at the end of its phase; stopped")
        finally:
            if not task.done():
                task.cancel()

    async def before_block(self, block: int, work: Awaitable[T]) -> T:
        """:meth:`within` the phase ending at ``block``."""
        cutoff = self.phase_end(block)
        try:
            return await self.within(cutoff, work)
        finally:
            cutoff.cancel()
            await asyncio.gather(cutoff, return_exceptions=True)

    async def next_window(self, margin_blocks: int) -> int:
        """The first window with at least ``margin_blocks`` of its upload phase left whose directory lists our own
        commitment; waits for its first block."""
        block = await self.block()
        window = self.spec.windows.window_of(block)
        if block >= self.phases(window).upload_deadline - margin_blocks:
            window += 1
        while self.phases(window).anchor_block < self._listed_from:  # a window drawn before we were listed
            window += 1
        await self.wait_for_block(self.phases(window).start_block)
        return window

    async def settle(self, deadline_block: int) -> float:
        """Wait until every object that counts for the deadline is visible; returns the deadline's timestamp."""
        deadline = await self.block_timestamp(deadline_block)
        delay = settle_time(deadline, self.spec.windows.clock_skew_seconds) - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        return deadline

    async def block_seconds(self, block: int, span: int = 10) -> float:
        """Seconds per block around ``block`` (which must exist), from the chain's own timestamps."""
        first = max(0, block - span)
        if first == block:
            return 1.0
        t1, t0 = await asyncio.gather(self.block_timestamp(block), self.block_timestamp(first))
        return max(1e-3, (t1 - t0) / (block - first))

    async def final_block_hash(self, block: int) -> str:
        """``block``'s hash once it is final (waits for that), the only kind of hash a seed may use: a hash nearer
        the head can still change in a reorg, and two processes would then draw different plans. Kept, since it
        never changes again."""
        known = self._final_hashes.get(block)
        if known is None:
            await self.wait_for_final(block)
            known = await asyncio.to_thread(self.chain.block_hash, block)
            if len(self._final_hashes) >= 64:
                self._final_hashes.pop(min(self._final_hashes))
            self._final_hashes[block] = known
        return known

    async def block_timestamp(self, block: int) -> float:
        return await asyncio.to_thread(self.chain.block_timestamp, block)

    def phases(self, window: int) -> Phases:
        return self.spec.windows.phases(window)

    async def commit(self, loc: BucketLocation) -> None:
        """Publish this process's bucket, unless the chain already holds exactly that."""
        text = loc.encode()
        current = (await asyncio.to_thread(self.chain.commitments)).get(self.hotkey)
        if current != text:
            await asyncio.to_thread(self.chain.commit, self._chain_signer, text)
            # The commitment lands in a block after the head we see now (a real chain's commit returns once it is
            # in a block, so not later than that): windows from the next block on list us (:meth:`directory`).
            self._listed_from = await self.block() + 1

    # -- per-window snapshots -------------------------------------------------------------------------------------

    async def directory(self, window: int) -> Directory:
        """The participants of ``window``: registrations and commitments as of the window's anchor block (a few
        blocks before its start; :class:`~mapreduce.windows.Phases`), so every process reads the same directory for
        it (and so computes the same plan) whenever it asks, and a hotkey that registers or commits later takes
        part from a later window. Asked before the anchor is final, the latest state, not kept (the plan itself
        always waits for the anchor)."""
        d = self._directories.get(window)
        if d is None:
            anchor = self.phases(window).anchor_block
            pinned = await asyncio.to_thread(self.chain.finalized_block) >= anchor
            at = anchor if pinned else None
            neurons, commitments = await asyncio.gather(asyncio.to_thread(self.chain.neurons, at),
                                                        asyncio.to_thread(self.chain.commitments, at))
            d = Directory.build(neurons, commitments, Admission.from_spec(self.spec), self.admission)
            if not pinned:
                return d
            self._directories = {w: v for w, v in self._directories.items() if w >= window - 2}
            self._directories[window] = d
        return d

    async def plan(self, window: int) -> Plan:
        """The window's plan, seeded by its anchor block's hash; waits for that block to be final."""
        p = self._plans.get(window)
        if p is None:
            block_hash = await self.final_block_hash(self.phases(window).plan_seed_block)
            directory = await self.directory(window)
            p = make_plan(self.spec, window, block_hash, directory.miners)
            self._plans = {w: v for w, v in self._plans.items() if w >= window - 2}
            self._plans[window] = p
        return p

    async def broadcast_plan(self, window: int, sender: str) -> Plan:
        """Which miners hold each segment of ``sender``'s broadcast in ``window``: the run's plan function over the
        same miners, seeded with ``broadcast|{sender}|{hash of the window's anchor block}``; waits for that block
        to be final."""
        block_hash = await self.final_block_hash(self.phases(window).plan_seed_block)
        directory = await self.directory(window)
        return make_plan(self.spec, window, seeds.broadcast_block(sender, block_hash), directory.miners)

    async def sample_seed(self, window: int) -> bytes:
        """Unknown to anyone before the window's reduce deadline: the deadline block's hash does not exist yet.
        Read once that block is final, so a reorg cannot give two validators different samples."""
        block_hash = await self.final_block_hash(self.phases(window).sample_seed_block)
        return seeds.sample_seed(self.spec.run_id, window, block_hash)

    async def bucket(self, window: int, hotkey: str) -> Bucket:
        """``hotkey``'s bucket as published on chain for ``window``; our own with our account's keys."""
        loc = (await self.directory(window)).location(hotkey)
        if hotkey == self.hotkey:
            return Bucket(await self.pool.own_store(), loc.bucket, hotkey)
        return Bucket(await self.pool.store_for(loc), loc.bucket, hotkey)

    # -- what readers expect ---------------------------------------------------------------------------------------

    def segment_expect(self, segment: Segment, allowed) -> Expect:
        """An input of one segment (:func:`mapreduce.wire.expect.input_expect`)."""
        return input_expect(self.spec, segment, allowed)

    def output_expect(self, segment: Segment, miner: str, max_inputs: int) -> Expect:
        """A miner's output (:func:`mapreduce.wire.expect.output_expect`)."""
        return output_expect(self.spec, segment, miner, max_inputs)
