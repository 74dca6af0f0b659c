"""``python -m mapreduce swarm``: run the local swarm, print a table per window, check the results."""
from __future__ import annotations

import statistics
import time

from storage import EmbeddedS3, FaultPlan, FaultProxy

from ..chain.local import LocalChain
from .ops import metrics_urls, plots_line
from .orchestrator import Swarm, SwarmConfig


def run_swarm(cfg: SwarmConfig) -> int:
    """Run it; return the process exit code (0 when every check passed)."""
    started = time.monotonic()
    swarm = Swarm(cfg)
    spec = swarm.prepare()
    print(f"run {swarm.run_id}: {cfg.peers} peers, {cfg.miners} miners, 1 validator, {cfg.windows} windows; "
          f"{spec.numel:,} parameters in {spec.segments} segments, redundancy {spec.redundancy}, "
          f"{spec.wire_dtype} on the wire; block {cfg.block_time}s, window {cfg.blocks_per_window} blocks")
    print(f"logs and data: {swarm.dir}")
    with EmbeddedS3() as s3, FaultProxy(s3.endpoint_url, fault_plan(cfg.faults)) as proxy:
        chain = LocalChain.open(swarm.dir / "chain.sqlite")
        if cfg.faults:
            print(f"faults: {cfg.faults:.0%} of S3 requests answered 503, {cfg.faults / 5:.1%} reset, "
                  f"{cfg.faults / 100:.2%} stalled 3 s (fault proxy {proxy.endpoint_url})")
        try:
            swarm.start(s3, endpoint=proxy.endpoint_url if cfg.faults else None)
            print(f"metrics: {metrics_urls(swarm)}")
            first = swarm.wait_ready(chain)
            timeout = cfg.timeout or 120 + 2 * cfg.windows * cfg.blocks_per_window * cfg.block_time
            reports = swarm.wait_done(s3, first, timeout)
        except RuntimeError as e:
            print(f"FAILED: {e}")
            return 2
        finally:
            swarm.stop()
        plots = plots_line(swarm, s3, first)  # while the S3 server is up: it reads the validator's bucket
        injected = dict(proxy.counts)
    code = summarize(swarm, first, reports, time.monotonic() - started)
    if cfg.faults:
        print(f"injected: {injected.get('error', 0)} x 503, "
              f"{injected.get('reset_before', 0) + injected.get('reset_mid', 0)} resets, "
              f"{injected.get('stall', 0)} stalls in {injected.get('requests', 0)} requests")
    print(plots)
    return code


def fault_plan(share: float) -> FaultPlan:
    if not share:
        return FaultPlan()
    return FaultPlan(error_rate=share, reset_rate=share / 5, stall_rate=share / 100, stall_seconds=3.0, seed=None)


def summarize(swarm: Swarm, first: int, reports: dict[int, dict], seconds: float) -> int:
    cfg = swarm.cfg
    peer_windows = swarm.peer_windows()
    miners = [m["hotkey"] for m in swarm.ids["miners"]]
    failures: list[str] = []
    notes: list[str] = []  # with faults injected, fallbacks and late outputs are expected: reported, not failures
    tolerated = notes if cfg.faults else failures
    lost: list[int] = []  # windows in which some honest peer did not get the exact full average
    header = (f"{'window':>6} {'peers':>5} {'reduced':>7} {'checked':>7} {'fallbacks':>9} {'latency':>8} "
              f"{'peer s':>6} {'loss':>7} {'eval':>7} {'max |diff|':>10} {'match':>5}  validator scores (window/ema)")
    print(header)
    print("-" * len(header))
    losses = []
    for w in range(first, first + cfg.windows):
        rows = peer_windows.get(w, [])
        report = reports.get(w, {})
        if len(rows) != cfg.peers:
            failures.append(f"window {w}: {len(rows)}/{cfg.peers} peers finished it")
            lost.append(w)
            continue
        included = min(r["peers_included"] for r in rows)
        fallbacks = sum(s != "replica" for r in rows for s in r["sources"])
        checks = report.get("checks", [])
        reduced = sum(all(r["sources"][i] == "replica" for r in rows) for i in range(cfg.segments))
        ok_checks = sum(c["status"] == "ok" for c in checks)
        latencies = [c["latency"] for c in checks if c.get("latency") is not None]
        latency = f"{statistics.median(latencies):.2f}s" if latencies else "-"
        worst, tol = swarm.reference_check(w)
        match = worst <= tol
        loss = statistics.mean(r["train_loss"] for r in rows)
        eval_loss = statistics.mean(r["eval_loss"] for r in rows)
        losses.append(eval_loss)
        scores = " ".join(f"m{i}:{report.get('scores', {}).get(h, 0):.2f}/{report.get('ema', {}).get(h, 0):.2f}"
                          for i, h in enumerate(miners))
        print(f"{w:>6} {included:>2}/{cfg.peers:<2} {reduced:>3}/{cfg.segments:<3} {ok_checks:>3}/{len(checks):<3} "
              f"{fallbacks:>9} "
              f"{latency:>8} {max(r['seconds'] for r in rows):>6.2f} {loss:>7.4f} {eval_loss:>7.4f} "
              f"{worst:>10.2e} {'yes' if match else 'NO':>5}  {scores}")
        if included != cfg.peers or not match:
            lost.append(w)
        if included != cfg.peers:
            failures.append(f"window {w}: only {included}/{cfg.peers} peers in some segment's average")
        if fallbacks:
            tolerated.append(f"window {w}: {fallbacks} segment(s) fell back instead of using a miner's output")
        if not match:
            failures.append(f"window {w}: averaged gradient off the reference mean by {worst:.3e} > {tol:.3e}")
        if not report:
            tolerated.append(f"window {w}: no validator report")
        bad = [c for c in checks if c["status"] != "ok" or c["score"] <= 0]
        if bad:
            tolerated.append(f"window {w}: validator found {len(bad)} bad output(s): "
                             + "; ".join(f"{c['miner'][:8]} s{c['segment']} {c['status']} {c['reason']}"
                                         for c in bad))
    print()
    if losses:
        went_down = losses[-1] < losses[0]
        print(f"eval loss {losses[0]:.4f} -> {losses[-1]:.4f}: {'went down' if went_down else 'DID NOT go down'}")
        if not went_down:
            failures.append("eval loss did not go down")
    worst_all = max((swarm.reference_check(w)[0] for w in range(first, first + cfg.windows)
                     if len(peer_windows.get(w, [])) == cfg.peers), default=float("nan"))
    print(f"largest |averaged - reference mean| over all peers and windows: {worst_all:.3e}")
    print(f"lost windows for honest peers: {len(lost)} of {cfg.windows}" + (f" ({lost})" if lost else ""))
    for n in notes:
        print(f"  note: {n}")
    print(f"finished in {seconds:.1f}s")
    if failures:
        print("CHECKS FAILED:")
        for f in failures:
            print(f"  - {f}")
        return 1
    print("all checks passed")
    return 0
