"""Baselines measured in the same run as the protocol: the S3 server's raw rates and gloo (memory-copy bandwidth is
timed beside the adds it is compared with, in `bench.reduce`).

- `server_rates`: plain boto3 PUT and GET of many objects at once from a thread pool, as any user would, on the
  same embedded server the protocol uses; what "the server limit" of a window is computed from.
- `gloo_allreduce_seconds`: ``torch.distributed.all_reduce`` (gloo, 127.0.0.1) of P fp32 tensors, one process
  each, timed after a warm-up call and a barrier; the mean (division by P) included.
"""
from __future__ import annotations

import os
import socket
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from storage import EmbeddedS3

__all__ = ["ServerRates", "server_rates", "gloo_allreduce_seconds"]

BUCKET = "bench-raw-rates"


@dataclass(frozen=True)
class ServerRates:
    """Best PUT and GET rates (bytes per second) over the concurrency levels tried."""

    object_bytes: int
    put: float
    get: float
    note: str


def _boto3(endpoint: str, pool: int) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing",
                        config=Config(s3={"addressing_style": "path"}, max_pool_connections=pool))


def server_rates(s3: EmbeddedS3, object_bytes: int, total_bytes: int, concurrency: tuple[int, ...] = (4, 16),
                 reps: int = 2) -> ServerRates:
    """PUT then GET ``total_bytes`` as objects of ``object_bytes``; best rate over ``concurrency`` and ``reps``."""
    count = max(2, total_bytes // object_bytes)
    payload = os.urandom(object_bytes)
    client = _boto3(s3.endpoint_url, max(concurrency))
    try:
        client.create_bucket(Bucket=BUCKET)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    keys = [f"o/{object_bytes}/{i}" for i in range(count)]
    best = {"put": (0.0, 0), "get": (0.0, 0)}
    for threads in concurrency:
        with ThreadPoolExecutor(threads) as pool:
            for _ in range(reps):
                started = time.perf_counter()
                list(pool.map(lambda k: client.put_object(Bucket=BUCKET, Key=k, Body=payload), keys))
                rate = count * object_bytes / (time.perf_counter() - started)
                best["put"] = max(best["put"], (rate, threads))
                started = time.perf_counter()
                sizes = list(pool.map(lambda k: len(client.get_object(Bucket=BUCKET, Key=k)["Body"].read()), keys))
                rate = count * object_bytes / (time.perf_counter() - started)
                best["get"] = max(best["get"], (rate, threads))
                assert sizes == [object_bytes] * count
    client.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})
    note = (f"boto3, {count} x {object_bytes / 2**20:g} MiB, best of {reps} at {concurrency} threads "
            f"(PUT best at {best['put'][1]}, GET at {best['get'][1]})")
    return ServerRates(object_bytes, best["put"][0], best["get"][0], note)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gloo_worker(rank: int, world: int, port: int, numel: int, reps: int, out: torch.Tensor) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, init_method=f"tcp://127.0.0.1:{port}")
    t = torch.randn(numel, generator=torch.Generator().manual_seed(rank))
    dist.all_reduce(t)  # warm-up: connections, buffers
    for i in range(reps):
        dist.barrier()
        started = time.perf_counter()
        dist.all_reduce(t)
        t.div_(world)
        if rank == 0:
            out[i] = time.perf_counter() - started
    dist.destroy_process_group()


def gloo_allreduce_seconds(world: int, numel: int, reps: int = 3) -> float:
    """Median seconds of one all_reduce + mean of ``numel`` fp32 over ``world`` local processes."""
    import torch.multiprocessing as mp

    out = torch.zeros(reps, dtype=torch.float64).share_memory_()
    mp.spawn(_gloo_worker, args=(world, _free_port(), numel, reps, out), nprocs=world, join=True)
    return statistics.median(out.tolist())
