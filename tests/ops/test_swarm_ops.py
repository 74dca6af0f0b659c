"""The local swarm, as a user runs it: its miners' and validator's metrics endpoints answer with the documented
names while it runs, and at its end ``python -m mapreduce report`` draws the validator's bucket into PNG files.

Only what this issue adds is asserted: whether the run's own checks pass on a loaded machine is
tests/system/test_swarm.py's concern."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from .helpers import ROOT, is_png
from .test_metrics import documented_names


def scrape(port: int) -> dict[str, list] | None:
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return None  # not up yet, or already gone
    return {f.name: f.samples for f in text_string_to_metric_families(body)}


def watch(proc: subprocess.Popen, run_dir: Path, timeout: float) -> dict[str, dict[str, list]]:
    """Scrape every endpoint of the swarm until it exits; keep each one's last answer."""
    last: dict[str, dict[str, list]] = {}
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        path = run_dir / "metrics.json"
        for name, port in (json.loads(path.read_text()) if path.exists() else {}).items():
            if (families := scrape(port)) is not None:
                last[name] = families
        time.sleep(0.5)
    return last


def total(families: dict[str, list], sample: str) -> float:
    return sum(s.value for samples in families.values() for s in samples if s.name == sample)


def test_swarm_metrics_while_running_and_report_pngs_at_the_end(tmp_path) -> None:
    run_dir = tmp_path / "run"
    # Half-second blocks keep it short: this test needs windows to finish and be reported, not to be fast enough
    # for the run's own checks (which tests/system judges at the swarm's default pace).
    proc = subprocess.Popen([sys.executable, "-m", "mapreduce", "swarm", "--windows", "2", "--peers", "2",
                             "--miners", "2", "--block-time", "0.5", "--run-dir", str(run_dir)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen = watch(proc, run_dir, timeout=240)
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # the swarm stops its processes on the way out
            proc.communicate(timeout=60)
    assert proc.returncode in (0, 1), out  # 1: a check of the run failed (tests/system covers those)

    assert sorted(seen) == ["miner-0", "miner-1", "validator-0"], out[-3000:]
    docs = documented_names()
    for name, families in seen.items():
        role = name.split("-")[0]
        wanted = {n.removesuffix("_total") if n.endswith("_total") else n
                  for n, r in docs.items() if r in ("all", role)}
        assert wanted <= set(families), (name, sorted(wanted - set(families)))
        info = families["mapreduce_info"][0].labels
        assert info["role"] == role and info["run"].startswith("swarm-")
        # the role's observer fired: it finished windows (how well is the system tests' business, not ours)
        assert total(families, f"mapreduce_{role}_windows_total") >= 1
        assert total(families, "mapreduce_storage_call_seconds_count") > 0

    plots = run_dir / "plots"
    assert f"plots: {plots / 'scores.png'}, {plots / 'latency.png'}, {plots / 'rejections.png'}, " \
           f"{plots / 'loss.png'}" in out
    assert all(is_png(plots / f) for f in ("scores.png", "latency.png", "rejections.png", "loss.png"))
    command = (run_dir / "logs" / "report.log").read_text()
    assert "python -m mapreduce report --bucket " in command and "2 windows" in command
    assert "testing" not in command  # the S3 keys are not written down, not even moto's dummy ones
