"""Where checks sample: whole hash-tree chunks, since a verified read fetches every chunk it touches whole; every
chunk of the segment equally likely; distinct chunks when more than one is asked for."""
from __future__ import annotations

import random
from collections import Counter

from mapreduce.audit import sample_ranges
from mapreduce.plan import Segment
from mapreduce.wire import hashtree


def test_ranges_are_whole_chunks_and_cover_the_segment() -> None:
    per_chunk = hashtree.CHUNK_BYTES // 4  # fp32
    seg = Segment(3, 1000, 1000 + 5 * per_chunk + 700)  # a short last chunk of 700 elements
    rng = random.Random(7)
    hits: Counter = Counter()
    for _ in range(3000):
        ranges = sample_ranges(rng, seg, 2, 1024, itemsize=4)
        assert len(ranges) == 2 and ranges == sorted(ranges) and ranges[0][1] <= ranges[1][0]  # distinct chunks
        for start, end in ranges:
            assert start % per_chunk == 0 and end == min(seg.numel, start + per_chunk)  # exactly one whole chunk
            hits[start // per_chunk] += 1
    assert set(hits) == {0, 1, 2, 3, 4, 5}  # the short last chunk too
    assert min(hits.values()) > 0.8 * sum(hits.values()) / 6  # and none is neglected


def test_bf16_chunks_hold_twice_the_elements() -> None:
    seg = Segment(0, 0, 10 * hashtree.CHUNK_BYTES)  # 5 chunks at 2 bytes an element
    (start, end), = sample_ranges(random.Random(3), seg, 1, 1024, itemsize=2)
    assert end - start == hashtree.CHUNK_BYTES // 2 and start % (hashtree.CHUNK_BYTES // 2) == 0


def test_long_ranges_cover_whole_chunks_and_merge_when_they_overlap() -> None:
    per_chunk = hashtree.CHUNK_BYTES // 4
    seg = Segment(0, 0, 4 * per_chunk)
    rng = random.Random(5)
    for _ in range(200):
        ranges = sample_ranges(rng, seg, 2, per_chunk + 1, itemsize=4)  # touches two chunks
        assert all(s % per_chunk == 0 and e % per_chunk == 0 and e - s >= 2 * per_chunk for s, e in ranges)
        assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:]))  # overlapping draws merged
    assert sample_ranges(rng, seg, 9, 1024, itemsize=4) == [(c * per_chunk, (c + 1) * per_chunk)
                                                             for c in range(4)]  # more draws than chunks: all


def test_without_an_itemsize_anywhere() -> None:
    seg = Segment(0, 0, 10_000)
    rng = random.Random(1)
    crossed = sum(s // 4096 != (e - 1) // 4096 for _ in range(300) for s, e in sample_ranges(rng, seg, 2, 1024))
    assert crossed > 0  # unaligned: some ranges straddle a chunk boundary
    assert all(e - s == 1024 for s, e in sample_ranges(rng, seg, 3, 1024))
    assert sample_ranges(rng, Segment(0, 0, 100), 2, 1024, itemsize=4) == [(0, 100)]  # a tiny segment: one chunk
