"""The plan is a pure function of public facts, covers every element exactly once and balances the miners."""
from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mapreduce.plan import make_plan, segment_bounds
from mapreduce.wire.signing import Signer
from mapreduce.spec import RunSpec, TensorSpec

HOTKEYS = [Signer.from_uri(f"//plan-miner-{i}").hotkey for i in range(12)]


def spec(numel: int, segments: int, redundancy: int = 2) -> RunSpec:
    return RunSpec("plan-test", (TensorSpec("w", (numel,)),), segments=segments, redundancy=redundancy)


@given(numel=st.integers(1, 10**7), segments=st.integers(1, 300))
def test_segments_tile_the_vector(numel: int, segments: int) -> None:
    segments = min(segments, numel)
    bounds = segment_bounds(numel, segments)
    assert bounds[0].start == 0 and bounds[-1].end == numel
    assert all(a.end == b.start for a, b in zip(bounds, bounds[1:]))
    sizes = [s.numel for s in bounds]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


@settings(max_examples=200)
@given(n_miners=st.integers(1, 12), segments=st.integers(1, 64), redundancy=st.integers(1, 4),
       block_hash=st.binary(min_size=32, max_size=32).map(lambda b: "0x" + b.hex()), window=st.integers(0, 10**6))
def test_plan_is_deterministic_balanced_and_distinct(n_miners, segments, redundancy, block_hash, window) -> None:
    s = spec(10_000, segments, redundancy)
    miners = HOTKEYS[:n_miners]
    plan = make_plan(s, window, block_hash, miners)
    # the same inputs in another order give the same plan
    assert plan == make_plan(s, window, block_hash, list(reversed(miners)) + miners[:1])
    r = min(redundancy, n_miners)
    assert plan.redundancy == r
    assert all(len(set(reps)) == r for reps in plan.replicas)
    load = Counter(m for reps in plan.replicas for m in reps)
    counts = [load.get(m, 0) for m in miners]
    assert sum(counts) == segments * r
    assert max(counts) - min(counts) <= 1


def test_plan_depends_on_the_block_hash() -> None:
    s = spec(10_000, 16)
    plans = {make_plan(s, 5, "0x" + f"{i:064x}", HOTKEYS[:6]).replicas for i in range(20)}
    assert len(plans) > 10


def test_redundancy_two_when_enough_miners() -> None:
    s = spec(1000, 8, redundancy=2)
    assert make_plan(s, 0, "0x00", HOTKEYS[:1]).redundancy == 1
    assert make_plan(s, 0, "0x00", HOTKEYS[:2]).redundancy == 2


def test_plan_without_miners_is_empty_and_hotkeys_are_checked() -> None:
    empty = make_plan(spec(10, 2), 0, "0x00", [])
    assert empty.replicas == ((), ()) and empty.miners == () and len(empty.segments) == 2
    with pytest.raises(ValueError):
        make_plan(spec(10, 2), 0, "0x00", ["../../etc"])
