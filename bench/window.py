"""One full window, timed on its critical path: peers upload, miners reduce, peers download, the validator checks.

Blocks are produced on demand (`bench.chain.SteppedChain`): the upload deadline block as soon as the last peer's
upload returns, the reduce deadline block as soon as the last miner has written its outputs, the window's last
block as soon as every peer holds its average. So the round time is real work plus the roles' own polling
(peers poll for outputs every ``PeerConfig.poll_interval``), never idle phase time. Everything runs in this
process, each participant with its own connection pool, against the one embedded S3 server.

What the round must move through the server is read back from the bucket listings: every input is written once
per replica and read once by its miner; every output is written once and read once per peer.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mapreduce.peer import PeerConfig
from mapreduce.plan import Plan
from mapreduce.validator import Validator
from mapreduce.wire.formats import FORMATS
from storage import EmbeddedS3, TransferConfig

from .cluster import BenchCluster, bench_spec

MiB = 1024 * 1024


@dataclass(frozen=True)
class WindowCase:
    peers: int
    mib_per_peer: int
    segments: int
    miners: int
    redundancy: int
    wire_dtype: str = "float32"
    spot_check: bool = True  # peers recompute a sampled range of each output before trusting it (the default)

    @property
    def label(self) -> str:
        wire = "" if self.wire_dtype == "float32" else f", {self.wire_dtype} wire"
        wire += "" if self.redundancy == 2 else f", redundancy {self.redundancy}"
        check = "" if self.spot_check else ", peers' spot check off"
        return f"P={self.peers} x {self.mib_per_peer} MiB{wire}{check}"

    @property
    def numel(self) -> int:
        return self.mib_per_peer * MiB // 4


@dataclass
class WindowTiming:
    """Seconds of each phase of one window, what it moved, and how its result compares with the exact mean."""

    case: WindowCase
    upload: float  # first upload starts -> last peer's upload returned
    reduce: float  # upload deadline -> last miner's outputs written
    download: float  # reduce deadline -> last peer holds its average
    validate: float  # reduce deadline -> validator's checks done (overlaps the downloads)
    total: float  # first upload starts -> every peer done and the validator done
    put_bytes: int  # the protocol's writes: inputs x replicas, outputs
    get_bytes: int  # the protocol's reads: inputs (by their miner), one output replica per peer and segment
    moved: tuple[int, int]  # what the pools actually sent and received (includes audits, records, listings)
    validator_fetched: int
    validator_checked: int
    error_rel: float  # ||average - exact mean|| / ||exact mean|| (worst peer)
    error_max: float  # max |average - exact mean| / max |exact mean|
    fallbacks: int
    checks_bad: list[str]  # the validator's checks that were not "ok" (status and reason), expected empty
    # CPU seconds the round used: every role here (one process), and the S3 server (None: not measurable, e.g. the
    # in-memory server). On a machine with few cores their sum / cores is a floor under ``total``.
    client_cpu: float = 0.0
    server_cpu: float | None = None
    # requests per role ("peers", "miners", "validators"): (all calls, of which ranged GETs), from the pools' stats
    requests: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def cpu(self) -> float:
        return self.client_cpu + (self.server_cpu or 0.0)


def _server_cpu(s3: object) -> float | None:
    """The S3 server's CPU seconds so far, or None when it cannot say (an in-memory or in-thread server)."""
    try:
        return s3.cpu_seconds()  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError, OSError):
        return None


def _requests(cluster: BenchCluster) -> dict[str, tuple[int, int]]:
    """(calls, ranged GETs) so far, summed over each role's pools."""
    out = {}
    for role, nets in cluster.nets.items():
        ops = [op for n in nets for op in n.pool.stats.snapshot().operations.values()]
        out[role] = (sum(o.calls for o in ops), sum(o.ranged for o in ops))
    return out


def _gradients(case: WindowCase, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(case.peers, case.numel, generator=g)


async def _validator_saw_outputs(validator: Validator, plan: Plan, timeout: float = 30.0) -> None:
    """Wait until ``validator`` has read and verified the header of every output of ``plan`` (or ``timeout``)."""
    slots = [(m, s.index) for s in plan.segments for m in plan.miners_for(s.index)]
    waited = 0.0
    while waited < timeout:
        obs = validator.observing.get(plan.window)
        if obs is not None and all(obs.pinned(slot) is not None for slot in slots):
            return
        await asyncio.sleep(0.05)
        waited += 0.05


async def run_window(cluster: BenchCluster, case: WindowCase, window: int, grads: torch.Tensor) -> WindowTiming:
    """Run ``window`` with every participant of ``cluster``; the chain must be before the window's start."""
    chain, phases = cluster.chain, cluster.spec.windows.phases(window)
    peers = cluster.peers(PeerConfig() if case.spot_check else PeerConfig(spot_check_ranges=0))
    miners = cluster.miners()
    validator = cluster.validators()[0]
    before, asked = cluster.bytes_moved(), _requests(cluster)

    chain.advance_to(phases.start_block)
    miner_tasks = [asyncio.create_task(m.run_window(window)) for m in miners]
    validator_task = asyncio.create_task(validator.validate_window(window))
    t0, cpu0, server0 = time.perf_counter(), time.process_time(), _server_cpu(cluster.s3)
    receipts = await asyncio.gather(*(p.upload(window, grads[i]) for i, p in enumerate(peers)))
    t1 = time.perf_counter()
    chain.advance_to(phases.upload_deadline)
    downloads = [asyncio.create_task(p.download(window, r, grads[i]))
                 for i, (p, r) in enumerate(zip(peers, receipts))]
    await asyncio.gather(*miner_tasks)
    t2 = time.perf_counter()
    # On a chain the deadline comes at its time, after honest outputs: a validator has seen them by then. Here it
    # would come at once, before the validator's next listing, and every output would count as late; so it comes
    # once the validator holds every output's header. Peers go on downloading meanwhile.
    await _validator_saw_outputs(validator, await validator.net.plan(window))
    chain.advance_to(phases.reduce_deadline)
    results = await asyncio.gather(*downloads)
    t3 = time.perf_counter()
    # The validator's last step re-lists outputs at the window's end (overwrite check): produce it now.
    chain.advance_to(phases.end_block)
    report = await validator_task
    t4, cpu4, server4 = time.perf_counter(), time.process_time(), _server_cpu(cluster.s3)
    after, answered = cluster.bytes_moved(), _requests(cluster)

    sizes = await cluster.object_sizes(window)
    ins, outs = sizes.get("in", []), sizes.get("out", [])
    put_bytes = sum(ins) + sum(outs)
    per_segment_out = sum(outs) / max(1, len(outs))
    get_bytes = sum(ins) + int(case.peers * cluster.spec.segments * per_segment_out)

    exact = grads.double().mean(0)
    norm, top = float(exact.norm()), float(exact.abs().max())
    err_rel = max(float((r.flat.double() - exact).norm()) / norm for r in results)
    err_max = max(float((r.flat.double() - exact).abs().max()) for r in results) / top
    return WindowTiming(
        case, upload=t1 - t0, reduce=t2 - t1, download=t3 - t2, validate=t4 - t2, total=max(t3, t4) - t0,
        put_bytes=put_bytes, get_bytes=get_bytes, moved=(after[0] - before[0], after[1] - before[1]),
        validator_fetched=report.bytes_fetched, validator_checked=report.output_bytes_checked,
        error_rel=err_rel, error_max=err_max, fallbacks=sum(len(r.fallbacks) for r in results),
        checks_bad=[f"{c.status}: {c.reason}" for c in report.checks if c.status != "ok"]
        + ([] if report.checks else ["no checks"]),
        client_cpu=cpu4 - cpu0, server_cpu=None if server0 is None or server4 is None else server4 - server0,
        requests={role: (answered[role][0] - asked[role][0], answered[role][1] - asked[role][1]) for role in answered},
    )


async def window_timings(s3: EmbeddedS3, case: WindowCase, reps: int, workdir: Path,
                         transfer: TransferConfig | None = None, tag: str = "w") -> list[WindowTiming]:
    """``reps`` windows of ``case`` on a fresh cluster (a warm-up window of the same size first)."""
    run_id = f"bench-{tag}-{case.peers}x{case.mib_per_peer}-{case.wire_dtype[:4]}-{int(time.time()) % 100000}"
    spec = bench_spec(run_id, case.numel, case.segments, case.redundancy, case.wire_dtype)
    cluster = await BenchCluster.create(s3, spec, workdir, peers=case.peers, miners=case.miners, transfer=transfer)
    try:
        grads = _gradients(case, seed=1)
        timings = []
        for rep in range(reps + 1 if reps else 1):
            timing = await run_window(cluster, case, rep + 1, grads)
            await cluster.clear()
            if rep or not reps:  # the first window opens connections and warms caches
                timings.append(timing)
        return timings
    finally:
        await cluster.close()


def main(argv: list[str] | None = None) -> None:
    """One case's rounds and where they went, e.g. ``python -m bench.window --peers 16 --mib 16 --segments 4
    --miners 4`` (the full suite, with its baselines, is ``python -m bench``)."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m bench.window", description=main.__doc__.split(",")[0])
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--mib", type=int, default=64, help="MiB of fp32 gradient per peer")
    parser.add_argument("--segments", type=int, default=2)
    parser.add_argument("--miners", type=int, default=2)
    parser.add_argument("--redundancy", type=int, default=2, help="replicas per segment (RunSpec.redundancy)")
    parser.add_argument("--reps", type=int, default=2, help="measured windows, after one warm-up")
    parser.add_argument("--wire", default="float32", choices=sorted(FORMATS),
                        help="the run's wire format (mapreduce/wire/formats.py)")
    args = parser.parse_args(argv)
    case = WindowCase(args.peers, args.mib, segments=args.segments, miners=args.miners, redundancy=args.redundancy,
                      wire_dtype=args.wire)

    async def run() -> list[WindowTiming]:
        with tempfile.TemporaryDirectory(prefix="mapreduce-bench-") as workdir:  # the runs' chain files
            async with EmbeddedS3() as s3:
                return await window_timings(s3, case, args.reps, Path(workdir))

    for t in asyncio.run(run()):
        print(f"{case.label}: round {t.total:.2f} s, {t.put_bytes / 1e6:,.0f} MB PUT + {t.get_bytes / 1e6:,.0f} MB GET "
              f"(upload {t.upload:.2f}, reduce {t.reduce:.2f}, download "
              f"{t.download:.2f}, validator {t.validate:.2f}); validator fetched {t.validator_fetched / 1e3:,.0f} kB "
              f"for {t.validator_checked / 1e6:,.1f} MB of outputs ({100 * t.validator_fetched / max(1, t.validator_checked):.2f}%); "
              f"fallbacks {t.fallbacks}; checks not ok {len(t.checks_bad)}; CPU {t.client_cpu:.2f} s here + "
              f"{t.server_cpu or float('nan'):.2f} s server; requests (of which ranged GETs): "
              + ", ".join(f"{role} {n:,} ({ranged:,})" for role, (n, ranged) in t.requests.items()))


if __name__ == "__main__":
    main()
