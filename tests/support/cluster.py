"""An in-process network for role and reliability tests: a real local chain, the real embedded S3 server, real keys.

Roles run as asyncio tasks in the test's process (the swarm test runs them as processes). Windows are 16 blocks:
4 to upload, 10 to reduce (the reduce phase starts with the ~1.25 s settling wait, windows.settle_time); the clock
skew allowance is 0: chain, S3 server and roles share one clock.

The chain is a wall-clock `LocalChain` (blocks every ``block_time`` s), or with ``stepped=True`` a `SteppedChain`
whose blocks the test produces: ``Cluster.drive(window)`` (tests/support/driver.py) steps it through a window as
each phase's work is done, so no role races the clock and no test idles until a deadline.
"""
from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field, replace

import pytest
import torch

from mapreduce.chain.local import LocalChain
from mapreduce.chain.stepped import SteppedChain
from mapreduce.directory import BucketLocation
from mapreduce.network import Network, StorePool
from mapreduce.wire.signing import Signer
from mapreduce.spec import RunSpec, TensorSpec
from mapreduce.windows import WindowConfig
from storage import MemoryS3, RetryConfig, TransferConfig, TransferStats
from tests.support.driver import WindowDriver

_run_ids = itertools.count()
PUBLIC_KEYS = ("MRTESTPUBLICKEY00000", "test-public-secret-not-the-account-key")


@dataclass
class Cluster:
    spec: RunSpec
    chain: LocalChain
    pool: StorePool
    s3_endpoint: str
    signers: dict[str, list[Signer]] = field(default_factory=dict)
    nets: list[Network] = field(default_factory=list)
    drivers: list[asyncio.Task] = field(default_factory=list)
    memory: MemoryS3 | None = None  # the in-memory server, with ``store="memory"``

    def network(self, signer: Signer, pool: StorePool | None = None) -> Network:
        net = Network(self.spec, self.chain, signer, pool or self.pool, chain_poll=0.02)
        self.nets.append(net)
        return net

    def bucket_of(self, role: str, i: int) -> str:
        return f"{self.spec.run_id}-{role}-{i}".lower()

    async def join(self, role: str, i: int, own_pool: bool = False, stats: TransferStats | None = None) -> Network:
        """Register, create the bucket, commit it; return the participant's network view. ``own_pool``: a store
        pool of its own, so its requests are counted apart from everyone else's (``net.pool.stats``); ``stats``:
        that pool's counters (implies ``own_pool``)."""
        signer = self.signers[role][i]
        net = self.network(signer, self.pool.sibling(stats) if own_pool or stats is not None else None)
        # Published keys distinct from the account's, as on a real network (the embedded server accepts any key).
        loc = BucketLocation({"miners": "miner", "peers": "peer", "validators": "validator"}[role],
                             self.bucket_of(role, i), self.s3_endpoint, *PUBLIC_KEYS)
        await (await net.pool.own_store()).create_bucket(loc.bucket)
        await net.commit(loc)
        return net

    def drive(self, window: int, **kw) -> asyncio.Task:
        """Start producing ``window``'s blocks as its work is done (:class:`~tests.support.driver.WindowDriver`,
        whose options ``kw`` are); the task ends at the window's last block (await it, or put it in the test's
        gather). A stepped cluster only; one still running when the test ends is cancelled."""
        task = asyncio.ensure_future(WindowDriver(self, window, **kw).run())
        self.drivers.append(task)
        return task

    async def next_window(self, margin_blocks: int = 1) -> int:
        """A window whose anchor block (the directory's and the plan's) is still ahead, so every join so far is in
        its directory."""
        block = self.chain.current_block()
        return self.spec.windows.first_window_anchored_after(block + margin_blocks - 1)


def make_spec(run_id: str, numel: int = 50_000, segments: int = 4, redundancy: int = 2,
              wire_dtype: str = "float32", windows: WindowConfig | None = None) -> RunSpec:
    return RunSpec(run_id, (TensorSpec("w", (numel // 10, 10)),), segments=segments, redundancy=redundancy,
                   wire_dtype=wire_dtype, windows=windows or WindowConfig(16, 4, 10, clock_skew_seconds=0.0))


@pytest.fixture
async def cluster_factory(embedded_s3, tmp_path):
    """``await make(peers=3, miners=2, validators=1, **spec_kw)`` -> Cluster, cleaned up after the test."""
    made: list[Cluster] = []

    async def make(peers: int = 3, miners: int = 2, validators: int = 1, block_time: float = 0.1,
                   extra_registered: int = 0, endpoint: str | None = None, transfer: TransferConfig | None = None,
                   retry: RetryConfig | None = None, store: str = "s3", stepped: bool = False,
                   **spec_kw) -> Cluster:
        """``endpoint``: reach S3 through this URL instead (a fault proxy); ``transfer``/``retry``: storage knobs;
        ``store="memory"``: an in-memory S3 (storage/memory.py: the real ObjectStore over an in-memory transport)
        instead of the embedded HTTP server, for role tests that are not about HTTP. ``stepped``: a `SteppedChain`
        at block 0 whose blocks only ``Cluster.drive`` (or ``chain.advance_to``) produces; ``block_time`` is
        then unused."""
        n = next(_run_ids)
        run_id = f"t{n}-{tmp_path.name[-12:]}".replace("_", "-").lower()
        spec = make_spec(run_id, **spec_kw)
        path = tmp_path / f"chain{n}.sqlite"
        chain = (SteppedChain.create(path, netuid=1) if stepped
                 else LocalChain.create(path, netuid=1, block_time=block_time))
        signers = {role: [Signer.from_uri(f"//{run_id}/{role}/{i}") for i in range(count)]
                   for role, count in (("peers", peers), ("miners", miners), ("validators", validators),
                                       ("outsiders", extra_registered))}
        for role, group in signers.items():
            for s in group:
                chain.register(s.hotkey, stake=100.0 if role == "validators" else 0.0,
                               validator_permit=role == "validators")
        memory = MemoryS3() if store == "memory" else None
        config = memory.config() if memory else embedded_s3.config()
        if endpoint:
            config = replace(config, endpoint_url=endpoint)
        pool = StorePool(config, transfer, retry, store_factory=memory.store if memory else None)
        c = Cluster(spec, chain, pool, config.endpoint_url, signers, memory=memory)
        made.append(c)
        return c

    yield make
    failed: list[BaseException] = []
    for c in made:
        failed += [t.exception() for t in c.drivers if t.done() and not t.cancelled() and t.exception()]
        for task in c.drivers:
            task.cancel()
        await asyncio.gather(*c.drivers, return_exceptions=True)
        await c.pool.close()
        for net in c.nets:
            if net.pool is not c.pool:
                await net.pool.close()
    if failed:
        raise failed[0]


def peer_gradients(spec: RunSpec, peers: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{t.name: torch.randn(t.shape, generator=g) for t in spec.tensors} for _ in range(peers)]
