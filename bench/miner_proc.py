"""A miner in its own process: its peak RSS and its whole reduce path, for P inputs of one segment.

The parent (`miner_window`) uploads P signed inputs of one segment to one miner's bucket, produces the upload
deadline block, and starts ``python -m bench.miner_proc`` on the same chain (attached at that block) and server.
The child runs the real `Miner.run_window` (list, fetch and verify every input, prove, add, sign, write) and
prints one JSON line: its own peak RSS (``VmHWM`` of the child alone, so the parent's memory and the S3
server's never count), the seconds of the reduce itself (`Miner.produce`: list, fetch, verify, prove, add) and of
the whole segment (plus signing and writing the output).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from storage import EmbeddedS3, S3Config

MiB = 1024 * 1024
_CHILD_CMD: list[str] | None = None  # tests of this module may run the child under a profiler


@dataclass(frozen=True)
class MinerRun:
    peers: int
    segment_bytes: int
    peak_rss: int  # bytes
    produce_seconds: float  # list + fetch + verify + prove + add, every input
    segment_seconds: float  # the above + sign and write the output
    inputs: int


async def miner_window(s3: EmbeddedS3, peers: int, segment_mib: int, workdir: Path, window: int = 1) -> MinerRun:
    """Upload ``peers`` inputs of one ``segment_mib`` segment, then time and measure one miner process on them."""
    from mapreduce.wire.codec import ObjectMeta, encode
    from mapreduce.wire.keys import input_key, make_tag

    from .cluster import BenchCluster, bench_spec

    numel = segment_mib * MiB // 4
    spec = bench_spec(f"bench-rss-{peers}-{int(time.time()) % 100000}", numel, segments=1, redundancy=1)
    cluster = await BenchCluster.create(s3, spec, workdir, peers=peers, miners=1, validators=0)
    try:
        phases = spec.windows.phases(window)
        cluster.chain.advance_to(phases.start_block)
        miner_net = cluster.nets["miners"][0]
        bucket = await miner_net.bucket(window, miner_net.hotkey)
        base = torch.randn(numel, generator=torch.Generator().manual_seed(peers))
        sem = asyncio.Semaphore(2)  # encode the next input while one uploads

        async def upload(i: int) -> None:
            async with sem:
                signer = cluster.signers["peers"][i]
                meta = ObjectMeta(spec.run_id, window, "in", signer.hotkey, 0)
                obj = await asyncio.to_thread(encode, meta, {"data": base + i}, signer)
                tag = make_tag(signer, spec.run_id, window, 0, "in", miner_net.hotkey)
                await bucket.store.put(bucket.name, str(input_key(spec.run_id, window, 0, signer.hotkey, tag)),
                                       obj.data)

        await asyncio.gather(*(upload(i) for i in range(peers)))
        cluster.chain.advance_to(phases.upload_deadline)
        child = {
            "spec": spec.to_json(), "chain": str(cluster.chain.path), "block": cluster.chain.current_block(),
            "stamps": cluster.chain.stamps(), "uri": f"//{spec.run_id}/miners/0", "endpoint": s3.endpoint_url,
            "bucket": cluster.bucket_of("miners", 0), "window": window,
        }
        proc = await asyncio.to_thread(
            subprocess.run, [sys.executable, *(_CHILD_CMD or ["-m", "bench.miner_proc"])], input=json.dumps(child), text=True,
            capture_output=True, cwd=str(Path(__file__).resolve().parent.parent), check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"miner process failed ({proc.returncode}): {proc.stderr[-2000:]}")
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        await cluster.clear()
        return MinerRun(peers, numel * 4, got["peak_rss"], got["produce_seconds"], got["segment_seconds"],
                        got["inputs"])
    finally:
        await cluster.close()


def _peak_rss() -> int:
    """This process's peak resident set, in bytes.

    ``VmHWM``, the high-water mark of this process's own address space, rather than ``ru_maxrss``: Linux carries
    the pre-exec high-water mark over into ``ru_maxrss``, so a child forked from a large parent would report the
    parent's size.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


async def _child(args: dict) -> dict:
    from mapreduce.miner import Miner
    from mapreduce.network import Network, StorePool
    from mapreduce.wire.signing import Signer
    from mapreduce.spec import RunSpec

    from .chain import SteppedChain

    spec = RunSpec.from_json(args["spec"])
    chain = SteppedChain.attach(args["chain"], args["block"], {int(k): v for k, v in args["stamps"].items()})
    s3 = S3Config(endpoint_url=args["endpoint"], access_key_id="testing", secret_access_key="testing",
                  addressing_style="path")  # what EmbeddedS3.config() gives
    net = Network(spec, chain, Signer.from_uri(args["uri"]), StorePool(s3, EmbeddedS3.transfer_config()),
                  chain_poll=chain.poll_interval)
    produce_seconds = []

    class TimedMiner(Miner):
        async def produce(self, *a, **kw):
            started = time.perf_counter()
            try:
                return await super().produce(*a, **kw)
            finally:
                produce_seconds.append(time.perf_counter() - started)

    try:
        report = await TimedMiner(net, args["bucket"]).run_window(args["window"])
    finally:
        await net.pool.close()
    outcome = report.outcomes[0]
    if outcome.status != "written":
        raise RuntimeError(f"miner did not write its output: {report.line()}")
    return {"peak_rss": _peak_rss(),
            "produce_seconds": sum(produce_seconds), "segment_seconds": outcome.seconds, "inputs": outcome.inputs}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.miner_proc",
                                     description="one miner window in this process (reads its arguments as JSON "
                                                 "on stdin; started by bench.miner_proc.miner_window)")
    parser.parse_args()
    print(json.dumps(asyncio.run(_child(json.loads(sys.stdin.read())))))
