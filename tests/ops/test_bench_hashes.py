"""`python -m bench.hashes` measures what BENCHMARKS.md quotes: sha256 per chunk on 1 and 2 threads against a memory
copy, and says when BLAKE3 is skipped (the project does not depend on it)."""
from __future__ import annotations

import re

from bench import hashes


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
