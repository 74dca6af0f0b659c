"""Where checks sample: ranges that each lie inside one hash-tree chunk, so a verified read of a range costs one
chunk, not two, while every element of the segment can still be drawn."""
from __future__ import annotations

import random
from collections import Counter

from mapreduce.audit import sample_ranges
from mapreduce.plan import Segment
from mapreduce.wire import hashtree


def test_ranges_lie_inside_one_chunk_and_cover_the_segment() -> None:
    per_chunk = hashtree.CHUNK_BYTES // 4  # fp32
    seg = Segment(3, 1000, 1000 + 5 * per_chunk + 700)  # a short last chunk of 700 elements
    rng = random.Random(7)
    hits: Counter = Counter()
    for _ in range(2000):
        ranges = sample_ranges(rng, seg, 2, 1024, itemsize=4)
        assert len(ranges) == 2 and ranges == sorted(ranges)
        for start, end in ranges:
            assert end - start == 1024 and 0 <= start and end <= seg.numel
            assert start // per_chunk == (end - 1) // per_chunk  # one chunk
            hits[start // per_chunk] += 1
    assert set(hits) == {0, 1, 2, 3, 4}  # every full chunk is drawn; the short one cannot hold 1024 elements
    assert min(hits.values()) > 0.15 * sum(hits.values()) / 5  # and none is neglected
    starts = {s % per_chunk for _ in range(500) for s, _ in sample_ranges(rng, seg, 1, 1024, itemsize=4)}
    assert min(starts) < 100 and max(starts) > per_chunk - 1024 - 100  # any place inside a chunk


def test_without_an_itemsize_or_with_long_ranges_anywhere() -> None:
    seg = Segment(0, 0, 10_000)
    rng = random.Random(1)
    crossed = sum(s // 4096 != (e - 1) // 4096 for _ in range(300) for s, e in sample_ranges(rng, seg, 2, 1024))
    assert crossed > 0  # unaligned: some ranges straddle a chunk boundary
    assert all(e - s == 6000 for s, e in sample_ranges(rng, seg, 3, 6000, itemsize=4))  # longer than a chunk
    assert sample_ranges(rng, Segment(0, 0, 100), 2, 1024, itemsize=4) == [(0, 100), (0, 100)]  # a tiny segment
