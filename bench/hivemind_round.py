"""hivemind's averaging of P fp32 tensors on 127.0.0.1, for `python -m bench` to compare a window round with.

Standalone: it runs under the separate virtualenv that ``make bench-baselines`` builds (``.venv-baselines``: torch
as the project pins it, then hivemind 1.1.12), never under the project's, and imports nothing from the project.

    .venv-baselines/bin/python bench/hivemind_round.py --peers 4 --mib 16 --reps 3

One process holds P `hivemind.DHT` + `hivemind.averaging.DecentralizedAverager` pairs, as hivemind's own
``benchmarks/benchmark_averaging.py`` does; that is not one process doing the work: each DHT runs in its own
process with its own p2pd daemon (libp2p, the Go binary hivemind ships), and each averager is its own process that
talks to the others through its DHT's p2pd, so P peers are 3P processes. The first DHT listens on 127.0.0.1 and
the others bootstrap from it. Every averager holds one tensor of ``--mib`` MiB (fp32, N(0, 1), a seed per peer)
and averages with ``target_group_size = min_group_size = P`` (one group of everyone: the leader starts the
all-reduce as soon as the group is full, before its ``min_matchmaking_time``, 5 s by default), no compression
(fp32 on the wire, as the window's fp32 cases), hivemind's default part size and load balancing (butterfly
all-reduce: each peer reduces 1/P of the vector).

One averaging round is one ``step()`` on every averager at once (``wait=False``, then wait for all): matchmaking
in the DHT, then the all-reduce. The first round warms up (connections, the DHT's records) and is not counted;
before each round every averager's tensor is reset to its peer's gradient (averaging is in place). It prints one
JSON line on stdout: the median round in seconds, every round, the group size each step reported, and the max
|average - exact mean| over the peers after the last round (exact mean in fp64). hivemind's logs go to stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

MiB = 1024 * 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--mib", type=int, default=16, help="MiB of fp32 tensor per peer")
    parser.add_argument("--reps", type=int, default=3, help="timed rounds after the warm-up round")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one step may take")
    args = parser.parse_args(argv)
    os.environ.setdefault("HIVEMIND_LOGLEVEL", "WARNING")

    import torch
    import hivemind
    from hivemind.averaging import DecentralizedAverager

    torch.set_num_threads(1)  # 3P processes share the machine's cores
    numel = args.mib * MiB // 4
    grads = [torch.randn(numel, generator=torch.Generator().manual_seed(2000 + i)) for i in range(args.peers)]
    exact = torch.zeros(numel, dtype=torch.float64)
    for g in grads:
        exact += g.double()
    exact /= args.peers

    dhts = [hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"])]
    bootstrap = [str(m) for m in dhts[0].get_visible_maddrs()]
    dhts += [hivemind.DHT(start=True, initial_peers=bootstrap, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
             for _ in range(args.peers - 1)]
    averagers = [DecentralizedAverager([g.clone()], dht, prefix="bench", target_group_size=args.peers,
                                       min_group_size=args.peers, start=True)
                 for g, dht in zip(grads, dhts)]
    rounds: list[float] = []
    groups: list[int] = []
    try:
        for rep in range(args.reps + 1):
            for a, g in zip(averagers, grads):
                with a.get_tensors() as tensors:
                    tensors[0].copy_(g)
            started = time.perf_counter()
            controls = [a.step(wait=False, timeout=args.timeout) for a in averagers]
            gathered = [c.result() for c in controls]
            elapsed = time.perf_counter() - started
            sizes = [len(x) if x else 0 for x in gathered]
            if rep:
                rounds.append(elapsed)
                groups += sizes
            if min(sizes) != args.peers:
                raise RuntimeError(f"round {rep}: groups of {sorted(set(sizes))} peers, expected {args.peers}")
        errs = []
        for a in averagers:
            with a.get_tensors() as tensors:
                errs.append(float((tensors[0].double() - exact).abs().max()))
        error = max(errs)
        print(json.dumps({"seconds": statistics.median(rounds), "rounds": rounds, "group_sizes": sorted(set(groups)),
                          "error_max": error,
                          "mean_abs_max": float(exact.abs().max()), "peers": args.peers, "mib_per_peer": args.mib,
                          "hivemind": hivemind.__version__, "torch": torch.__version__}), flush=True)
    finally:
        for a in averagers:
            a.shutdown()
        for d in dhts:
            d.shutdown()


if __name__ == "__main__":
    sys.exit(main())
