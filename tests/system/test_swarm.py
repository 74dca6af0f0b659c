"""The README's main job, as a user runs it: real processes, the embedded S3 server, the local chain."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("script", ["miner.py", "validator.py"])
def test_help_lists_bucket_and_bittensor_flags(script: str) -> None:
    out = run(script, "--help", timeout=60)
    assert out.returncode == 0, out.stderr
    for flag in ("--bucket", "--netuid", "--subtensor.network", "--wallet.name", "--wallet.hotkey",
                 "--logging.debug", "--whitelist.hotkeys", "--blacklist.hotkeys"):
        assert flag in out.stdout, f"{flag} missing from {script} --help"


def test_cli_names_a_missing_spec_clearly(tmp_path) -> None:
    out = run("miner.py", "--bucket", "some-bucket", "--spec", str(tmp_path / "nope.json"), timeout=60)
    assert out.returncode != 0
    assert "nope.json" in out.stderr and "Traceback" not in out.stderr


def test_swarm_runs_trains_and_matches_the_reference(tmp_path) -> None:
    out = run("-m", "mapreduce", "swarm", "--windows", "3", "--run-dir", str(tmp_path / "run"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "all checks passed" in out.stdout
    assert "went down" in out.stdout
    rows = [line for line in out.stdout.splitlines() if line.strip().split(" ")[0].isdigit()]
    assert len(rows) == 3 and all(" yes " in r for r in rows)
    # the held-out digits: better than chance after three windows
    accuracy = re.search(r"^test accuracy (\d\.\d+) -> (\d\.\d+) .*: went up$", out.stdout, re.M)
    assert accuracy and float(accuracy[1]) < 0.2 < 0.5 < float(accuracy[2]), out.stdout[-2000:]
    # every peer's final weights are those of training on one machine with the exact mean (swarm/replay.py)
    matches = re.search(r"^matches single-process training: max \|w - w_ref\| = (\S+), bound (\S+) ", out.stdout,
                        re.M)
    assert matches and float(matches[1]) <= float(matches[2]), out.stdout[-2000:]
    # every process left a log, and the validator kept its state
    logs = {p.name for p in (tmp_path / "run" / "logs").iterdir()}
    assert {"miner-0.log", "miner-1.log", "miner-2.log", "validator-0.log", "peer-0.log"} <= logs
    assert (tmp_path / "run" / "validator-state.json").exists()
    # One line per fact: no library warning in any role's log (a peer once warned every window).
    for log in (tmp_path / "run" / "logs").iterdir():
        text = log.read_text()
        assert "Warning" not in text, f"{log.name}: {[line for line in text.splitlines() if 'Warning' in line][:3]}"
