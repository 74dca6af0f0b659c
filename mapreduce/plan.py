"""The window's plan: which contiguous slice of the flat vector each segment is, and which miners hold it.

Everyone computes the same plan from public facts only: the run spec, the window, the hash of the window's first
block, and the set of active miners. Miners are ordered by ``sha256(seed || hotkey)`` (a shuffle nobody controls
once the block exists) and segment replicas are dealt round-robin over that order, so every miner holds
``floor`` or ``ceil`` of ``segments * r / miners`` replicas and the replicas of one segment are distinct miners.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from . import seeds
from .spec import RunSpec
from .wire.names import check_hotkey


@dataclass(frozen=True)
class Segment:
    index: int
    start: int  # element offsets into the flat vector, [start, end)
    end: int

    @property
    def numel(self) -> int:
        return self.end - self.start


def segment_bounds(numel: int, segments: int) -> tuple[Segment, ...]:
    """Cut ``numel`` elements into ``segments`` contiguous pieces whose sizes differ by at most one."""
    if not 1 <= segments <= numel:
        raise ValueError(f"cannot cut {numel} elements into {segments} segments")
    base, extra = divmod(numel, segments)
    out, pos = [], 0
    for i in range(segments):
        size = base + (1 if i < extra else 0)
        out.append(Segment(i, pos, pos + size))
        pos += size
    return tuple(out)


@dataclass(frozen=True)
class Plan:
    window: int
    seed: str
    segments: tuple[Segment, ...]
    replicas: tuple[tuple[str, ...], ...]  # segment index -> miner hotkeys, in the order peers try them

    @property
    def redundancy(self) -> int:
        return len(self.replicas[0]) if self.replicas else 0

    @property
    def miners(self) -> tuple[str, ...]:
        return tuple(sorted({m for r in self.replicas for m in r}))

    def miners_for(self, segment: int) -> tuple[str, ...]:
        return self.replicas[segment]

    def segments_for(self, miner: str) -> tuple[Segment, ...]:
        return tuple(s for s, r in zip(self.segments, self.replicas) if miner in r)


def plan_seed(spec: RunSpec, window: int, block_hash: str) -> str:
    return seeds.plan_seed(spec.run_id, window, block_hash)


def make_plan(spec: RunSpec, window: int, block_hash: str, miners: Iterable[str]) -> Plan:
    """The plan for ``window``; ``miners`` are the active miners' hotkeys in any order (duplicates ignored).

    With no active miners every segment has no replica: peers keep their own gradient (and say so), miners and
    validators have nothing to do. A window like that is a fact of life (a run's first minutes), not an error.
    """
    active = sorted({check_hotkey(m) for m in miners})
    seed = plan_seed(spec, window, block_hash)
    segments = segment_bounds(spec.numel, spec.segments)
    if not active:
        return Plan(window=window, seed=seed, segments=segments, replicas=tuple(() for _ in segments))
    order = sorted(active, key=lambda m: seeds.plan_order_key(seed, m))
    r = min(spec.redundancy, len(order))
    replicas = tuple(
        tuple(order[(s.index * r + j) % len(order)] for j in range(r)) for s in segments
    )
    return Plan(window=window, seed=seed, segments=segments, replicas=replicas)
