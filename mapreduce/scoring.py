"""Scores: per miner per window from the validator's checks, smoothed into weights, kept across restarts.

For one sampled segment of one miner (see docs/PROTOCOL.md for the reasoning):

- difference ``d = ||o - r|| / (||r|| + eps)`` over the checked elements, ``o`` the miner's output and ``r`` the
  validator's recomputation from the inputs the output lists; correctness ``c = 1`` if ``d == 0`` else ``0``:
  honest reduction is deterministic (fp32, canonical order), so any difference at all, however small, means the
  miner did not do it;
- completeness ``k = |included ∩ expected| / |expected|``, expected being the valid inputs the validator saw in the
  miner's bucket at the upload deadline;
- latency ``l = 1 - min(1, max(0, t - latency_grace_seconds) / (seconds from the settle time to the reduce
  deadline - latency_grace_seconds))``, ``t`` the seconds from the settle time (:func:`mapreduce.windows.settle_time`,
  when the inputs that count are final) until the validator first saw the output: an output written before the
  settle time (without waiting for the inputs that count) earns nothing over one an honest miner writes right
  after it (a listing, a signature and a PUT after the settle time, within the grace);
- ``score = c * k * (1 - latency_weight + latency_weight * l)``; a missing, late or invalid output, or one that
  includes an invalid input, scores 0, the worst.

For one sampled broadcast copy a miner hosts (:mod:`mapreduce.hosting`): ``h = 0`` if the copy is missing, invalid
or not the one the sender recorded, else ``h = 1 - hosting_latency_weight + hosting_latency_weight * s`` with speed
``s = 1 - min(1, t / hosting_request_seconds)``, ``t`` the mean seconds per ranged GET of the validator's reads.

A miner's window score is ``R``, the mean over its sampled segments, blended with ``H``, the mean over its sampled
hosted copies, when it had both: ``(1 - hosting_weight) * R + hosting_weight * H`` (``R`` or ``H`` alone when it
had only one kind of duty); ``ema = alpha * score + (1 - alpha) * ema``; weights are the EMAs normalised to sum
to one.
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
    """How checks become scores and weights (the formulas are in this module's docstring). Every field is a
    ``--validator.scoring.<field>`` flag: its meaning is the ``help`` of its metadata."""

    ema_alpha: float = field(default=0.3, metadata={
        "help": "weight of the newest window score in a miner's moving average (1: only the last window counts)"})
    latency_grace_seconds: float = field(default=1.0, metadata={
        "help": "outputs first seen within this many seconds after the settle time all earn full latency credit"})
    latency_weight: float = field(default=0.25, metadata={
        "help": "share of a segment score that depends on how soon the output appeared (the rest: correctness and "
                "completeness)"})
    weights_every: int = field(default=1, metadata={
        "help": "try to set weights at most every this many windows; an attempt is also made only when the chain's "
                "weights rate limit (read from the chain before each attempt) allows it"})
    hosting_weight: float = field(default=0.2, metadata={
        "help": "share of a window score earned by hosting broadcast copies (the rest: reduced segments)"})
    hosting_latency_weight: float = field(default=0.5, metadata={
        "help": "share of a hosting score that depends on the speed of the ranged reads"})
    hosting_request_seconds: float = field(default=1.0, metadata={
        "help": "seconds per ranged GET (as the validator saw it) at which hosting speed earns nothing"})


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
    correctness = 1.0 if check.difference == 0.0 else 0.0
    completeness = check.included_expected / check.expected if check.expected else 1.0
    grace = cfg.latency_grace_seconds
    lateness = 1.0 if check.latency is None else min(
        1.0, max(0.0, check.latency - grace) / max(reduce_seconds - grace, 1e-9))
    return correctness * completeness * (1.0 - cfg.latency_weight + cfg.latency_weight * (1.0 - lateness))


@dataclass
class HostingCheck:
    """What the validator found for one broadcast copy a miner should host: the evidence behind a hosting score."""

    miner: str
    sender: str
    segment: int
    status: str  # "ok", "missing", "invalid", "wrong" (a valid object, but not the copy the sender recorded)
    reason: str = ""
    latency: float | None = None  # mean seconds per ranged GET of our reads
    requests: int = 0
    bytes_fetched: int = 0
    score: float = 0.0


def hosting_score(check: HostingCheck, cfg: ScoringConfig) -> float:
    if check.status != "ok" or check.latency is None or not math.isfinite(check.latency):
        return 0.0
    speed = 1.0 - min(1.0, max(0.0, check.latency) / max(cfg.hosting_request_seconds, 1e-9))
    return 1.0 - cfg.hosting_latency_weight + cfg.hosting_latency_weight * speed


def window_scores(checks: list[SegmentCheck], hosting: list[HostingCheck], cfg: ScoringConfig) -> dict[str, float]:
    """Each checked miner's score for the window: reduce checks and hosting checks blended by ``hosting_weight``."""
    reduce: dict[str, list[float]] = {}
    hosted: dict[str, list[float]] = {}
    for c in checks:
        reduce.setdefault(c.miner, []).append(c.score)
    for h in hosting:
        hosted.setdefault(h.miner, []).append(h.score)
    out = {}
    for miner in reduce.keys() | hosted.keys():
        r = sum(reduce[miner]) / len(reduce[miner]) if miner in reduce else None
        h = sum(hosted[miner]) / len(hosted[miner]) if miner in hosted else None
        out[miner] = (r if h is None else h if r is None
                      else (1.0 - cfg.hosting_weight) * r + cfg.hosting_weight * h)
    return out


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
