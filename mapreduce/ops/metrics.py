"""Prometheus metrics of a miner, a validator or a peer, read off the records each role already produces.

The roles do not count anything themselves: a miner hands each :class:`~mapreduce.miner.MinerWindowReport`, a
validator each :class:`~mapreduce.validator.WindowReport` and a peer each
:class:`~mapreduce.peer.AllReduceResult` to its observers, and :meth:`RoleMetrics.observe` turns the record into
counter increments. Storage traffic is read at scrape time from the process's
:class:`~storage.TransferStats`, so it needs no hook at all.

Every metric lives in the instance's own :class:`~prometheus_client.CollectorRegistry` (tests can make several);
serving it over HTTP is the command line's business (``mapreduce/ops/cli.py``). The names and their meaning are
listed in ``docs/OPERATIONS.md``; ``tests/ops/test_metrics.py`` keeps that list and this module in step.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from storage import TransferStats

if TYPE_CHECKING:
    from ..miner import MinerWindowReport
    from ..peer import AllReduceResult
    from ..validator import WindowReport

# Seconds: windows last tens of seconds (local chain) to minutes (12 s blocks on finney).
SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, float("inf"))


class StorageCollector(Collector):
    """Exposes a :class:`TransferStats` as ``mapreduce_storage_*`` metrics, read when Prometheus scrapes."""

    def __init__(self, stats: TransferStats):
        self.stats = stats

    def collect(self) -> Iterable[Metric]:
        snap = self.stats.snapshot()
        sent = CounterMetricFamily("mapreduce_storage_bytes_sent", "Payload bytes stored by successful requests")
        sent.add_metric([], snap.bytes_sent)
        received = CounterMetricFamily("mapreduce_storage_bytes_received",
                                       "Payload bytes read by successful requests")
        received.add_metric([], snap.bytes_received)
        calls = SummaryMetricFamily("mapreduce_storage_call_seconds",
                                    "S3 calls by operation and the seconds they took, retries included",
                                    labels=["operation"])
        retries = CounterMetricFamily("mapreduce_storage_retries", "S3 attempts after the first one of a call",
                                      labels=["operation"])
        errors = CounterMetricFamily("mapreduce_storage_errors", "S3 calls that failed, by operation and error",
                                     labels=["operation", "error"])
        for op, s in sorted(snap.operations.items()):
            calls.add_metric([op], count_value=s.calls, sum_value=s.seconds)
            retries.add_metric([op], s.retries)
            for error, n in sorted(s.errors.items()):
                errors.add_metric([op, error], n)
        return [sent, received, calls, retries, errors]


class RoleMetrics:
    """What every role exposes: who it is, its last window, and its storage traffic."""

    role = "process"

    def __init__(self, hotkey: str, run_id: str, stats: TransferStats | None = None,
                 registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        info = Gauge("mapreduce_info", "Always 1; labels name this process's role, hotkey and run",
                     ["role", "hotkey", "run"], registry=self.registry)
        info.labels(self.role, hotkey, run_id).set(1)
        self.last_window = Gauge("mapreduce_last_window", "The last window this process finished",
                                 registry=self.registry)
        self.last_window_time = Gauge("mapreduce_last_window_timestamp_seconds",
                                      "Unix time when this process finished its last window (alert if stale)",
                                      registry=self.registry)
        if stats is not None:
            self.registry.register(StorageCollector(stats))

    def _finished(self, window: int) -> None:
        self.last_window.set(window)
        self.last_window_time.set(time.time())

    def observe(self, record: Any) -> None:
        """Count one window's record (the role's report type)."""
        raise NotImplementedError


class MinerMetrics(RoleMetrics):
    """``mapreduce_miner_*``: fed one :class:`MinerWindowReport` per window."""

    role = "miner"

    def __init__(self, hotkey: str, run_id: str, stats: TransferStats | None = None,
                 registry: CollectorRegistry | None = None):
        super().__init__(hotkey, run_id, stats, registry)
        r = self.registry
        self.windows = Counter("mapreduce_miner_windows", "Windows served", registry=r)
        self.late = Counter("mapreduce_miner_late_windows",
                            "Windows whose outputs were finished at or after the reduce deadline", registry=r)
        self.segments = Counter("mapreduce_miner_segments", "Assigned segments by outcome "
                                "(written, existing, no-inputs, late, failed)", ["status"], registry=r)
        self.inputs = Counter("mapreduce_miner_inputs_reduced", "Peer inputs included in written outputs",
                              registry=r)
        self.rejected = Counter("mapreduce_miner_inputs_rejected", "Peer inputs left out, by reason",
                                ["reason"], registry=r)
        self.window_seconds = Histogram("mapreduce_miner_window_seconds",
                                        "Seconds from the upload deadline until every assigned output was done",
                                        buckets=SECONDS_BUCKETS, registry=r)
        self.segment_seconds = Histogram("mapreduce_miner_segment_seconds",
                                         "Seconds to list, verify, reduce and write one segment",
                                         buckets=SECONDS_BUCKETS, registry=r)
        self.margin = Gauge("mapreduce_miner_deadline_margin_blocks",
                            "Blocks left before the reduce deadline when the last window finished "
                            "(0 or less: late)", registry=r)

    def observe(self, record: MinerWindowReport) -> None:
        self.windows.inc()
        if not record.on_time:
            self.late.inc()
        for o in record.outcomes:
            self.segments.labels(o.status).inc()
            if o.status == "written":
                self.inputs.inc(o.inputs)
            self.segment_seconds.observe(o.seconds)
        for reason, n in record.rejected.items():
            self.rejected.labels(reason).inc(n)
        self.window_seconds.observe(record.seconds)
        self.margin.set(record.reduce_deadline - record.finished_block)
        self._finished(record.window)


class ValidatorMetrics(RoleMetrics):
    """``mapreduce_validator_*``: fed one :class:`WindowReport` per window."""

    role = "validator"

    def __init__(self, hotkey: str, run_id: str, stats: TransferStats | None = None,
                 registry: CollectorRegistry | None = None):
        super().__init__(hotkey, run_id, stats, registry)
        r = self.registry
        self.windows = Counter("mapreduce_validator_windows", "Windows validated and scored", registry=r)
        self.checks = Counter("mapreduce_validator_checks", "Sampled (miner, segment) checks by status "
                              "(ok, missing, late, invalid, wrong)", ["status"], registry=r)
        self.rejected = Counter("mapreduce_validator_objects_rejected",
                                "Objects that failed verification during checks, by reason", ["reason"], registry=r)
        self.latency = Histogram("mapreduce_validator_output_latency_seconds",
                                 "Seconds from the upload deadline until the validator first saw an output",
                                 buckets=SECONDS_BUCKETS, registry=r)
        self.score = Gauge("mapreduce_validator_score", "A miner's score in the last window it was checked",
                           ["miner"], registry=r)
        self.ema = Gauge("mapreduce_validator_ema", "A miner's smoothed score (what weights are made of)",
                         ["miner"], registry=r)
        self.weights = Counter("mapreduce_validator_weights_set", "Times weights were set on chain", registry=r)
        self.weights_window = Gauge("mapreduce_validator_last_weights_window",
                                    "The window at which weights were last set on chain", registry=r)
        self.fetched = Counter("mapreduce_validator_bytes_fetched",
                               "Bytes read with ranged GETs to check outputs", registry=r)
        self.checked = Counter("mapreduce_validator_output_bytes_checked",
                               "Total size of the outputs those reads checked", registry=r)

    def observe(self, record: WindowReport) -> None:
        self.windows.inc()
        for c in record.checks:
            self.checks.labels(c.status).inc()
            if c.latency is not None:
                self.latency.observe(max(0.0, c.latency))
        for reason, n in record.rejected.items():
            self.rejected.labels(reason).inc(n)
        for miner, s in record.scores.items():
            self.score.labels(miner).set(s)
        for miner, s in record.ema.items():
            self.ema.labels(miner).set(s)
        if record.weights_set:
            self.weights.inc()
            self.weights_window.set(record.window)
        self.fetched.inc(record.bytes_fetched)
        self.checked.inc(record.output_bytes_checked)
        self._finished(record.window)


class PeerMetrics(RoleMetrics):
    """``mapreduce_peer_*``, for training loops that want to export theirs: fed each :class:`AllReduceResult`."""

    role = "peer"

    def __init__(self, hotkey: str, run_id: str, stats: TransferStats | None = None,
                 registry: CollectorRegistry | None = None):
        super().__init__(hotkey, run_id, stats, registry)
        r = self.registry
        self.windows = Counter("mapreduce_peer_windows", "All-reduces finished", registry=r)
        self.segments = Counter("mapreduce_peer_segments", "Segments by where their average came from "
                                "(replica, self-reduced, own)", ["source"], registry=r)
        self.rejected = Counter("mapreduce_peer_objects_rejected", "Outputs or inputs rejected, by reason",
                                ["reason"], registry=r)
        self.seconds = Histogram("mapreduce_peer_allreduce_seconds", "Seconds one all-reduce took",
                                 buckets=SECONDS_BUCKETS, registry=r)
        self.included = Gauge("mapreduce_peer_peers_included",
                              "Peers in the smallest segment average of the last window", registry=r)

    def observe(self, record: AllReduceResult) -> None:
        self.windows.inc()
        for s in record.segments:
            self.segments.labels(s.source).inc()
        for reason, n in record.rejected.items():
            self.rejected.labels(reason).inc(n)
        self.seconds.observe(record.seconds)
        self.included.set(record.peers_included)
        self._finished(record.window)


ROLE_METRICS: dict[str, type[RoleMetrics]] = {"miner": MinerMetrics, "validator": ValidatorMetrics,
                                              "peer": PeerMetrics}
