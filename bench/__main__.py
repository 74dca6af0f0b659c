"""The benchmark suite: one table, every figure next to a baseline measured in the same run, then a summary line.

    python -m bench [--quick] [--reps N] [--no-gloo] [--no-hivemind] [--diagnostics]

On the embedded S3 server (moto, subprocess, 127.0.0.1), in this order:

1. the server's raw rates (boto3 configured as the project's client, concurrent PUT then GET) for each window's
   input size;
2. window rounds (`bench.window`) for P=4 x 64 MiB, P=8 x 32 MiB and P=16 x 16 MiB in fp32, and P=4 x 64 MiB in
   bf16 and in int8 (mapreduce/wire/formats.py): the round time against the server limit (the bytes the protocol must move / the raw rates), against the
   naive all-gather through the same server with plain boto3 (`bench.naive`: every peer PUTs its gradient and GETs
   everyone else's), against hivemind 1.1.12's averaging (`bench/hivemind_round.py`, in the separate
   ``.venv-baselines`` that ``make bench-baselines`` builds; "skipped" without it) and against gloo;
3. the miner's reduce: the add alone and the in-memory per-input path (`bench.reduce`), and the whole path in a
   miner process (`bench.miner_proc`), each against torch's memory-copy bandwidth;
4. the validator's bytes fetched per byte of output it validated (from the window rounds);
5. the peak RSS of one miner process with P = 4, 16, 32 inputs of a 64 MiB segment.

``--quick`` runs the same on a quarter of the data (16 MiB segments for the RSS runs) with one repetition.
``--diagnostics`` adds P=4 x 64 MiB with the peers' spot checks off (what the audits cost on moto).

The other benchmarks run on their own: ``python -m bench.storage`` (the storage layer against plain boto3, and the
codec) and ``python -m bench.scale`` (requests and bytes per role and window at scale, against the formulas of
docs/SCALING.md; ``--extrapolate`` for the projection to a large run).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from mapreduce.wire.formats import FORMATS
from storage import EmbeddedS3

from .baselines import Hivemind, ServerRates, gloo_allreduce_seconds, hivemind_averaging, server_rates
from .miner_proc import miner_window
from .naive import NaiveResult, naive_allgather
from .reduce import reduce_rates
from .table import Row, print_table
from .window import WindowCase, WindowTiming, window_timings

MiB = 1024 * 1024


def _cases(quick: bool, diagnostics: bool = False) -> list[WindowCase]:
    """The same 256 MiB of gradients over P = 4, 8, 16 peers, so the crossover with the all-gather shows.

    Miners: a quarter of the peers (at least 2 for redundancy 2), as in docs/SCALING.md's projection (P = 256, M =
    64); segments: as many as miners, so that each miner holds 2 segments (S r / M) in every case."""
    scale = 4 if quick else 1
    cases = [WindowCase(4, 64 // scale, segments=2, miners=2, redundancy=2),
             WindowCase(8, 32 // scale, segments=2, miners=2, redundancy=2),
             WindowCase(16, 16 // scale, segments=4, miners=4, redundancy=2),
             WindowCase(4, 64 // scale, segments=2, miners=2, redundancy=2, wire_dtype="bfloat16"),
             WindowCase(4, 64 // scale, segments=2, miners=2, redundancy=2, wire_dtype="int8")]
    if diagnostics:  # what the peers' audits cost on this server (each ranged GET reads the whole object)
        cases.append(WindowCase(4, 64 // scale, segments=2, miners=2, redundancy=2, spot_check=False))
    return cases


def _baseline_case(case: WindowCase) -> bool:
    """The cases the other systems are measured for: fp32 on the wire (they all move fp32), default checks."""
    return case.wire_dtype == "float32" and case.spot_check


def _object_bytes(case: WindowCase) -> int:
    """The size of one input object's data: one segment in the wire format."""
    return int(case.mib_per_peer * MiB // 4 // case.segments * FORMATS[case.wire_dtype].bytes_per_element()[0])


def _best_rates(measured: list[ServerRates]) -> ServerRates:
    put, get = max(measured, key=lambda m: m.put), max(measured, key=lambda m: m.get)
    return ServerRates(put.object_bytes, put.put, get.get,
                       f"{put.note.split(', best of')[0]}, 4 and 16 threads; best of {len(measured)} measurements, "
                       "one before and one after each window case")


def _cpu_row(case: WindowCase, timings: list[WindowTiming], naive: NaiveResult) -> Row:
    """CPU seconds of one round, every process and the server, against the naive all-gather's: on a machine with
    few cores, CPU / cores is a floor under the round that no amount of overlap removes."""
    cores = os.cpu_count() or 1
    ours, theirs = _median(timings, "cpu"), naive.client_cpu + (naive.server_cpu or 0.0)
    server = _median(timings, "server_cpu") if all(t.server_cpu is not None for t in timings) else float("nan")
    return Row(f"window {case.label}: CPU seconds per round", ours, theirs, unit="s", higher_is_better=False,
               note=f"ours: roles {_median(timings, 'client_cpu'):.1f} + server {server:.1f}; naive all-gather: "
                    f"peers {naive.client_cpu:.1f} + server {naive.server_cpu or float('nan'):.1f} (its deletes "
                    f"included); on {cores} cores no round is shorter than CPU / {cores}: ours {ours / cores:.2f} s, "
                    f"naive {theirs / cores:.2f} s")


def _median(timings: list[WindowTiming], attr: str) -> float:
    return statistics.median(getattr(t, attr) for t in timings)


async def run(args: argparse.Namespace) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    summary: list[str] = []
    reps = args.reps or (1 if args.quick else 2)
    workdir = args.workdir
    cases = _cases(args.quick, args.diagnostics)
    async with EmbeddedS3() as s3:
        # 1 and 2. each case's windows between two measurements of the server's raw rates for objects of its input
        # size (one segment in the wire dtype); the better of the two counts, so the limit is never flattered by
        # a moment of load on this shared machine
        measured: dict[int, list[ServerRates]] = {}
        timings: dict[WindowCase, list[WindowTiming]] = {}
        naive: dict[WindowCase, NaiveResult | str] = {}
        hive: dict[WindowCase, Hivemind] = {}
        for case in cases:
            size = _object_bytes(case)
            volume = max(256 * MiB // (4 if args.quick else 1), 8 * size)
            measured.setdefault(size, []).append(await asyncio.to_thread(server_rates, s3, size, volume, reps=1))
            timings[case] = await window_timings(s3, case, reps, workdir)
            measured[size].append(await asyncio.to_thread(server_rates, s3, size, volume, reps=1))
            if _baseline_case(case):
                # the naive all-gather on the same server, right after the case's windows; then hivemind (no S3)
                try:
                    naive[case] = await asyncio.to_thread(naive_allgather, s3.endpoint_url, case.peers,
                                                          case.mib_per_peer, 3, s3.cpu_seconds)
                except Exception as exc:  # noqa: BLE001 - one failed baseline must not lose the whole table
                    naive[case] = f"{type(exc).__name__}: {exc}"[:200]
                hive[case] = (Hivemind(skipped="--no-hivemind") if args.no_hivemind else
                              await asyncio.to_thread(hivemind_averaging, case.peers, case.mib_per_peer, 3))
        rates = {size: _best_rates(ms) for size, ms in measured.items()}
        for size, r in sorted(rates.items()):
            rows.append(Row(f"server PUT, {size // MiB} MiB objects", r.put / 1e6, unit="MB/s", note=r.note))
            rows.append(Row(f"server GET, {size // MiB} MiB objects", r.get / 1e6, unit="MB/s", note=r.note))
        gloo: dict[WindowCase, float] = {}
        if not args.no_gloo:
            for case in cases:
                if _baseline_case(case):
                    gloo[case] = await asyncio.to_thread(gloo_allreduce_seconds, case.peers, case.numel)
        fp32_error = {}
        for case, ts in timings.items():
            rate = rates[_object_bytes(case)]
            t = ts[0]
            limit = t.put_bytes / rate.put + t.get_bytes / rate.get
            total = _median(ts, "total")
            phases = (f"upload {_median(ts, 'upload'):.2f} s, reduce {_median(ts, 'reduce'):.2f} s, "
                      f"download {_median(ts, 'download'):.2f} s (validator {_median(ts, 'validate'):.2f} s)")
            moved = f"{t.put_bytes / 1e6:,.0f} MB PUT + {t.get_bytes / 1e6:,.0f} MB GET"
            rows.append(Row(f"window {case.label}: round vs server limit", total, limit, unit="s",
                            higher_is_better=False, note=f"{total / limit:.2f}x the limit ({moved}); {phases}"))
            ratios = [f"round/limit {total / limit:.2f}x"]
            if case in naive:
                n = naive[case]
                if isinstance(n, NaiveResult):
                    rows.append(Row(f"window {case.label}: round vs naive all-gather through S3", total, n.seconds,
                                    unit="s", higher_is_better=False,
                                    note=f"{total / n.seconds:.2f}x its time; plain boto3, {case.peers} processes, "
                                         f"{case.peers} PUT + {case.peers * (case.peers - 1)} GET of "
                                         f"{case.mib_per_peer} MiB, median of {len(n.rounds)}; max |avg - mean| / "
                                         f"max |mean| {n.error_max / n.mean_abs_max:.1e} (ours {t.error_max:.1e})"))
                    ratios.append(f"round/naive {total / n.seconds:.2f}x")
                    rows.append(_cpu_row(case, ts, n))
                else:
                    rows.append(Row(f"window {case.label}: round vs naive all-gather through S3", total, None,
                                    unit="s", higher_is_better=False, note=f"naive: failed ({n})"))
                    ratios.append("round/naive failed")
            if case in hive:
                h = hive[case]
                if h.seconds is not None:
                    rows.append(Row(f"window {case.label}: round vs hivemind averaging", total, h.seconds, unit="s",
                                    higher_is_better=False,
                                    note=f"{total / h.seconds:.2f}x its time; hivemind 1.1.12 DecentralizedAverager, "
                                         f"{case.peers} peers on 127.0.0.1, step() median of {len(h.rounds)}; "
                                         f"max |avg - mean| / max |mean| {h.error_max:.1e}"))
                    ratios.append(f"round/hivemind {total / h.seconds:.2f}x")
                else:
                    rows.append(Row(f"window {case.label}: round vs hivemind averaging", total, None, unit="s",
                                    higher_is_better=False, note=f"hivemind: skipped ({h.skipped})"))
                    ratios.append("round/hivemind skipped")
            if case in gloo:
                rows.append(Row(f"window {case.label}: round vs gloo all_reduce", total, gloo[case], unit="s",
                                higher_is_better=False, note=f"{total / gloo[case]:.1f}x gloo's time"))
                ratios.append(f"round/gloo {total / gloo[case]:.0f}x")
            summary.append(f"{case.label}: " + ", ".join(ratios))
            if _baseline_case(case):
                fp32_error[(case.peers, case.mib_per_peer)] = t
            elif case.wire_dtype != "float32":
                ref = fp32_error.get((case.peers, case.mib_per_peer))
                rows.append(Row(f"window {case.label}: error vs exact mean", t.error_rel * 1e6,
                                ref.error_rel * 1e6 if ref else None, unit="ppm", higher_is_better=False,
                                note=f"||avg - mean|| / ||mean||, baseline fp32 wire; max |avg - mean| / max |mean| "
                                     f"{t.error_max:.1e} (fp32 {ref.error_max if ref else float('nan'):.1e})"))
                summary.append(f"{case.wire_dtype} error {t.error_rel:.1e}"
                               + (f" (fp32 {ref.error_rel:.1e})" if ref else ""))
            fb = sum(x.fallbacks for x in ts)
            bad = [c for x in ts for c in x.checks_bad]
            if fb or bad:  # every round must be correct for its time to mean anything
                summary.append(f"WARNING {case.label}: {fb} fallbacks, validator checks not ok: {bad[:2]}")

        # 3. reduce
        segment = (16 if args.quick else 64) * MiB
        red = await asyncio.to_thread(reduce_rates, segment, 4, 5)
        copy = red.copy
        rows.append(Row(f"memory copy (torch copy_), {segment // MiB} MiB", copy, unit="GB/s",
                        note="bytes copied per second, timed alternately with the adds below"))
        rows.append(Row("miner reduce: add alone, fp32 inputs", red.add_fp32, copy, unit="GB/s",
                        note="GB of input per s, vs memory copy"))
        rows.append(Row("miner reduce: add alone, bf16 inputs", red.add_bf16, copy, unit="GB/s",
                        note="GB of input per s (half the bytes per element)"))
        stages = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in red.stages.items())
        rows.append(Row("miner reduce: verify+prove+add, in memory", red.verify_prove_add, copy, unit="GB/s",
                        note=f"per {segment // MiB} MiB input: {stages}"))
        runs = []
        for peers in (4, 16, 32):
            runs.append(await miner_window(s3, peers, segment // MiB, workdir))
        whole = runs[1]
        whole_gbps = whole.peers * whole.segment_bytes / whole.produce_seconds / 1e9
        rows.append(Row(f"miner reduce: whole path from S3, P={whole.peers}", whole_gbps, copy, unit="GB/s",
                        note=f"list+fetch+verify+prove+add in a miner process; server GET alone "
                             f"{max(r.get for r in rates.values()) / 1e9:.2f} GB/s"))
        summary.append(f"reduce/memcopy: add {red.add_fp32 / copy:.2f}, in-memory path "
                       f"{red.verify_prove_add / copy:.2f}, whole path {whole_gbps / copy:.2f}")

        # 4. validator
        checked = {case: ts for case, ts in timings.items() if case.spot_check}
        for case, ts in checked.items():
            t = ts[0]
            pct = 100 * t.validator_fetched / max(1, t.validator_checked)
            rows.append(Row(f"validator: fetched / output bytes, {case.label}", pct, unit="%", higher_is_better=False,
                            note=f"{t.validator_fetched / 1e3:,.0f} kB fetched to check "
                                 f"{t.validator_checked / 1e6:,.1f} MB of outputs"))
        summary.append("validator " + ", ".join(
            f"{100 * ts[0].validator_fetched / max(1, ts[0].validator_checked):.2f}%" for ts in checked.values()))

        # 5. miner RSS
        for r in runs:
            budget = 3 * r.segment_bytes + 300 * MiB
            rows.append(Row(f"miner peak RSS, P={r.peers} x {r.segment_bytes // MiB} MiB segment", r.peak_rss / MiB,
                            unit="MiB", higher_is_better=False,
                            note=f"target <= {budget // MiB} MiB (3 x segment + 300 MiB); reduce took "
                                 f"{r.produce_seconds:.2f} s"))
        summary.append(f"miner RSS at P=32 {runs[-1].peak_rss / MiB:.0f} MiB "
                       f"(target {(3 * runs[-1].segment_bytes + 300 * MiB) // MiB})")
    return rows, summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the data, one repetition")
    parser.add_argument("--reps", type=int, default=0, help="measured windows per case (default 2, quick 1)")
    parser.add_argument("--no-gloo", action="store_true", help="skip the torch.distributed gloo baseline")
    parser.add_argument("--no-hivemind", action="store_true", help="skip the hivemind baseline")
    parser.add_argument("--diagnostics", action="store_true",
                        help="add P=4 x 64 MiB with the peers' spot checks off")
    args = parser.parse_args(argv)
    args.workdir = Path(tempfile.mkdtemp(prefix="mapreduce-bench-"))
    started = time.perf_counter()
    try:
        rows, summary = asyncio.run(run(args))
    finally:
        shutil.rmtree(args.workdir, ignore_errors=True)  # the runs' chain files
    print_table(rows, title=f"mapreduce benchmarks{' (--quick)' if args.quick else ''}: moto S3 on 127.0.0.1, "
                            f"{time.perf_counter() - started:.0f} s")
    print("ratio: ours vs baseline, above 1 means ours is better (time: baseline / ours; rate: ours / baseline)")
    print("summary: " + "; ".join(summary))


if __name__ == "__main__":
    main()
