"""Where checks sample: whole hash-tree chunks, since a verified read fetches every chunk it touches whole; every
chunk of the segment equally likely; distinct chunks when more than one is asked for. Which outputs a validator
checks: as many of each miner's as asked, overlapping across replicas, none of a miner's favoured."""
from __future__ import annotations

import random
from collections import Counter

from mapreduce.audit import sample_checks, sample_ranges
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


def _holdings(S: int, r: int, M: int) -> dict[str, list[Segment]]:
    """The plan's deal: S * r replicas round-robin over M miners."""
    held: dict[str, list[Segment]] = {}
    for s in range(S):
        for j in range(r):
            held.setdefault(f"miner{(s * r + j) % M:02d}", []).append(Segment(s, s * 10, s * 10 + 10))
    return held


def test_checks_cover_each_miner_as_asked_and_prefer_segments_already_drawn() -> None:
    rng = random.Random(5)
    for S, r, M, k in ((4, 2, 2, 2), (64, 2, 32, 2), (64, 3, 32, 2), (8, 2, 3, 1), (3, 2, 4, 2)):
        held = _holdings(S, r, M)
        for _ in range(50):
            picks = sample_checks(rng, held, k)
            for miner, segments in held.items():
                mine = [seg for m, seg in picks if m == miner]
                assert len(mine) == min(k, len(segments)) and len({s.index for s in mine}) == len(mine)
                assert all(seg in segments for seg in mine)
            if (S, r, M) == (4, 2, 2):  # every segment on both miners: the second takes the first's two
                assert len({seg.index for _, seg in picks}) == 2
            if (S, r, M) == (64, 2, 32):  # pairs of miners share every segment: 32, not ~56 independent draws
                assert len({seg.index for _, seg in picks}) == 32


def test_each_segment_of_a_miner_is_about_equally_likely_to_be_checked() -> None:
    """Overlap must not tell a miner which of its segments are safe: each is checked with probability close to
    k / m (here 2 of 4), over the validator's private order."""
    held, rng, draws = _holdings(64, 3, 48), random.Random(7), 3000
    counts: Counter = Counter()
    for _ in range(draws):
        counts.update((m, seg.index) for m, seg in sample_checks(rng, held, 2))
    for miner, segments in held.items():
        for seg in segments:
            assert abs(counts[(miner, seg.index)] / draws - 2 / len(segments)) < 0.05, (miner, seg.index)
