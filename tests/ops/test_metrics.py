"""Prometheus metrics: what each role's records turn into, the documented names, and a live endpoint."""
from __future__ import annotations

import argparse
import asyncio
import re
import urllib.request
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from mapreduce.ops.cli import SetupError, start_metrics
from mapreduce.ops.metrics import MinerMetrics, PeerMetrics, ValidatorMetrics
from mapreduce.miner import Miner, MinerWindowReport, SegmentOutcome
from mapreduce.peer import Peer
from mapreduce.scoring import SegmentCheck
from mapreduce.validator import Validator, WindowReport
from storage import TransferStats

ROOT = Path(__file__).resolve().parents[2]
M1, M2 = "5" + "A" * 47, "5" + "B" * 47


def miner_report(window: int = 7) -> MinerWindowReport:
    return MinerWindowReport(window, [SegmentOutcome(0, 3, "written", 0.4), SegmentOutcome(2, 3, "written", 0.6),
                                      SegmentOutcome(4, 0, "failed", 0.1)],
                             Counter({"late": 2, "bad_signature": 1}), finished_block=75, reduce_deadline=78,
                             seconds=1.2)


def validator_report(window: int = 7, weights: bool = True) -> WindowReport:
    checks = [SegmentCheck(M1, 0, "ok", latency=0.8, score=0.9, difference=0.0),
              SegmentCheck(M1, 1, "ok", latency=1.6, score=0.8, difference=0.0),
              SegmentCheck(M2, 0, "missing", reason="no output by the reduce deadline")]
    return WindowReport(window, "5" + "V" * 47, checks, {M1: 0.85, M2: 0.0}, {M1: 0.4, M2: 0.1},
                        weights_set=weights, bytes_fetched=4096, output_bytes_checked=100_000,
                        rejected={"hash_mismatch": 1})


def peer_result(window: int = 7) -> SimpleNamespace:
    segs = [SimpleNamespace(source="replica"), SimpleNamespace(source="replica"), SimpleNamespace(source="own")]
    return SimpleNamespace(window=window, segments=segs, rejected=Counter({"non_finite": 1}), seconds=2.5,
                           peers_included=4)


def test_miner_report_becomes_counters() -> None:
    m = MinerMetrics("5" + "M" * 47, "run-a")
    m.observe(miner_report())
    m.observe(miner_report(8))
    v = m.registry.get_sample_value
    assert v("mapreduce_miner_windows_total") == 2
    assert v("mapreduce_miner_late_windows_total") == 0
    assert v("mapreduce_miner_segments_total", {"status": "written"}) == 4
    assert v("mapreduce_miner_segments_total", {"status": "failed"}) == 2
    assert v("mapreduce_miner_inputs_reduced_total") == 12
    assert v("mapreduce_miner_inputs_rejected_total", {"reason": "late"}) == 4
    assert v("mapreduce_miner_window_seconds_count") == 2 and v("mapreduce_miner_window_seconds_sum") == 2.4
    assert v("mapreduce_miner_segment_seconds_count") == 6
    assert v("mapreduce_miner_deadline_margin_blocks") == 3
    assert v("mapreduce_last_window") == 8 and v("mapreduce_last_window_timestamp_seconds") > 1e9
    assert v("mapreduce_info", {"role": "miner", "hotkey": "5" + "M" * 47, "run": "run-a"}) == 1

    late = miner_report(9)
    late.finished_block = 80
    m.observe(late)
    assert v("mapreduce_miner_late_windows_total") == 1
    assert v("mapreduce_miner_deadline_margin_blocks") == -2


def test_validator_report_becomes_scores_and_counters() -> None:
    m = ValidatorMetrics("5" + "V" * 47, "run-a")
    m.observe(validator_report())
    m.observe(validator_report(8, weights=False))
    v = m.registry.get_sample_value
    assert v("mapreduce_validator_windows_total") == 2
    assert v("mapreduce_validator_checks_total", {"status": "ok"}) == 4
    assert v("mapreduce_validator_checks_total", {"status": "missing"}) == 2
    assert v("mapreduce_validator_objects_rejected_total", {"reason": "hash_mismatch"}) == 2
    assert v("mapreduce_validator_output_latency_seconds_count") == 4
    assert v("mapreduce_validator_output_latency_seconds_bucket", {"le": "1.0"}) == 2
    assert v("mapreduce_validator_score", {"miner": M1}) == 0.85
    assert v("mapreduce_validator_ema", {"miner": M2}) == 0.1
    assert v("mapreduce_validator_weights_set_total") == 1
    assert v("mapreduce_validator_last_weights_window") == 7
    assert v("mapreduce_validator_bytes_fetched_total") == 8192
    assert v("mapreduce_validator_output_bytes_checked_total") == 200_000
    assert v("mapreduce_last_window") == 8


def test_peer_result_becomes_counters() -> None:
    m = PeerMetrics("5" + "P" * 47, "run-a")
    m.observe(peer_result())
    v = m.registry.get_sample_value
    assert v("mapreduce_peer_windows_total") == 1
    assert v("mapreduce_peer_segments_total", {"source": "replica"}) == 2
    assert v("mapreduce_peer_segments_total", {"source": "own"}) == 1
    assert v("mapreduce_peer_objects_rejected_total", {"reason": "non_finite"}) == 1
    assert v("mapreduce_peer_allreduce_seconds_sum") == 2.5
    assert v("mapreduce_peer_peers_included") == 4


def test_storage_traffic_is_read_at_scrape_time() -> None:
    stats = TransferStats()
    m = MinerMetrics("5" + "M" * 47, "run-a", stats)
    v = m.registry.get_sample_value
    assert v("mapreduce_storage_bytes_sent_total") == 0
    stats.sent(1234)
    stats.received(99)
    with stats.call("PutObject"):
        pass
    stats.retried("PutObject")
    with pytest.raises(KeyError):
        with stats.call("GetObject"):
            raise KeyError("boom")
    assert v("mapreduce_storage_bytes_sent_total") == 1234
    assert v("mapreduce_storage_bytes_received_total") == 99
    assert v("mapreduce_storage_call_seconds_count", {"operation": "PutObject"}) == 1
    assert v("mapreduce_storage_retries_total", {"operation": "PutObject"}) == 1
    assert v("mapreduce_storage_errors_total", {"operation": "GetObject", "error": "KeyError"}) == 1


def exposed_names(registry) -> set[str]:
    """Metric names as they appear on the endpoint (counters with their _total suffix)."""
    return {f.name + "_total" if f.type == "counter" else f.name for f in registry.collect()}


def documented_names() -> dict[str, str]:
    """``name -> role`` from the metrics tables of docs/OPERATIONS.md (rows like ``| `mapreduce_x` | ...``)."""
    text = (ROOT / "docs" / "OPERATIONS.md").read_text()
    rows = re.findall(r"^\| `(mapreduce_[a-z_]+)` \| (\w+) \|", text, flags=re.M)
    return dict(rows)


def test_documented_names_are_exactly_the_exposed_ones() -> None:
    stats = TransferStats()
    with stats.call("PutObject"):
        stats.retried("PutObject")
    docs = documented_names()
    assert docs, "no metric table found in docs/OPERATIONS.md"
    for cls, record in ((MinerMetrics, miner_report()), (ValidatorMetrics, validator_report()),
                        (PeerMetrics, peer_result())):
        m = cls("5" + "M" * 47, "run-a", stats)
        m.observe(record)
        exposed = exposed_names(m.registry)
        documented = {n for n, role in docs.items() if role in ("all", cls.role)}
        assert exposed == documented, (cls.role, exposed ^ documented)


def test_metrics_port_in_use_is_a_setup_error() -> None:
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        args = argparse.Namespace(**{"metrics.port": busy.getsockname()[1], "metrics.host": "127.0.0.1"})
        net = SimpleNamespace(hotkey="5" + "M" * 47, spec=SimpleNamespace(run_id="r"),
                              pool=SimpleNamespace(stats=TransferStats()))
        with pytest.raises(SetupError, match="--metrics.port"):
            start_metrics(args, "miner", net, SimpleNamespace(observers=[]))


def scrape(port: int) -> dict[str, list]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(body)}


async def test_live_endpoint_of_miner_and_validator(cluster_factory, tmp_path) -> None:
    """Real roles for one window on the embedded S3 server, their metrics served over HTTP on 127.0.0.1."""
    c = await cluster_factory(peers=2, miners=1, redundancy=1, block_time=0.25)
    peers = [Peer(await c.join("peers", i), c.bucket_of("peers", i)) for i in range(2)]
    miner = Miner(await c.join("miners", 0), c.bucket_of("miners", 0))
    validator = Validator(await c.join("validators", 0), c.bucket_of("validators", 0), tmp_path / "v.json")
    args = argparse.Namespace(**{"metrics.port": 0, "metrics.host": "127.0.0.1"})
    servers = [start_metrics(args, "miner", miner.net, miner), start_metrics(args, "validator", validator.net,
                                                                                 validator)]
    try:
        assert all(s.server_address[0] == "127.0.0.1" for s in servers)
        window = await c.next_window()
        await c.nets[0].wait_for_block(c.spec.windows.phases(window).start_block)
        grads = [{t.name: (i + 1.0) * torch.ones(t.shape) for t in c.spec.tensors} for i in range(2)]
        results = await asyncio.gather(*(p.allreduce(g, window=window) for p, g in zip(peers, grads)),
                                       miner.run(windows=1), validator.validate_window(window))
        [mined_report], checked_report = results[2], results[3]
        mined = await asyncio.to_thread(scrape, servers[0].server_port)
        checked = await asyncio.to_thread(scrape, servers[1].server_port)
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()

    def value(families: dict[str, list], sample: str, **labels: str) -> float:
        return sum(s.value for samples in families.values() for s in samples
                   if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))

    # What the endpoints say is what the roles' own records say (how well the window went depends on the machine's
    # load and is the role tests' business; that every record is counted, and served, is ours).
    outcomes = Counter(o.status for o in mined_report.outcomes)
    assert value(mined, "mapreduce_miner_windows_total") == 1
    assert {status: value(mined, "mapreduce_miner_segments_total", status=status) for status in outcomes} == outcomes
    assert sum(outcomes.values()) == c.spec.segments  # one miner, redundancy 1: it holds every segment
    reduced = sum(o.inputs for o in mined_report.outcomes if o.status == "written")
    assert value(mined, "mapreduce_miner_inputs_reduced_total") == reduced
    segment_bytes = c.spec.numel * 4 // c.spec.segments
    assert value(mined, "mapreduce_storage_bytes_received_total") >= reduced * segment_bytes  # each input, read
    assert value(mined, "mapreduce_storage_call_seconds_count", operation="ListObjectsV2") >= c.spec.segments
    assert value(checked, "mapreduce_validator_windows_total") == 1
    statuses = Counter(ch.status for ch in checked_report.checks)
    assert {st: value(checked, "mapreduce_validator_checks_total", status=st) for st in statuses} == statuses
    for hotkey, score in checked_report.scores.items():
        assert value(checked, "mapreduce_validator_score", miner=hotkey) == pytest.approx(score)
    assert value(checked, "mapreduce_validator_bytes_fetched_total") == checked_report.bytes_fetched
    assert value(checked, "mapreduce_storage_call_seconds_count", operation="ListObjectsV2") > 0
