"""How often torch's first ``sqrt`` in a process comes out wrong when threads race it, with and without
`mapreduce.kernels.warm_math_kernels` first: the measurement behind that module.

    python -m bench.kernels [--processes 100] [--threads 9]

Each trial is a fresh Python process (VML initialises once per process): ``--threads`` threads call ``sqrt`` on the
same 8192 float32 values at once, as the process's first VML call, then one more call gives the reference. A trial
fails when any of the racing results differs from the reference; the failed chunk is reported (whole 4096-element
halves, at relative errors up to ~3e-4). Variants: ``cold`` (nothing before the race) and ``warm`` (a `Network`'s
warm-up first). Failures are rare events, so the counts are small: a few in a hundred cold trials on 2 cores.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import threading

VALUES = 8192  # four chunks of torch's 2048-element grain: the race shows as whole chunks


def trial(warm: bool, threads: int) -> str:
    """One race in this process: ``ok``, or where and how far the bad result is off."""
    import torch

    if warm:
        from mapreduce.kernels import warm_math_kernels

        warm_math_kernels()
    x = torch.rand(VALUES, generator=torch.Generator().manual_seed(0)) * 1e-10 + 1e-12
    results: dict[int, torch.Tensor] = {}
    start = threading.Barrier(threads)

    def race(i: int) -> None:
        start.wait()
        results[i] = x.sqrt()

    racers = [threading.Thread(target=race, args=(i,)) for i in range(threads)]
    for t in racers:
        t.start()
    for t in racers:
        t.join()
    reference, exact = x.sqrt(), x.double().sqrt()
    for got in results.values():
        bad = (got != reference).nonzero().flatten()
        if len(bad):
            error = float(((got.double() - exact).abs() / exact)[bad].max())
            return f"elements {int(bad.min())}-{int(bad.max())} differ, relative error up to {error:.1e}"
    return "ok"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.kernels", description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=100, help="fresh processes per variant")
    parser.add_argument("--threads", type=int, default=9, help="threads racing the first sqrt in each")
    parser.add_argument("--trial", choices=("cold", "warm"), help=argparse.SUPPRESS)  # one trial, in a child
    args = parser.parse_args(argv)
    if args.trial:
        print(trial(args.trial == "warm", args.threads))
        return
    print(f"first sqrt of {VALUES} float32 values raced by {args.threads} threads, one fresh process per trial")
    for variant in ("cold", "warm"):
        outcomes = []
        for _ in range(args.processes):
            child = subprocess.run([sys.executable, "-m", "bench.kernels", "--trial", variant, "--threads",
                                    str(args.threads)], capture_output=True, text=True, check=True)
            outcomes.append(child.stdout.strip())
        failed = [o for o in outcomes if o != "ok"]
        print(f"{variant:5s} {len(failed)} of {len(outcomes)} processes got a wrong result"
              + (f" (e.g. {failed[0]})" if failed else ""))


if __name__ == "__main__":
    main()
