"""What every role shares: the run spec, the chain, the buckets of others, and this process's hotkey.

Chain calls are synchronous (the SDK is); they run in worker threads so the event loop never blocks. Directory
and plan are cached per window: within a window everyone must act on the same snapshot, and reading the
metagraph once per window is also what the real chain's rate limits want.
"""
from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, replace

from storage import ObjectStore, RetryConfig, S3Config, TransferConfig, TransferStats

from .chain.base import Chain
from . import hashtree
from .codec import Expect, expected_object_bytes
from .directory import Admission, BucketLocation, Directory
from .plan import Plan, Segment, make_plan
from .signing import Signer
from .spec import RunSpec
from .windows import Phases, settle_time

WIRE_CODES = {"float32": "F32", "bfloat16": "BF16"}


class StorePool:
    """One :class:`ObjectStore` per endpoint and credentials, opened on first use, closed together.

    ``stats`` adds up the bytes and requests of all of them: what this process moved (for metrics and progress).
    """

    def __init__(self, default: S3Config, transfer: TransferConfig | None = None, retry: RetryConfig | None = None):
        self.default = default
        self._transfer = transfer or TransferConfig()
        self._retry = retry or RetryConfig()
        self._stores: dict[tuple[str | None, str | None, str | None], ObjectStore] = {}
        self.stats = TransferStats()
        self._lock = asyncio.Lock()

    def config_for(self, loc: BucketLocation) -> S3Config:
        cfg = self.default
        if loc.endpoint:
            cfg = replace(cfg, endpoint_url=loc.endpoint)
        if loc.access_key_id:
            cfg = replace(cfg, access_key_id=loc.access_key_id, secret_access_key=loc.secret_access_key)
        return cfg

    async def store_for(self, loc: BucketLocation) -> ObjectStore:
        cfg = self.config_for(loc)
        ident = (cfg.endpoint_url, cfg.access_key_id, cfg.secret_access_key)
        async with self._lock:
            store = self._stores.get(ident)
            if store is None:
                store = ObjectStore(cfg, self._transfer, self._retry, stats=self.stats)
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
    """A participant's bucket, opened: the store that reaches it and its name."""

    store: ObjectStore
    name: str


class Network:
    def __init__(self, spec: RunSpec, chain: Chain, signer: Signer, pool: StorePool,
                 admission: Admission | None = None, chain_signer: object | None = None,
                 chain_poll: float | None = None):
        """``chain_signer`` signs chain writes: the bittensor ``Wallet`` on a real chain (the SDK needs it), or by
        default the hotkey ``Keypair`` (enough for the local chain). ``admission`` is this process's own lists; the
        run spec's apply on top (:class:`~mapreduce.directory.Admission`)."""
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
        while True:
            now = await self.block()
            if now >= block:
                return now
            await asyncio.sleep(self._poll)

    async def next_window(self, margin_blocks: int) -> int:
        """The first window with at least ``margin_blocks`` of its upload phase left; waits for its first block."""
        block = await self.block()
        window = self.spec.windows.window_of(block)
        if block >= self.phases(window).upload_deadline - margin_blocks:
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

    async def block_hash(self, block: int) -> str:
        return await asyncio.to_thread(self.chain.block_hash, block)

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

    # -- per-window snapshots -------------------------------------------------------------------------------------

    async def directory(self, window: int) -> Directory:
        d = self._directories.get(window)
        if d is None:
            neurons, commitments = await asyncio.gather(asyncio.to_thread(self.chain.neurons),
                                                        asyncio.to_thread(self.chain.commitments))
            d = Directory.build(neurons, commitments, Admission.from_spec(self.spec), self.admission)
            self._directories = {w: v for w, v in self._directories.items() if w >= window - 2}
            self._directories[window] = d
        return d

    async def plan(self, window: int) -> Plan:
        """The window's plan; waits for the window's first block, whose hash seeds it."""
        p = self._plans.get(window)
        if p is None:
            seed_block = self.phases(window).plan_seed_block
            await self.wait_for_block(seed_block)
            directory = await self.directory(window)
            block_hash = await self.block_hash(seed_block)
            p = make_plan(self.spec, window, block_hash, directory.miners)
            self._plans = {w: v for w, v in self._plans.items() if w >= window - 2}
            self._plans[window] = p
        return p

    async def sample_seed(self, window: int) -> bytes:
        """Unknown to anyone before the window's reduce deadline: the deadline block's hash does not exist yet."""
        seed_block = self.phases(window).sample_seed_block
        await self.wait_for_block(seed_block)
        block_hash = await self.block_hash(seed_block)
        return hashlib.sha256(f"sample|{self.spec.run_id}|{window}|{block_hash}".encode()).digest()

    async def bucket(self, window: int, hotkey: str) -> Bucket:
        loc = (await self.directory(window)).location(hotkey)
        return Bucket(await self.pool.store_for(loc), loc.bucket)

    # -- what readers expect ---------------------------------------------------------------------------------------

    def segment_expect(self, segment: Segment, allowed) -> Expect:
        """An input of one segment: a single wire-dtype vector named ``data``."""
        tensors = {"data": (WIRE_CODES[self.spec.wire_dtype], (segment.numel,))}
        return Expect(tensors, allowed=allowed,
                      max_bytes=expected_object_bytes(tensors, header_slack=self.spec.max_header_bytes),
                      max_header_bytes=self.spec.max_header_bytes)

    def output_expect(self, segment: Segment, miner: str, max_inputs: int) -> Expect:
        """A miner's output: the reduced ``data`` and one ``proof`` row per data chunk and input (chunk-major)."""
        chunks = hashtree.leaf_count(segment.numel * self.spec.torch_wire_dtype.itemsize)
        tensors = {"data": (WIRE_CODES[self.spec.wire_dtype], (segment.numel,)),
                   "proof": ("U8", (chunks, None, hashtree.PROOF_BYTES))}
        largest = {"data": tensors["data"], "proof": ("U8", (chunks, max(1, max_inputs), hashtree.PROOF_BYTES))}
        return Expect(tensors, allowed=lambda h: h == miner,
                      max_bytes=expected_object_bytes(largest, header_slack=self.spec.max_header_bytes),
                      max_header_bytes=self.spec.max_header_bytes)
