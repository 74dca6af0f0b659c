"""Baselines measured in the same run as the protocol: the S3 server's raw rates, gloo and hivemind (the naive
all-gather through S3 is `bench.naive`; memory-copy bandwidth is timed beside the adds it is compared with, in
`bench.reduce`).

- `server_rates`: boto3 PUT and GET of many objects at once from a thread pool, on the same embedded server the
  protocol uses; what "the server limit" of a window is computed from. The client is configured as the project's
  own (`storage.ObjectStore`: no payload signing, checksums only when required, ...), since plain boto3 over
  http SHA-256s and CRCs every PUT body on the client, which caps its PUT rate well below the server's.
- `gloo_allreduce_seconds`: ``torch.distributed.all_reduce`` (gloo, 127.0.0.1) of P fp32 tensors, one process
  each, timed after a warm-up call and a barrier; the mean (division by P) included.
- `hivemind_averaging`: hivemind 1.1.12's `DecentralizedAverager` on 127.0.0.1 (`bench/hivemind_round.py`), run
  under the separate ``.venv-baselines`` that ``make bench-baselines`` builds; "skipped" with the reason when that
  venv is absent or the run fails, never an exception.
"""
from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from storage import EmbeddedS3

__all__ = ["ServerRates", "server_rates", "gloo_allreduce_seconds", "Hivemind", "hivemind_averaging",
           "BASELINES_PYTHON", "PROJECT_CLIENT"]

BUCKET = "bench-raw-rates"


@dataclass(frozen=True)
class ServerRates:
    """Best PUT and GET rates (bytes per second) over the concurrency levels tried."""

    object_bytes: int
    put: float
    get: float
    note: str


# The botocore options `storage.ObjectStore.open` gives its aiobotocore client (storage/client.py), here for boto3:
# all of them but its aiohttp session class, which has no boto3 counterpart. Keep the two in step.
PROJECT_CLIENT = "payload signing off, checksums when required, 1 attempt, no parameter validation"


def _boto3(endpoint: str, pool: int) -> Any:
    """A boto3 client configured like the project's own: what the protocol's requests cost the server."""
    import boto3
    from botocore.config import Config

    transfer = EmbeddedS3.transfer_config()
    config = Config(max_pool_connections=pool, connect_timeout=transfer.connect_timeout,
                    read_timeout=transfer.read_timeout, retries={"total_max_attempts": 1, "mode": "standard"},
                    s3={"addressing_style": "path", "payload_signing_enabled": False},
                    request_checksum_calculation="when_required", response_checksum_validation="when_required",
                    parameter_validation=False)
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing", config=config)


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
    note = (f"boto3 configured as ours ({PROJECT_CLIENT}), {count} x {object_bytes / 2**20:g} MiB, "
            f"best of {reps} at {concurrency} threads "
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


BASELINES_PYTHON = Path(__file__).resolve().parents[1] / ".venv-baselines" / "bin" / "python"
HIVEMIND_SCRIPT = Path(__file__).resolve().with_name("hivemind_round.py")


@dataclass(frozen=True)
class Hivemind:
    """One hivemind measurement: ``seconds`` (median round) or ``skipped`` (why there is none)."""

    seconds: float | None = None
    skipped: str = ""
    error_max: float = float("nan")  # max over peers of max |average - exact mean| / max |exact mean|
    rounds: tuple[float, ...] = ()


def hivemind_averaging(peers: int, mib_per_peer: int, reps: int = 3, python: Path | None = None,
                       timeout: float = 900.0) -> Hivemind:
    """Median seconds of one hivemind averaging round (all P ``step()`` calls) of ``mib_per_peer`` MiB fp32 each."""
    python = BASELINES_PYTHON if python is None else python
    if not python.exists():
        return Hivemind(skipped=f"no {python.parents[1].name}: run make bench-baselines")
    # -I: the script's directory (this package: storage.py, table.py...) must not shadow modules hivemind imports
    cmd = [str(python), "-I", str(HIVEMIND_SCRIPT), "--peers", str(peers), "--mib", str(mib_per_peer),
           "--reps", str(reps)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Hivemind(skipped=f"{type(exc).__name__}: {exc}"[:200])
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        err = [line for line in done.stderr.strip().splitlines() if line.strip()]
        return Hivemind(skipped=f"exit {done.returncode}: {err[-1] if err else 'no output'}"[:200])
    try:
        out = json.loads(lines[-1])
        return Hivemind(float(out["seconds"]), error_max=float(out["error_max"]) / float(out["mean_abs_max"]),
                        rounds=tuple(out["rounds"]))
    except (ValueError, KeyError, TypeError) as exc:
        return Hivemind(skipped=f"unreadable output ({exc}): {lines[-1][:100]}")
