"""The README's broadcast + all-reduce example, run as a user runs it, against the local swarm."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_example_broadcasts_then_trains_in_lockstep(tmp_path) -> None:
    # Generous blocks (1 s; phases of 4 s): a loaded 2-core machine must not make a peer miss an upload deadline.
    out = subprocess.run([sys.executable, "examples/broadcast_allreduce.py", "--peers", "3", "--steps", "2",
                          "--block-time", "1.0", "--run-dir", str(tmp_path / "run")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "all checks passed" in out.stdout
    assert len(re.findall(r"rank \d received it .*: bit-for-bit", out.stdout)) == 2
    assert len(re.findall(r"all-reduce; .* weights identical on every rank", out.stdout)) == 2
    hosted = re.search(r"validator: (\d+)/(\d+) hosted broadcast copies checked ok", out.stdout)
    assert hosted and hosted[1] == hosted[2] and int(hosted[1]) > 0
