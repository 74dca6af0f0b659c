"""The embedded S3 server's own costs, with moto's code as it ships (the baseline) and with the project's patches
(`storage/_moto_patches.py`), in one run:

    python -m bench.server [--runs N]

Each variant runs ``--runs`` times, alternating (patched, unpatched, patched, ...), and the medians count. Both use
the project's own client (`ObjectStore` with `EmbeddedS3.transfer_config()`), 4 requests in flight, the server in a
subprocess on 127.0.0.1; the server's CPU time is read from /proc. Three workloads:

1. PUT 64 objects of 16 MiB;
2. 200 ranged GETs of 16 KiB at random offsets of 4 objects of 32 MiB (what audits and validators do);
3. 200 PUT + GET pairs of 4 KiB objects: the server's CPU per request.

And the client's side (patched server, one run per variant, alternating): this process's CPU per 16 KiB ranged GET
over 1,000 of them, with S3's timestamps parsed by `ObjectStore` (`storage.client._parse_timestamp`) and, as the
baseline, by botocore's own parser (dateutil), swapped in for the measurement.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from dataclasses import dataclass

import numpy as np

from storage import EmbeddedS3, ObjectStore

from .table import Row, print_table

MiB = 1024 * 1024
IN_FLIGHT = 4


@dataclass(frozen=True)
class Costs:
    put_seconds: float
    put_cpu: float
    ranged_seconds: float
    ranged_cpu: float
    small_cpu_ms: float  # server CPU per small request


async def _measure(speedups: bool) -> Costs:
    with EmbeddedS3(speedups=speedups) as s3:
        async with ObjectStore(s3.config(), EmbeddedS3.transfer_config()) as store:
            await store.create_bucket("bench-server")
            gate = asyncio.Semaphore(IN_FLIGHT)

            async def bounded(work):
                async with gate:
                    return await work

            async def timed(works) -> tuple[float, float]:
                cpu, started = s3.cpu_seconds(), time.perf_counter()
                await asyncio.gather(*(bounded(w) for w in works))
                return time.perf_counter() - started, s3.cpu_seconds() - cpu

            body = np.random.default_rng(1).bytes(16 * MiB)
            put_s, put_cpu = await timed(store.put("bench-server", f"p/{i}", body) for i in range(64))

            big = np.random.default_rng(2).bytes(32 * MiB)
            for j in range(4):
                await store.put("bench-server", f"g/{j}", big)
            rng, n = random.Random(0), 16 * 1024
            reads = [(f"g/{rng.randrange(4)}", rng.randrange(len(big) - n)) for _ in range(200)]

            async def ranged(key: str, offset: int) -> None:
                if await store.get_range("bench-server", key, offset, offset + n) != big[offset:offset + n]:
                    raise AssertionError(f"wrong bytes for {key} at {offset}")

            ranged_s, ranged_cpu = await timed(ranged(k, o) for k, o in reads)

            async def small(i: int) -> None:
                await store.put("bench-server", f"s/{i}", b"x" * 4096)
                await store.get("bench-server", f"s/{i}")

            _, small_cpu = await timed(small(i) for i in range(200))
    return Costs(put_s, put_cpu, ranged_s, ranged_cpu, small_cpu / 400 * 1e3)


async def _client_cpu_ms(own_timestamps: bool, requests: int = 1000) -> float:
    """This process's CPU per ranged GET of 16 KiB, ``IN_FLIGHT`` at a time (the server in its own process)."""
    import botocore.utils

    from storage import client

    own = client._parse_timestamp
    if not own_timestamps:
        client._parse_timestamp = botocore.utils.parse_timestamp  # stores opened below get botocore's parser
    try:
        with EmbeddedS3() as s3:
            async with ObjectStore(s3.config(), EmbeddedS3.transfer_config()) as store:
                await store.create_bucket("bench-client")
                await store.put("bench-client", "k", bytes(1 << 20))
                gate = asyncio.Semaphore(IN_FLIGHT)

                async def one(i: int) -> None:
                    async with gate:
                        start = i * 4096 % (1 << 19)
                        await store.get_range("bench-client", "k", start, start + 16 * 1024)

                await asyncio.gather(*(one(i) for i in range(100)))  # warm: connections, caches
                cpu = time.process_time()
                await asyncio.gather(*(one(i) for i in range(requests)))
                return (time.process_time() - cpu) / requests * 1e3
    finally:
        client._parse_timestamp = own


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each variant, alternating (default 3)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    runs: dict[bool, list[Costs]] = {True: [], False: []}
    for _ in range(args.runs):
        for speedups in (True, False):
            runs[speedups].append(asyncio.run(_measure(speedups)))

    def med(speedups: bool, attr: str) -> float:
        return statistics.median(getattr(c, attr) for c in runs[speedups])

    rows = []
    for attr, label, unit in (("put_seconds", "PUT 64 x 16 MiB, wall", "s"), ("put_cpu", "PUT 64 x 16 MiB, server CPU", "s"),
                              ("ranged_seconds", "200 ranged GETs of 16 KiB, wall", "s"),
                              ("ranged_cpu", "200 ranged GETs of 16 KiB, server CPU", "s"),
                              ("small_cpu_ms", "server CPU per small request", "ms")):
        rows.append(Row(label, med(True, attr), med(False, attr), unit=unit, higher_is_better=False,
                        note="patched vs moto as it ships"))
    client_ms = {True: [], False: []}
    for _ in range(args.runs):
        for own in (True, False):
            client_ms[own].append(asyncio.run(_client_cpu_ms(own)))
    rows.append(Row("client CPU per 16 KiB ranged GET", statistics.median(client_ms[True]),
                    statistics.median(client_ms[False]), unit="ms", higher_is_better=False,
                    note="timestamps parsed by ObjectStore vs by botocore (dateutil); patched server"))
    print_table(rows, title=f"embedded S3 server: patched vs moto's own code, medians of {args.runs} alternating runs, "
                            f"{IN_FLIGHT} in flight, {time.perf_counter() - started:.0f} s")
    cpu = {r.label: r.ratio for r in rows}
    print(f"summary: server CPU with the patches, less by PUT {cpu['PUT 64 x 16 MiB, server CPU']:.1f}x, "
          f"ranged GET {cpu['200 ranged GETs of 16 KiB, server CPU']:.1f}x, "
          f"per small request {cpu['server CPU per small request']:.1f}x")

if __name__ == "__main__":
    main()
