"""``python -m mapreduce swarm``: run the local swarm, print a row per window as it closes, check the results."""
from __future__ import annotations

import os
import statistics
import time

from storage import EmbeddedS3, FaultPlan, FaultProxy

from ..chain.local import LocalChain
from .data import Digits
from .model import make_model
from .ops import metrics_urls, plots_line
from .orchestrator import Swarm, SwarmConfig
from .replay import Equivalence, Training, compare_with_single_process


def run_swarm(cfg: SwarmConfig) -> int:
    """Run it; return the process exit code (0 when every check passed)."""
    started = time.monotonic()
    swarm = Swarm(cfg)
    cfg = swarm.cfg  # with its block time
    spec = swarm.prepare()
    table = WindowTable(swarm)
    print(f"run {swarm.run_id}: {cfg.peers} peers, {cfg.miners} miners, 1 validator, {cfg.windows} windows; "
          f"{spec.numel:,} parameters in {spec.segments} segments, redundancy {spec.redundancy}, "
          f"{spec.wire_dtype} on the wire; block {cfg.block_time}s, window {cfg.blocks_per_window} blocks")
    if swarm.auto_block_time and cfg.block_time > 1.0:
        print(f"block time {cfg.block_time}s: {cfg.processes} processes on {os.cpu_count()} cores "
              "(--block-time sets it)")
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
            table.header()
            swarm.wait_done(s3, first, timeout, on_window=table.row)
        except RuntimeError as e:
            print(f"FAILED: {e}")
            return 2
        finally:
            swarm.stop()
        plots = plots_line(swarm, s3, first)  # while the S3 server is up: it reads the validator's bucket
        injected = dict(proxy.counts)
    training = Training(spec, [p["hotkey"] for p in swarm.ids["peers"]], cfg.model, cfg.lr, cfg.batch)
    equivalence = compare_with_single_process(swarm.dir, training, swarm.peer_windows(),
                                              range(first, first + cfg.windows))
    code = table.finish(time.monotonic() - started, equivalence)
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


LEGEND = """\
  peers      fewest peers in any segment's average / peers (all of them: nobody was left out)
  reduced    segments every peer took from a miner's output / segments (the rest were reduced by peers themselves)
  checked    validator checks that passed / checks made; latency: their median seconds from the settle time
             until the validator first saw the output
  peer s     the slowest peer's seconds for its allreduce (upload, wait for the reduce phase, download)
  loss       training loss on the peers' own batches before the step; eval and acc: loss and accuracy on the
             held-out test digits after the step. All three are means over peers
  max |diff| largest |peer average - exact mean of every peer's gradient| (topk: of what every peer sent, its
             gradient plus its residual); bound: what fp32 accumulation and the
             wire format's rounding allow (swarm/orchestrator.py tolerance); match: max |diff| <= bound
  scores     per miner, this window's score / its EMA (the weight it earns; it starts at 0 and climbs). An
             honest miner scores 1.0 when its output appeared within 1 s of the settle time, less (down to
             0.75) the later in the reduce phase it appeared: below 1.0 with every check ok means slow, not wrong"""


class WindowTable:
    """The swarm's table: one row per window, printed as the window closes; then the checks over all of them."""

    def __init__(self, swarm: Swarm) -> None:
        self.swarm = swarm
        self.cfg = swarm.cfg
        self.miners = [m["hotkey"] for m in swarm.ids["miners"]]
        self.failures: list[str] = []
        self.notes: list[str] = []  # with faults injected, fallbacks and late outputs are expected: not failures
        self.lost: list[int] = []  # windows in which some honest peer did not get the exact full average
        self.losses: list[float] = []
        self.accuracies: list[float] = []
        self.worst: list[float] = []

    def header(self) -> None:
        header = (f"{'window':>6} {'peers':>5} {'reduced':>7} {'checked':>7} {'fallbacks':>9} {'latency':>8} "
                  f"{'peer s':>6} {'loss':>7} {'eval':>7} {'acc':>5} {'max |diff|':>10} {'bound':>8} {'match':>5}  "
                  "scores (window/ema)")
        print(LEGEND)
        print(header)
        print("-" * len(header), flush=True)

    def row(self, w: int, report: dict) -> None:
        cfg, tolerated = self.cfg, self.notes if self.cfg.faults else self.failures
        rows = self.swarm.peer_windows().get(w, [])
        if len(rows) != cfg.peers:
            self.failures.append(f"window {w}: {len(rows)}/{cfg.peers} peers finished it")
            self.lost.append(w)
            print(f"{w:>6} {len(rows):>2}/{cfg.peers:<2} peers finished it", flush=True)
            return
        included = min(r["peers_included"] for r in rows)
        fallbacks = sum(s != "replica" for r in rows for s in r["sources"])
        checks = report.get("checks", [])
        reduced = sum(all(r["sources"][i] == "replica" for r in rows) for i in range(cfg.segments))
        ok_checks = sum(c["status"] == "ok" for c in checks)
        latencies = [c["latency"] for c in checks if c.get("latency") is not None]
        latency = f"{statistics.median(latencies):.2f}s" if latencies else "-"
        worst, bound = self.swarm.reference_check(w)
        self.worst.append(worst)
        match = worst <= bound
        loss = statistics.mean(r["train_loss"] for r in rows)
        eval_loss = statistics.mean(r["eval_loss"] for r in rows)
        self.losses.append(eval_loss)
        accuracy = statistics.mean(r["test_accuracy"] for r in rows)
        self.accuracies.append(accuracy)
        scores = " ".join(f"m{i}:{report.get('scores', {}).get(h, 0):.2f}/{report.get('ema', {}).get(h, 0):.2f}"
                          for i, h in enumerate(self.miners))
        print(f"{w:>6} {included:>2}/{cfg.peers:<2} {reduced:>3}/{cfg.segments:<3} {ok_checks:>3}/{len(checks):<3} "
              f"{fallbacks:>9} {latency:>8} {max(r['seconds'] for r in rows):>6.2f} {loss:>7.4f} {eval_loss:>7.4f} "
              f"{accuracy:>5.3f} {worst:>10.2e} {bound:>8.1e} {'yes' if match else 'NO':>5}  {scores}", flush=True)
        if included != cfg.peers or not match:
            self.lost.append(w)
        if included != cfg.peers:
            self.failures.append(f"window {w}: only {included}/{cfg.peers} peers in some segment's average")
        if fallbacks:
            tolerated.append(f"window {w}: {fallbacks} segment(s) fell back instead of using a miner's output")
        if not match:
            self.failures.append(f"window {w}: averaged gradient off the reference mean by {worst:.3e} > {bound:.3e}")
        if not report:
            tolerated.append(f"window {w}: no validator report")
        bad = [c for c in checks if c["status"] != "ok" or c["score"] <= 0]
        if bad:
            tolerated.append(f"window {w}: validator found {len(bad)} bad output(s): "
                             + "; ".join(f"{c['miner'][:8]} s{c['segment']} {c['status']} {c['reason']}"
                                         for c in bad))

    def finish(self, seconds: float, equivalence: Equivalence) -> int:
        """Print the checks over every window and the comparison with single-process training; the exit code (0
        when all passed)."""
        print()
        if self.losses:
            went_down = self.losses[-1] < self.losses[0]
            print(f"eval loss {self.losses[0]:.4f} -> {self.losses[-1]:.4f}: "
                  f"{'went down' if went_down else 'DID NOT go down'}")
            if not went_down:
                self.failures.append("eval loss did not go down")
        if self.accuracies:
            # from the shared initial weights (every peer starts from make_model's seed) to after the last window
            digits = Digits(self.cfg.peers)
            initial = digits.evaluate(make_model(**self.cfg.model))[1]
            went_up = self.accuracies[-1] > initial
            print(f"test accuracy {initial:.2f} -> {self.accuracies[-1]:.2f} (initial weights -> after the last "
                  f"window, mean over peers, on {len(digits.test[1])} held-out digits): "
                  f"{'went up' if went_up else 'DID NOT go up'}")
            if not went_up:
                self.failures.append("test accuracy did not go up")
        print(f"largest |averaged - reference mean| over all peers and windows: "
              f"{max(self.worst, default=float('nan')):.3e}")
        print(equivalence.line())
        if equivalence.failed:
            self.failures.append(f"the swarm's final weights are off single-process training's by "
                                 f"{equivalence.worst:.3e} > {equivalence.bound:.1e}")
        print(f"lost windows for honest peers: {len(self.lost)} of {self.cfg.windows}"
              + (f" ({self.lost})" if self.lost else ""))
        for n in self.notes:
            print(f"  note: {n}")
        print(f"finished in {seconds:.1f}s")
        if self.failures:
            print("CHECKS FAILED:")
            for f in self.failures:
                print(f"  - {f}")
            if self.lost:
                print(f"what to change: peers were left out of averages, which happens when processes miss their "
                      f"phase on a busy machine; run with --block-time {1.5 * self.cfg.block_time:.2f} (now "
                      f"{self.cfg.block_time}) or fewer --peers/--miners. The miners' logs say LATE when they "
                      f"missed a reduce deadline: {self.swarm.dir / 'logs'}")
            return 1
        print("all checks passed")
        return 0
