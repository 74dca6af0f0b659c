"""Hash rates per 16 KiB chunk, the unit of the hash tree and of the proof of possession, on 1 and 2 threads:
the measurement behind keeping sha256 (BENCHMARKS.md, "The whole per-input reduce path").

    python -m bench.hashes [--mib 64]

Rows: sha256 per chunk (what `mapreduce.wire.hashtree` does), salted sha256 per chunk (the proof rows), and, when
the `blake3` package is importable (it is not a requirement of the project: ``pip install blake3`` into a scratch
virtualenv with numpy and torch, or the project's own), BLAKE3 per chunk, keyed BLAKE3 per chunk (a natural proof
of possession) and BLAKE3 over the whole buffer. Each against a memory copy of the same buffer (torch ``copy_``
into an existing tensor), best of 3.
"""
from __future__ import annotations

import argparse
import hashlib
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch

from mapreduce.wire import hashtree

from .table import Row, print_table
from .timing import best_seconds

CHUNK = hashtree.CHUNK_BYTES


def _per_chunk(data: memoryview, digest: Callable[[memoryview], bytes], threads: int) -> Callable[[], None]:
    """Hash every chunk of ``data`` on ``threads`` threads, each a contiguous run (as hashtree does)."""
    n = len(data) // CHUNK
    step = -(-n // threads)
    pool = ThreadPoolExecutor(threads)

    def run(first: int) -> None:
        for i in range(first, min(n, first + step)):
            digest(data[i * CHUNK:(i + 1) * CHUNK])

    return lambda: list(pool.map(run, range(0, n, step)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hashes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=64, help="MiB hashed per measurement")
    args = parser.parse_args(argv)
    src = torch.randint(0, 256, (args.mib << 20,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    dst = torch.empty_like(src)
    data = memoryview(src.numpy()).cast("B")
    size = len(data)
    copy_rate = size / best_seconds(lambda: dst.copy_(src)) / 1e9

    salt = hashlib.sha256(b"bench-hashes").digest()
    salted = hashlib.sha256(salt)

    def sha(chunk: memoryview) -> bytes:
        return hashlib.sha256(chunk).digest()

    def salted_sha(chunk: memoryview) -> bytes:
        h = salted.copy()
        h.update(chunk)
        return h.digest()[:hashtree.PROOF_BYTES]

    cases: list[tuple[str, Callable[[], object]]] = []
    for threads in (1, 2):
        cases.append((f"sha256 per chunk, {threads} thread(s)", _per_chunk(data, sha, threads)))
        cases.append((f"salted sha256 per chunk (proof rows), {threads} thread(s)",
                      _per_chunk(data, salted_sha, threads)))
    try:
        import blake3  # not a requirement of the project: see the module docstring
    except ImportError:
        blake3 = None
    if blake3 is not None:
        for threads in (1, 2):
            cases.append((f"BLAKE3 per chunk, {threads} thread(s)",
                          _per_chunk(data, lambda c: blake3.blake3(c).digest(), threads)))
            cases.append((f"keyed BLAKE3 per chunk, {threads} thread(s)",
                          _per_chunk(data, lambda c: blake3.blake3(c, key=salt).digest(8), threads)))
        cases.append(("BLAKE3 one-shot over the buffer, 2 threads",
                      lambda: blake3.blake3(data, max_threads=2).digest()))
    rows = [Row("memory copy (torch copy_)", copy_rate, None, unit="GB/s", note=f"{args.mib} MiB")]
    for label, fn in cases:
        rows.append(Row(label, size / best_seconds(fn) / 1e9, copy_rate, unit="GB/s", note="vs memory copy"))
    if blake3 is None:
        rows.append(Row("BLAKE3", float("nan"), None, unit="GB/s", note="skipped: the blake3 package is not installed"))
    print_table(rows, title=f"hash rates per {CHUNK // 1024} KiB chunk, {args.mib} MiB, best of 3")


if __name__ == "__main__":
    main()
