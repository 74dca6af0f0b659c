"""Validators check that miners host the broadcast copies peers wrote into their buckets, and how fast they serve.

A miner runs nothing for a broadcast; its duty is to keep the copies readable, quickly, until the window is pruned.
After a window's reduce deadline a validator:

1. lists each miner's ``bcast/`` prefix (capped; junk keys, which no participant wrote, dropped unread:
   :mod:`mapreduce.listing`) and collects the senders of the copies it finds (a miner that dropped a copy cannot
   hide the broadcast: the other replicas and segments name the sender too);
2. reads each sender's signed record from the sender's bucket (it must be on time, from an allowed peer, and agree
   with the broadcast plan), which says which miner should hold which copy and its content hash; refused senders
   and records are counted by reason and cost no miner anything;
3. with a seed nobody knew before the reduce deadline, samples up to ``segments_per_miner`` of each miner's hosting
   duties and reads each sampled copy's header and ``ranges_per_segment`` element ranges with ranged GETs
   (:class:`~mapreduce.wire.partial.RangeReader`: signature, hash tree), checking the copy's hash is the recorded one;
4. times those reads from its own side, and scores each copy (:func:`mapreduce.scoring.hosting_score`).
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field

from storage import NotFound, ObjectTooLarge, StorageError

from . import seeds
from .audit import ReaderCache
from .errors import InvalidObject, Late, NoBucketOnChain
from .listing import genuine, list_capped
from .network import Network
from .plan import Segment, segment_bounds
from .scoring import HostingCheck, ScoringConfig, hosting_score
from .windows import on_time
from .wire import keys
from .wire.broadcast_record import BroadcastRecord
from .wire.expect import copy_expect, record_max_bytes
from .wire.partial import RangeReader

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostingConfig:
    """How much of each miner's hosting a validator samples per window: copies, and element ranges in each. Every
    field is a ``--validator.hosting.<field>`` flag: its meaning is the ``help`` of its metadata."""

    segments_per_miner: int = field(default=2, metadata={
        "help": "broadcast copies each miner hosts that are checked per window, drawn at random"})
    ranges_per_segment: int = field(default=2, metadata={"help": "element ranges read from each checked copy"})
    range_elements: int = field(default=1024, metadata={"help": "elements in each range read"})
    concurrency: int = field(default=8, metadata={"help": "copies checked at once"})
    check_timeout: float = field(default=60.0, metadata={
        "help": "seconds one copy's check may take; a miner whose endpoint is slower loses the check"})
    list_timeout: float = field(default=10.0, metadata={
        "help": "seconds one listing of a miner's copies, or one sender's record, may take"})


async def _hosted(net: Network, window: int, miner: str, rejected: Counter) -> set[str]:
    """The senders of the broadcast copies genuinely written into ``miner``'s bucket (junk keys dropped unread)."""
    bucket = await net.bucket(window, miner)
    directory = await net.directory(window)
    prefix = keys.role_prefix(net.spec.run_id, window, "bcast")
    listing = await list_capped(bucket, prefix, expected=len(directory.peers) * net.spec.segments)
    found = genuine(listing, net.spec.run_id, window, "bcast", miner, lambda h: directory.exclusion(h, "peer"),
                    rejected)
    return {sender for _, sender in found}


async def _record(net: Network, window: int, sender: str, deadline: float, rejected: Counter) -> BroadcastRecord | None:
    """The sender's record if it counts (allowed sender, on time, valid); else None, counted by reason."""
    directory = await net.directory(window)
    try:
        excluded = directory.exclusion(sender, "peer")
        if excluded is not None:
            raise excluded
        plan = await net.broadcast_plan(window, sender)
        bucket = await net.bucket(window, sender)
        key = str(keys.broadcast_record_key(net.spec.run_id, window, sender))
        info = await bucket.store.head(bucket.name, key)
        if not on_time(info.last_modified.timestamp(), deadline, net.spec.windows.clock_skew_seconds):
            raise Late("broadcast record written after the upload deadline")
        data = await bucket.store.get(bucket.name, key, max_bytes=record_max_bytes(net.spec), if_match=info.etag)
        return await asyncio.to_thread(BroadcastRecord.decode, data, net.spec, plan, sender)
    except InvalidObject as e:
        rejected[e.reason] += 1
        log.info("window %d: broadcast of %s not checked (%s): %s", window, sender[:10], e.reason, e)
    except NotFound:
        rejected["missing"] += 1
        log.info("window %d: %s's copies are hosted but it wrote no broadcast record", window, sender[:10])
    except ObjectTooLarge:
        rejected["oversized"] += 1
    except (StorageError, NoBucketOnChain) as e:
        rejected["unreadable"] += 1
        log.info("window %d: cannot read %s's broadcast record: %s", window, sender[:10], e)
    return None


async def _check_copy(net: Network, window: int, miner: str, sender: str, seg: Segment, sha256: str, key: str,
                      ranges: list[tuple[int, int]], scoring: ScoringConfig, rejected: Counter) -> HostingCheck:
    check = HostingCheck(miner, sender, seg.index, "ok")
    reader: RangeReader | None = None
    started = time.monotonic()
    try:
        bucket = await net.bucket(window, miner)
        info = await bucket.store.head(bucket.name, key)
        reader = ReaderCache(net, bucket).reader(info, seg, lambda h: h == sender, copy_expect(net.spec, seg, sender))
        header = await reader.open()
        if header.sha256 != sha256:
            check.status, check.reason = "wrong", "a valid copy, but not the one the sender recorded"
        else:
            for start, end in ranges:
                await reader.read("data", start, end)
            check.requests = reader.requests + 1  # and the HEAD
            check.latency = (time.monotonic() - started) / check.requests
    except NotFound:
        check.status, check.reason = "missing", "the copy is not in the miner's bucket"
    except InvalidObject as e:
        rejected[e.reason] += 1
        check.status, check.reason = "invalid", f"{e.reason}: {e}"
    except (StorageError, NoBucketOnChain) as e:
        check.status, check.reason = "missing", f"unreadable: {e}"
    finally:
        check.bytes_fetched = reader.bytes_fetched if reader else 0
    check.score = hosting_score(check, scoring)
    return check


async def check_hosting(net: Network, window: int, cfg: HostingConfig, scoring: ScoringConfig,
                        rejected: Counter) -> list[HostingCheck]:
    """Sample and check the broadcast copies each miner should host for ``window``; waits for its reduce deadline.

    Miners this process's own lists exclude are not checked (the reduce checks count them).
    """
    seed = await net.sample_seed(window)
    rng = random.Random(seeds.hosting_stream(seed))  # independent of the reduce samples
    directory = await net.directory(window)
    miners = [m for m in directory.miners if directory.accepts(m)]
    deadline = await net.block_timestamp(net.phases(window).upload_deadline)

    async def listing(miner: str) -> set[str]:
        try:
            return await asyncio.wait_for(_hosted(net, window, miner, rejected), cfg.list_timeout)
        except (StorageError, NoBucketOnChain, asyncio.TimeoutError) as e:
            log.info("window %d: cannot list miner %s for broadcasts: %s", window, miner[:10], str(e) or "timed out")
            return set()
    listings = await asyncio.gather(*(listing(m) for m in miners))
    senders = sorted(set().union(*listings))
    records = {}

    async def record_of(sender: str) -> BroadcastRecord | None:
        try:
            return await asyncio.wait_for(_record(net, window, sender, deadline, rejected), cfg.list_timeout)
        except asyncio.TimeoutError:
            rejected["timeout"] += 1  # the sender's endpoint stalls: its broadcast costs no miner anything
            return None
    for sender, record in zip(senders, await asyncio.gather(*(record_of(s) for s in senders))):
        if record is not None:
            records[sender] = record
    if not records:
        return []

    segments = segment_bounds(net.spec.numel, net.spec.segments)
    picks = []
    for miner in miners:  # sorted, as are senders and segments: every validator draws from the same list
        duties = [(s, i) for s, rec in sorted(records.items()) for i in range(len(segments))
                  if miner in rec.miners_for(i)]
        for sender, i in rng.sample(duties, min(cfg.segments_per_miner, len(duties))):
            seg = segments[i]
            n = min(cfg.range_elements, seg.numel)
            ranges = sorted((a, a + n) for a in (rng.randrange(0, seg.numel - n + 1)
                                                 for _ in range(cfg.ranges_per_segment)))
            record = records[sender]
            picks.append((miner, sender, seg, record.sha256[i], str(record.copy_key(net.spec.run_id, i, miner)),
                          ranges))
    sem = asyncio.Semaphore(cfg.concurrency)

    async def one(pick) -> HostingCheck:
        async with sem:
            try:
                return await asyncio.wait_for(_check_copy(net, window, *pick, scoring, rejected), cfg.check_timeout)
            except asyncio.TimeoutError:
                check = HostingCheck(pick[0], pick[1], pick[2].index, "missing",
                                     f"the copy was not served within {cfg.check_timeout:.0f}s")
                rejected["timeout"] += 1
                return check
    return list(await asyncio.gather(*(one(p) for p in picks)))


def hosting_lines(checks: list[HostingCheck]) -> list[str]:
    """Table rows for a validator's window report."""
    lines = []
    for c in sorted(checks, key=lambda c: (c.miner, c.sender, c.segment)):
        lat = "-" if c.latency is None else f"{1000 * c.latency:.0f}ms/req"
        lines.append(f"  hosting {c.miner[:12]:12} {c.segment:>4} from {c.sender[:8]} {c.status:8} {lat:>11} "
                     f"{c.score:6.3f}" + (f"  {c.reason}" if c.reason else ""))
    return lines
