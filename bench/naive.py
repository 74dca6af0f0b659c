"""The naive all-gather through S3, with plain boto3: what a user would write before reaching for a protocol.

P peer processes (multiprocessing, spawn), each with its own default boto3 client (path addressing, us-east-1) to
the same S3 endpoint. In each round, after a barrier, every peer PUTs its fp32 gradient as one object; a second
barrier stands for "all P objects exist" (a barrier rather than polling with HEAD, so no polling cost is counted
against it); then each peer GETs the other P - 1 objects one after another and averages in fp32 with torch
(its own gradient plus the others, divided by P). No signatures, no hashes, no redundancy, no checks: each peer
writes its bytes once and reads everyone else's, so the server moves P objects in and P (P - 1) out, against the
protocol's fixed ~2r objects per peer; that quadratic read volume is where the two cross.

A round's time runs from the first peer leaving the first barrier to the last peer's average done (one clock for
all processes: ``time.perf_counter`` is CLOCK_MONOTONIC on Linux). One warm-up round first (connections, page
cache), then the median of ``reps``. Correctness: every peer's max |average - exact mean| (exact mean in fp64) in
the last round.

    python -m bench.naive --peers 4 --mib 16     # on its own embedded S3 server
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["NaiveResult", "naive_allgather", "plain_boto3"]

MiB = 1024 * 1024
BUCKET = "bench-naive-allgather"


@dataclass(frozen=True)
class NaiveResult:
    seconds: float  # median round time
    rounds: list[float]  # every measured round
    error_max: float  # max over peers of max |average - exact mean| (absolute, the gradients are N(0, 1))
    mean_abs_max: float  # max |exact mean|, to read error_max against
    client_cpu: float = 0.0  # median over measured rounds of the peers' CPU seconds in the round, summed
    server_cpu: float | None = None  # the server's CPU seconds over the whole run / rounds (deletes included)


def plain_boto3(endpoint_url: str) -> Any:
    """boto3 as a user configures it for a local S3-compatible server: defaults, path addressing, test keys."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing", config=Config(s3={"addressing_style": "path"}))


def _gradient(rank: int, numel: int) -> torch.Tensor:
    return torch.randn(numel, generator=torch.Generator().manual_seed(1000 + rank))


def _worker(rank: int, world: int, endpoint_url: str, run: str, numel: int, rounds: int, barrier: Any,
            times: torch.Tensor, exact: torch.Tensor, errors: torch.Tensor) -> None:
    torch.set_num_threads(1)  # P processes share the machine's cores, as gloo's workers do
    client = plain_boto3(endpoint_url)
    grad = _gradient(rank, numel)
    body = grad.numpy().tobytes()
    avg = grad
    for r in range(rounds):
        barrier.wait()
        started, cpu = time.perf_counter(), time.process_time()
        client.put_object(Bucket=BUCKET, Key=f"{run}/{r}/{rank}", Body=body)
        barrier.wait()  # every object exists
        avg = grad.clone()
        for other in range(world):
            if other != rank:
                data = client.get_object(Bucket=BUCKET, Key=f"{run}/{r}/{other}")
                avg += torch.frombuffer(bytearray(data["Body"].read()), dtype=torch.float32)
        avg /= world
        times[r, rank, 0], times[r, rank, 1] = started, time.perf_counter()
        times[r, rank, 2] = time.process_time() - cpu
        barrier.wait()  # everyone has read this round's objects
        client.delete_object(Bucket=BUCKET, Key=f"{run}/{r}/{rank}")
    # correctness, outside the timing: peer 0 computes the exact mean in fp64, every peer compares its own average
    if rank == 0:
        acc = torch.zeros(numel, dtype=torch.float64)
        for other in range(world):
            acc += _gradient(other, numel).double()
        exact.copy_(acc / world)
    barrier.wait()
    errors[rank] = float((avg.double() - exact).abs().max())


def naive_allgather(endpoint_url: str, peers: int, mib_per_peer: int, reps: int = 3,
                    server_cpu: Callable[[], float] | None = None) -> NaiveResult:
    """Median seconds of one all-gather + average of ``mib_per_peer`` MiB fp32 per peer over ``peers`` processes.
    ``server_cpu``: reads the server's CPU seconds so far, to charge it its share of a round."""
    import torch.multiprocessing as mp

    client = plain_boto3(endpoint_url)
    try:
        client.create_bucket(Bucket=BUCKET)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    numel = mib_per_peer * MiB // 4
    rounds = reps + 1  # the first one warms up
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(peers)
    times = torch.zeros(rounds, peers, 3, dtype=torch.float64).share_memory_()  # start, end, CPU seconds
    exact = torch.zeros(numel, dtype=torch.float64).share_memory_()
    errors = torch.full((peers,), float("nan"), dtype=torch.float64).share_memory_()
    run = f"{peers}x{mib_per_peer}-{time.time_ns()}"
    procs = [ctx.Process(target=_worker, args=(rank, peers, endpoint_url, run, numel, rounds, barrier, times, exact,
                                               errors)) for rank in range(peers)]
    server_before = server_cpu() if server_cpu else None
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
        failed = [p.exitcode for p in procs if p.exitcode != 0]
        if failed:
            raise RuntimeError(f"naive all-gather: {len(failed)} of {peers} peer processes failed (exit {failed[0]})")
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    server = None if server_before is None else (server_cpu() - server_before) / rounds  # type: ignore[misc]
    measured = [float(times[r, :, 1].max() - times[r, :, 0].min()) for r in range(1, rounds)]
    cpu = statistics.median(float(times[r, :, 2].sum()) for r in range(1, rounds))
    return NaiveResult(statistics.median(measured), measured, float(errors.max()), float(exact.abs().max()),
                       client_cpu=cpu, server_cpu=server)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.naive", description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--mib", type=int, default=16, help="MiB of fp32 gradient per peer")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    from storage import EmbeddedS3

    with EmbeddedS3() as s3:
        r = naive_allgather(s3.endpoint_url, args.peers, args.mib, args.reps, server_cpu=s3.cpu_seconds)
    print(f"P={args.peers} x {args.mib} MiB: {r.seconds:.3f} s (rounds {', '.join(f'{t:.3f}' for t in r.rounds)}), "
          f"max |avg - mean| {r.error_max:.1e} (max |mean| {r.mean_abs_max:.2f}); CPU per round {r.client_cpu:.2f} s "
          f"peers + {r.server_cpu:.2f} s server")


if __name__ == "__main__":
    main()
