"""The one timing rule of the micro-benchmarks: the best of ``reps`` runs (the machine is shared; the fastest run is
the one least disturbed)."""
from __future__ import annotations

import time
from typing import Callable


def best_seconds(fn: Callable[[], object], reps: int = 3) -> float:
    """Seconds of the fastest of ``reps`` calls of ``fn``."""
    best = float("inf")
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best
