"""Storage throughput: `ObjectStore` against plain boto3, same embedded moto server, same run.

    python -m bench.storage [--reps 3] [--mode subprocess|thread] [--config embedded|default|both]
                            [--part-size MiB --concurrency N ...]

For each scenario both clients PUT and then GET their own copy of the objects; MB/s is total bytes moved
(1 MB = 10^6 bytes) over wall time, best of ``--reps`` repetitions (the median is in the note). boto3 uses its
defaults (path-style addressing aside) with a 16-thread pool for the concurrent scenario, as a plain user would.
ObjectStore is measured with `EmbeddedS3.transfer_config()` (tuned for moto: one request per object) and with the
`TransferConfig()` defaults (tuned for S3/R2: multipart and parallel ranges), which shows what splitting costs on
moto. "get_into numpy" rows download into a caller's numpy buffer instead of a new bytearray.
Rows are `bench.table.Row`s, so other benchmarks can append theirs (see the codec hook below).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from bench.table import Row, print_table
from storage import EmbeddedS3, ObjectStore, TransferConfig

MiB = 1024 * 1024
BUCKET = "bench-storage"


@dataclass(frozen=True)
class Scenario:
    label: str
    size: int
    count: int


SCENARIOS = (
    Scenario("64 MiB x1", 64 * MiB, 1),
    Scenario("4 MiB x16", 4 * MiB, 16),
    Scenario("256 MiB x1", 256 * MiB, 1),
)


def _boto3_client(endpoint_url: str, pool: int) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=pool),
    )


def _rate(nbytes: int, seconds: list[float]) -> tuple[float, float]:
    """(best, median) MB/s."""
    return nbytes / min(seconds) / 1e6, nbytes / statistics.median(seconds) / 1e6


async def storage_rows(s3: EmbeddedS3, reps: int, transfer: TransferConfig) -> list[Row]:
    """PUT, GET and GET-into-buffer rows for every scenario, ObjectStore vs boto3."""
    rows: list[Row] = []
    with ThreadPoolExecutor(16) as pool:
        boto = _boto3_client(s3.endpoint_url, pool=16)
        async with ObjectStore(s3.config(), transfer) as store:
            await store.create_bucket(BUCKET)
            for sc in SCENARIOS:
                rows += await _scenario_rows(sc, reps, store, boto, pool)
    return rows


async def _scenario_rows(sc: Scenario, reps: int, store: ObjectStore, boto: Any, pool: ThreadPoolExecutor) -> list[Row]:
    payloads = [np.random.default_rng(i).bytes(sc.size) for i in range(sc.count)]
    ours_keys = [f"ours/{sc.label}/{i}" for i in range(sc.count)]
    boto_keys = [f"boto3/{sc.label}/{i}" for i in range(sc.count)]

    async def ours_put() -> None:
        await asyncio.gather(*(store.put(BUCKET, k, p) for k, p in zip(ours_keys, payloads, strict=True)))

    async def ours_get() -> None:
        await asyncio.gather(*(store.get(BUCKET, k) for k in ours_keys))

    async def ours_get_into() -> None:
        # A fresh buffer per object, as get() and boto3 allocate one; numpy's large allocations get transparent
        # huge pages (far fewer page faults), which bytearray's do not.
        await asyncio.gather(*(store.get_into(BUCKET, k, np.empty(sc.size, np.uint8)) for k in ours_keys))

    def boto_put_one(i: int) -> None:
        boto.put_object(Bucket=BUCKET, Key=boto_keys[i], Body=payloads[i])

    def boto_get_one(i: int) -> bytes:
        return boto.get_object(Bucket=BUCKET, Key=boto_keys[i])["Body"].read()

    async def boto_put() -> None:
        await asyncio.to_thread(lambda: list(pool.map(boto_put_one, range(sc.count))))

    async def boto_get() -> None:
        await asyncio.to_thread(lambda: list(pool.map(boto_get_one, range(sc.count))))

    runs = {"ours_put": ours_put, "boto_put": boto_put, "ours_get": ours_get, "boto_get": boto_get,
            "ours_get_into": ours_get_into}
    timings: dict[str, list[float]] = {name: [] for name in runs}
    # Alternate the clients within each repetition so both see the same machine noise.
    for _ in range(reps):
        for name, run in runs.items():
            started = time.perf_counter()
            await run()
            timings[name].append(time.perf_counter() - started)

    # Not timed: both must have read back exactly what was written.
    got = await asyncio.gather(*(store.get(BUCKET, k) for k in ours_keys))
    assert got == payloads, f"ObjectStore read back wrong bytes for {sc.label}"
    assert boto_get_one(0) == payloads[0], f"boto3 read back wrong bytes for {sc.label}"
    await store.delete_many(BUCKET, ours_keys + boto_keys)

    total = sc.size * sc.count
    rows = []
    for label, ours_name, base_name in (
        (f"PUT {sc.label}", "ours_put", "boto_put"),
        (f"GET {sc.label}", "ours_get", "boto_get"),
        (f"GET {sc.label} get_into numpy", "ours_get_into", "boto_get"),
    ):
        ours, ours_median = _rate(total, timings[ours_name])
        base, base_median = _rate(total, timings[base_name])
        rows.append(Row(label, ours, base, note=f"median {ours_median:,.0f} vs {base_median:,.0f}"))
    return rows


# ---- codec -------------------------------------------------------------------------------------------------------
# Encode/decode of mapreduce/wire/codec.py against a memory copy, printed in the same run (bench/codec.py); kept in its own
# module so the storage numbers never depend on the codec.
def codec_rows(reps: int) -> list[Row]:
    from .codec import codec_rows as rows

    return rows(reps)


# -----------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.storage", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions per measurement (best is reported)")
    parser.add_argument("--mode", choices=("subprocess", "thread"), default="subprocess", help="EmbeddedS3 mode")
    parser.add_argument(
        "--config", choices=("embedded", "default", "both"), default="both",
        help="TransferConfig: EmbeddedS3.transfer_config() (tuned for moto), TransferConfig() (for S3/R2), or both",
    )
    tuning = parser.add_argument_group("overrides of the default TransferConfig (sizes in MiB), for tuning runs")
    for flag in ("--multipart-threshold", "--part-size", "--ranged-threshold", "--range-part-size"):
        tuning.add_argument(flag, type=float)
    tuning.add_argument("--concurrency", type=int)
    args = parser.parse_args(argv)

    configs: list[tuple[str, TransferConfig]] = []
    overrides = {
        name: int(value * MiB) if name != "max_concurrency" else value
        for name, value in (
            ("multipart_threshold", args.multipart_threshold),
            ("part_size", args.part_size),
            ("ranged_get_threshold", args.ranged_threshold),
            ("range_part_size", args.range_part_size),
            ("max_concurrency", args.concurrency),
        )
        if value is not None
    }
    if overrides:
        configs.append(("custom", replace(TransferConfig(), **overrides)))
    else:
        if args.config in ("embedded", "both"):
            configs.append(("EmbeddedS3.transfer_config()", EmbeddedS3.transfer_config()))
        if args.config in ("default", "both"):
            configs.append(("TransferConfig() defaults", TransferConfig()))

    with EmbeddedS3(args.mode) as s3:
        for name, transfer in configs:
            rows = asyncio.run(storage_rows(s3, args.reps, transfer))
            print_table(
                rows,
                title=f"\nObjectStore with {name}: {_describe(transfer)}",
                value_header="ObjectStore",
                baseline_header="boto3",
            )
    extra = codec_rows(args.reps)
    if extra:
        print_table(extra, title="\ncodec")
    print(f"\nmoto {args.mode} on 127.0.0.1; MB/s with 1 MB = 10^6 B; best of {args.reps} repetitions "
          "(median in the note); ratio = ObjectStore / boto3.")


def _describe(t: TransferConfig) -> str:
    def size(n: int) -> str:
        return f"{n / MiB:g} MiB"

    return (
        f"multipart at >= {size(t.multipart_threshold)} in {size(t.part_size)} parts, ranged GET above "
        f"{size(t.ranged_get_threshold)} in {size(t.range_part_size)} ranges, {t.max_concurrency} in flight per object"
    )


if __name__ == "__main__":
    main()
