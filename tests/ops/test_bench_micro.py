"""The micro-benchmarks run: `python -m bench.hashes` measures what BENCHMARKS.md quotes (sha256 per chunk on 1 and 2
threads against a memory copy, and says when BLAKE3 is skipped: the project does not depend on it), and the codec
section of `python -m bench.storage` encodes and decodes a real signed input (its key had lost its tag, and the
section failed with KeyMismatch), and `python -m bench.kernels` races torch's first sqrt in fresh processes, cold and
after a Network's warm-up (mapreduce/kernels.py)."""
from __future__ import annotations

import re

from bench import hashes, kernels
from bench.codec import codec_rows


def test_rates_against_a_memory_copy(capsys) -> None:
    hashes.main(["--mib", "2"])
    out = capsys.readouterr().out
    for label in ("sha256 per chunk, 1 thread(s)", "salted sha256 per chunk (proof rows), 2 thread(s)"):
        line = next(line for line in out.splitlines() if line.startswith(label))
        rate, baseline, ratio = re.search(r"([\d.]+)\s+([\d.]+)\s+GB/s\s+([\d.]+)x", line[len(label):]).groups()
        assert float(rate) > 0 and float(baseline) > 0 and float(ratio) > 0
    try:
        import blake3  # noqa: F401
    except ImportError:
        assert "skipped: the blake3 package is not installed" in out
    else:
        assert "keyed BLAKE3 per chunk, 1 thread(s)" in out


def test_codec_section_round_trips_a_signed_input() -> None:
    rows = {r.label: r for r in codec_rows(reps=1, size=4 << 20)}
    assert rows["encode 4 MiB fp32"].value > 0 and rows["decode 4 MiB fp32"].value > 0
    assert rows["sha256 tree alone, 4 MiB"].baseline == rows["memory copy 4 MiB (clone, allocating)"].value


def test_kernel_race_trials_run_in_fresh_processes(capsys) -> None:
    kernels.main(["--processes", "1", "--threads", "3"])
    out = capsys.readouterr().out
    # a failure is a rare event (bench.kernels' docstring): one trial may show it or not, but it must say which
    assert re.search(r"^cold  [01] of 1 processes got a wrong result", out, re.M), out
    assert re.search(r"^warm  0 of 1 processes got a wrong result", out, re.M), out
