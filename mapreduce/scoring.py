"""Scores: per miner per window from the validator's checks, smoothed into weights, kept across restarts.

For one sampled segment of one miner (see docs/PROTOCOL.md for the reasoning):

- difference ``d = ||o - r|| / (||r|| + eps)`` over the sampled elements, ``o`` the miner's output and ``r`` the
  validator's recomputation from the inputs the output lists; correctness ``c = max(0, 1 - d / max_difference)``,
  the negative normalised difference mapped onto [0, 1];
- completeness ``k = |included ∩ expected| / |expected|``, expected being the valid inputs the validator saw in the
  miner's bucket at the upload deadline;
- latency ``l = 1 - min(1, seconds from the upload deadline until the validator first saw the output / length of the
  reduce phase)``;
- ``score = c * k * (1 - latency_weight + latency_weight * l)``; a missing, late or invalid output, or one that
  includes an invalid input, scores 0, the worst.

A miner's window score is the mean over its sampled segments; ``ema = alpha * score + (1 - alpha) * ema``; weights
are the EMAs normalised to sum to one.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ScoringConfig:
    ema_alpha: float = 0.3
    max_difference: float = 1e-3
    latency_weight: float = 0.25
    # Set weights on chain every this many windows.
    weights_every: int = 5


@dataclass
class SegmentCheck:
    """What the validator found for one (miner, segment): the evidence behind a score."""

    miner: str
    segment: int
    status: str  # "ok", "missing", "late", "invalid", "wrong"
    reason: str = ""
    difference: float | None = None
    expected: int = 0
    included: int = 0
    included_expected: int = 0
    latency: float | None = None
    score: float = 0.0


def segment_score(check: SegmentCheck, cfg: ScoringConfig, reduce_seconds: float) -> float:
    if check.status != "ok" or check.difference is None or not math.isfinite(check.difference):
        return 0.0
    correctness = max(0.0, 1.0 - check.difference / cfg.max_difference)
    completeness = check.included_expected / check.expected if check.expected else 1.0
    lateness = 1.0 if check.latency is None else min(1.0, max(0.0, check.latency) / max(reduce_seconds, 1e-9))
    return correctness * completeness * (1.0 - cfg.latency_weight + cfg.latency_weight * (1.0 - lateness))


@dataclass
class Scoreboard:
    """EMA scores per miner hotkey, and which windows are done: the validator's state across restarts."""

    ema: dict[str, float] = field(default_factory=dict)
    last_window: int = -1
    last_weights_window: int = -1

    def update(self, window: int, scores: dict[str, float], alpha: float) -> None:
        for hotkey, score in scores.items():
            self.ema[hotkey] = alpha * score + (1.0 - alpha) * self.ema.get(hotkey, 0.0)
        self.last_window = max(self.last_window, window)

    def weights(self, uids: dict[str, int]) -> tuple[list[int], list[float]]:
        """Normalised weights for the registered hotkeys among ours (``uids``: hotkey -> uid)."""
        pairs = [(uids[h], s) for h, s in sorted(self.ema.items()) if h in uids and s > 0]
        total = sum(s for _, s in pairs)
        if total <= 0:
            return [], []
        return [u for u, _ in pairs], [s / total for _, s in pairs]

    def save(self, path: str | Path) -> None:
        """Atomically: a crash mid-write leaves the previous state, never a torn file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> "Scoreboard":
        path = Path(path)
        if not path.exists():
            return cls()
        d = json.loads(path.read_text())
        return cls(ema={str(k): float(v) for k, v in d.get("ema", {}).items()},
                   last_window=int(d.get("last_window", -1)), last_weights_window=int(d.get("last_weights_window", -1)))
