"""A validator reads each input's sampled chunks once per segment, however many replicas of it it checks; and a
replica whose bucket serves bad input bytes costs its own miner the check, never the other replica's.

Both replicas of a segment list the same inputs (each a copy, in its own bucket, of one object the peer signed),
and the validator checks both at the same ranges (`Validator._sample`), so the second check takes the first one's
verified input ranges (`mapreduce.audit.InputReads`) instead of reading its own copies again, but for one input
drawn at random, which it reads from its own bucket. Only reads that succeeded are shared: a failure stays with
the bucket that served it.
"""
from __future__ import annotations

import asyncio
import dataclasses
from collections import defaultdict

import numpy as np
import pytest

from mapreduce.scoring import ScoringConfig
from mapreduce.validator import Validator, ValidatorConfig
from mapreduce.wire.codec import header_end
from mapreduce.wire.keys import ObjectKey
from storage import TransferStats
from tests.protocol.test_roles import join_all
from tests.support.cluster import peer_gradients


async def _window(c, tmp_path, after_miner=None):
    """One window of every role (both miners hold every segment); the validator checks every output with its own
    counters, each call labelled by its key. ``after_miner(i)`` runs as miner i's reduce returns."""
    peers, miners = await join_all(c)
    stats = TransferStats(label=lambda key: key or "-")
    validator = Validator(await c.join("validators", 0, stats=stats), c.bucket_of("validators", 0),
                          tmp_path / "v.json", ValidatorConfig(segments_per_miner=c.spec.segments,
                                                               scoring=ScoringConfig(weights_every=1)))
    window = await c.next_window()

    async def reduce(i: int, m):
        report = await m.run_window(window)
        if after_miner is not None:
            after_miner(i)
        return report

    grads = peer_gradients(c.spec, len(peers))
    *_, report, _ = await asyncio.gather(*(p.allreduce(g, window=window) for p, g in zip(peers, grads)),
                                         *(reduce(i, m) for i, m in enumerate(miners)),
                                         validator.validate_window(window), c.drive(window, validator=True))
    return miners, report, stats.snapshot()


async def test_each_input_range_is_read_from_one_replica(cluster_factory, tmp_path) -> None:
    c = await cluster_factory(peers=3, miners=2, numel=200_000, store="memory", stepped=True)
    _, report, snap = await _window(c, tmp_path)
    assert len(report.checks) == 2 * c.spec.segments and all(ch.status == "ok" for ch in report.checks), \
        report.checks
    # Ranged reads of every copy of each (segment, peer) input: one to open its header in each bucket, and its
    # leaves and chunk in one bucket only.
    reads: dict[tuple[int, str], list[int]] = defaultdict(list)
    for (operation, key), calls in snap.labelled.items():
        if operation == "GetObject:range" and "/in/" in key:
            k = ObjectKey.parse(key)
            reads[(k.segment, k.hotkey)].append(calls)
    assert len(reads) == 3 * c.spec.segments
    for segment in range(c.spec.segments):
        copies = sorted(sorted(calls) for (s, _), calls in reads.items() if s == segment)
        # The second check reads one input of its own (drawn at random) and takes the other two from the first.
        # Without the sharing, every input's copies are read in full in both buckets: [[3, 3]] * 3.
        assert copies == [[1, 3], [1, 3], [3, 3]], (segment, copies)


def _lie_about_inputs(memory, bucket: str) -> None:
    """The bucket's server serves every input's bytes after the header inverted, under the same ETag: what only
    the bucket's owner (its miner) can do."""
    objects = memory._buckets[bucket].objects
    for key, obj in list(objects.items()):
        if "/in/" in key:
            end = header_end(obj.data)
            body = (np.frombuffer(obj.data, dtype=np.uint8, offset=end) ^ 0xFF).tobytes()
            objects[key] = dataclasses.replace(obj, data=bytes(obj.data[:end]) + body)


@pytest.mark.parametrize("liar", [0, 1])
async def test_bad_input_bytes_cost_only_the_bucket_that_served_them(cluster_factory, tmp_path, liar: int) -> None:
    """Whichever replica is checked first, the one whose server corrupts its inputs' copies fails every check (the
    second one too: it reads one input of its own), and the other replica's checks of the same segments, at the
    same ranges, pass (the second one too: it takes no read that failed)."""
    c = await cluster_factory(peers=3, miners=2, numel=200_000, store="memory", stepped=True)

    def after(i: int) -> None:
        if i == liar:
            _lie_about_inputs(c.memory, c.bucket_of("miners", liar))

    miners, report, _ = await _window(c, tmp_path, after)
    status = defaultdict(set)
    for ch in report.checks:
        status[ch.miner].add(ch.status)
    assert status[miners[1 - liar].net.hotkey] == {"ok"}, report.checks
    assert status[miners[liar].net.hotkey] == {"invalid"}, report.checks
