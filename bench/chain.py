"""`SteppedChain` (the local chain with blocks produced on demand) lives in `mapreduce.chain.stepped`, where the role
tests' driver (tests/support/driver.py) uses it too; re-exported here for the benchmarks."""
from __future__ import annotations

from mapreduce.chain.stepped import SteppedChain

__all__ = ["SteppedChain"]
