"""A benchmark network in one process: the embedded S3 server (or the in-memory one), a `SteppedChain`, real keys
and real roles.

Like ``tests/support/cluster.py``, but outside pytest and with one `StorePool` (one HTTP connection pool) per
participant, as on separate machines. Every pool counts its bytes and requests, so a benchmark can add up what was
moved, and by whom.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mapreduce.directory import BucketLocation
from mapreduce.swarm.orchestrator import PUBLIC_KEY_ID, PUBLIC_SECRET
from mapreduce.miner import Miner, MinerConfig
from mapreduce.network import Network, StoreFactory, StorePool
from mapreduce.peer import Peer, PeerConfig
from mapreduce.wire.signing import Signer
from mapreduce.spec import RunSpec, TensorSpec
from mapreduce.validator import Validator, ValidatorConfig
from mapreduce.windows import WindowConfig
from storage import EmbeddedS3, MemoryS3, TransferConfig, TransferStats

from .chain import SteppedChain

__all__ = ["BenchCluster", "bench_spec"]

MiB = 1024 * 1024
_ROLES = {"peers": "peer", "miners": "miner", "validators": "validator"}


def bench_spec(run_id: str, numel: int, segments: int, redundancy: int, wire_dtype: str = "float32",
               clock_skew: float = 0.0) -> RunSpec:
    """One flat tensor of ``numel`` fp32 values; windows of 10 blocks (4 upload, 4 reduce), blocks are stepped.

    ``clock_skew`` is 0 by default: here the chain's timestamps and the S3 server's ``Last-Modified`` come from one
    clock, so the allowance for clocks apart (1 s in a default run spec) has nothing to cover. Miners still wait
    for S3's one-second timestamp resolution before their input listing is final (`mapreduce.windows.settle_time`).
    """
    cols = 1024 if numel % 1024 == 0 else 1
    return RunSpec(run_id, (TensorSpec("g", (numel // cols, cols)),), segments=segments, redundancy=redundancy,
                   wire_dtype=wire_dtype, windows=WindowConfig(10, 4, 4, clock_skew_seconds=clock_skew))


@dataclass
class BenchCluster:
    """Participants registered on one chain, each with its own connection pool. Build with :meth:`create`."""

    spec: RunSpec
    chain: SteppedChain
    s3: EmbeddedS3
    transfer: TransferConfig
    workdir: Path
    signers: dict[str, list[Signer]]
    nets: dict[str, list[Network]] = field(default_factory=dict)

    @classmethod
    async def create(cls, s3: EmbeddedS3 | MemoryS3, spec: RunSpec, workdir: Path, *, peers: int, miners: int,
                     validators: int = 1, transfer: TransferConfig | None = None,
                     store_factory: StoreFactory | None = None, stats: Callable[[], TransferStats] | None = None,
                     chain_poll: float | None = None) -> "BenchCluster":
        """Register everyone, create and commit their buckets; the chain stays at block 0 until stepped.

        ``store_factory``: the pools' transport (``MemoryS3.store`` for the in-memory server; default HTTP);
        ``stats``: makes each participant's counters; ``chain_poll``: how often waiting roles read the block."""
        workdir.mkdir(parents=True, exist_ok=True)
        chain = SteppedChain.create(workdir / f"{spec.run_id}.sqlite", netuid=1)
        signers = {role: [Signer.from_uri(f"//{spec.run_id}/{role}/{i}") for i in range(n)]
                   for role, n in (("peers", peers), ("miners", miners), ("validators", validators))}
        for role, group in signers.items():
            for s in group:
                chain.register(s.hotkey, stake=100.0 if role == "validators" else 0.0,
                               validator_permit=role == "validators")
        c = cls(spec, chain, s3, transfer or EmbeddedS3.transfer_config(), workdir, signers)
        for role, group in signers.items():
            c.nets[role] = []
            for i, s in enumerate(group):
                pool = StorePool(s3.config(), c.transfer, store_factory=store_factory,
                                 stats=stats() if stats is not None else None)
                net = Network(spec, chain, s, pool, chain_poll=chain_poll or chain.poll_interval)
                loc = BucketLocation(_ROLES[role], c.bucket_of(role, i), s3.endpoint_url, PUBLIC_KEY_ID, PUBLIC_SECRET)
                await (await net.pool.own_store()).create_bucket(loc.bucket)
                await net.commit(loc)
                c.nets[role].append(net)
        return c

    def bucket_of(self, role: str, i: int) -> str:
        # Short (e.g. "...-p3"): the bucket, the server's endpoint and the published keys share 128 bytes on chain.
        return f"{self.spec.run_id}-{role[0]}{i}".lower()

    def peers(self, config: PeerConfig = PeerConfig()) -> list[Peer]:
        return [Peer(n, self.bucket_of("peers", i), config) for i, n in enumerate(self.nets["peers"])]

    def miners(self, config: MinerConfig = MinerConfig()) -> list[Miner]:
        return [Miner(n, self.bucket_of("miners", i), config) for i, n in enumerate(self.nets["miners"])]

    def validators(self, config: ValidatorConfig = ValidatorConfig()) -> list[Validator]:
        return [Validator(n, self.bucket_of("validators", i), self.workdir / f"{self.spec.run_id}-v{i}.json", config)
                for i, n in enumerate(self.nets["validators"])]

    def bytes_moved(self) -> tuple[int, int]:
        """(sent, received) payload bytes over every participant's pool."""
        snaps = [n.pool.stats.snapshot() for group in self.nets.values() for n in group]
        return sum(s.bytes_sent for s in snaps), sum(s.bytes_received for s in snaps)

    async def object_sizes(self, window: int) -> dict[str, list[int]]:
        """Sizes of the window's objects in the miners' buckets, by role (``in``, ``out``)."""
        from mapreduce.wire.keys import ObjectKey, window_prefix

        sizes: dict[str, list[int]] = {}
        for i, net in enumerate(self.nets["miners"]):
            store = await net.pool.own_store()
            for info in await store.list(self.bucket_of("miners", i), window_prefix(self.spec.run_id, window)):
                sizes.setdefault(ObjectKey.parse(info.key).role, []).append(info.size)
        return sizes

    async def clear(self) -> None:
        """Delete every object of the run from every bucket (frees the server's memory between measurements)."""
        for role, group in self.nets.items():
            for i, net in enumerate(group):
                name = self.bucket_of(role, i)
                store = await net.pool.own_store()
                keys = [o.key for o in await store.list(name)]
                if keys:
                    await store.delete_many(name, keys)

    async def close(self) -> None:
        for group in self.nets.values():
            for net in group:
                await net.pool.close()
        self.chain.close()

