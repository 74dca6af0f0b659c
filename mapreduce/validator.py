"""The validator: watch each window, sample the miners' outputs after the deadline, recompute, score, set weights.

Per window:

1. **Observe** (upload deadline to reduce deadline). At the upload deadline, by our own clock, list every miner's
   inputs: what is there then was on time, whatever the miner's server stamps on it later. At the settle time
   list them again: the inputs that count (:func:`mapreduce.inputs.counted`) are what each miner must include.
   Then poll for outputs and note when each version first appears, by our own clock (latency is observed
   independently of the miner; an output we never saw before the deadline is missing), and read each version's
   header once: a miner that replaces one valid output with another has two answers, which is one too many.
2. **Check** (after the reduce deadline): the sampling seed is the reduce deadline block's hash, which did not
   exist while miners worked. For each sampled (miner, segment) read the output's header and a few element ranges
   with ranged GETs, read the same ranges of every input it lists, recompute the mean in canonical order, and
   compare. Headers of the expected inputs are checked too; an expected input the output leaves out is verified
   whole before the miner is blamed (a peer's valid header over a bad body frames nobody).
3. **Score** (:mod:`mapreduce.scoring`): a plan miner whose bucket cannot be read scores 0 for the window (when
   other miners' buckets could be read, so the fault is not ours). Persist state, write a signed report to our
   bucket, set weights every ``weights_every`` windows when the chain's weights rate limit allows it.

Every phase is bounded in time (a miner's endpoint that stalls costs that miner its check, nothing else), and a
failure in one check or one window is logged and counted, never the end of the process.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from storage import ListingTooLong, NotFound, ObjectInfo, PreconditionFailed, StorageError

from .audit import (InputReads, ReaderCache, Wrong, check_proof_shape, impossible_stamp, listed_inputs, listed_mean,
                    open_listed_inputs, read_records, recompute_difference, sample_checks, sample_ranges)
from .chain.base import ChainError
from .errors import InvalidObject, Late, NoBucketOnChain
from .hosting import HostingConfig, check_hosting, hosting_lines
from .inputs import InputRef, counted, fetch_input
from .listing import PER_WRITER_KEYS, cap_for, genuine, list_capped
from .looplag import LoopLag
from .network import Bucket, Network
from .observers import Observers
from .plan import Plan, Segment
from .scoring import (HostingCheck, Scoreboard, ScoringConfig, SegmentCheck, segment_score,
                      window_scores)
from .windows import settle_time
from .wire import hashtree, keys
from .wire.codec import parse_header
from .wire.expect import evidence_max_bytes
from .wire.keys import ObjectKey
from .wire.partial import RangeReader
from .wire.proof import proof_salt
from .wire.records import Evidence, encode_report
from .writes import write_own

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidatorConfig:
    """What a validator samples, how long it waits, how it scores. Every field is a ``--validator.<field>`` flag
    (nested configs: ``--validator.scoring.<field>``, ``--validator.hosting.<field>``; mapreduce/ops/flags.py): its
    meaning is the ``help`` of its metadata."""

    segments_per_miner: int = field(default=2, metadata={
        "help": "segments of each miner whose output is checked per window, drawn at random, segments already drawn "
                "for another replica first (one segment's replicas share the reads of its inputs)"})
    ranges_per_segment: int = field(default=1, metadata={
        "help": "element ranges recomputed from the inputs in each checked output, each widened to the whole hash-"
                "tree chunks it touches (fetched whole to verify them anyway: 4096 fp32 elements per chunk)"})
    range_elements: int = field(default=1024, metadata={
        "help": "elements each recomputed range covers at least (before it is widened to whole chunks)"})
    poll_interval: float = field(default=0.25, metadata={
        "help": "seconds between listings of a miner's outputs while waiting for them (backing off to 2 s while "
                "its listings fail), and between reads of a header not readable yet"})
    concurrency: int = field(default=8, metadata={"help": "(miner, segment) checks run at once"})
    settle_ranges: int = field(default=4, metadata={
        "help": "where a checked output differs from another replica's, at most this many of the differing ranges "
                "(one data chunk each), or of the inputs one lists and the other not, are looked into"})
    evidence_peers: int = field(default=8, metadata={
        "help": "peers whose evidence (signed output headers they were served and refused) is read each window, "
                "drawn at random"})
    check_timeout: float = field(default=60.0, metadata={
        "help": "seconds one (miner, segment) check may take; a miner whose endpoint is slower loses that check"})
    list_timeout: float = field(default=10.0, metadata={
        "help": "seconds one listing of one miner's bucket, one output header or one peer's evidence may take to read"})
    evidence_lead: float = field(default=1.0, metadata={
        "help": "seconds before the upload deadline at which the miners' inputs are listed for our own evidence of "
                "what was on time (at most half a block); uploads in this last stretch are judged by the servers' "
                "timestamps alone"})
    scoring: ScoringConfig = field(default_factory=ScoringConfig, metadata={
        "help": "how checks become scores and weights (mapreduce.scoring)"})
    hosting: HostingConfig = field(default_factory=HostingConfig, metadata={
        "help": "how the broadcast copies miners host are sampled (mapreduce.hosting)"})


@dataclass
class Version:
    """One version of an output we saw: when, whether its header verified (None: not read yet, or gone), and what
    it signed: the root of its hash tree (pinned: the bytes we check later must be these), its mean's digest and
    its input list."""

    first_seen: float
    info: ObjectInfo | None = None
    unseen_at: float = 0.0  # when the last listing that did not show it started (our clock)
    asked_at: float | None = None  # when we sent the header read that succeeded (our clock)
    valid: bool | None = None
    root: str | None = None
    mean: str | None = None
    inputs: tuple[tuple[str, str], ...] | None = None
    why: str = ""  # why it is not valid
    read_at: float | None = None  # when we had read and verified its header (our clock)


@dataclass
class Observation:
    """What we saw of one window while it ran."""

    inputs: dict[tuple[str, int], dict[str, ObjectInfo]] = field(default_factory=dict)  # (miner, seg) -> peer -> info
    present: dict[str, frozenset[str]] = field(default_factory=dict)  # miner -> input keys there at the deadline
    versions: dict[tuple[str, int], dict[str, Version]] = field(default_factory=dict)  # (miner, seg) -> etag -> seen
    unreachable: dict[str, str] = field(default_factory=dict)  # miner -> why its bucket could not be read
    reachable: set[str] = field(default_factory=set)  # miners whose bucket we could read at least once
    rejected: Counter = field(default_factory=Counter)  # junk keys, late inputs... seen while observing
    checked: dict[tuple[str, int], str] = field(default_factory=dict)  # (miner, seg) -> ETag of the output checked
    lying_clock: set[str] = field(default_factory=set)  # miners whose server stamped an object in the future
    watched: set[tuple[str, int]] | None = None  # slots whose versions we read and pin (None: all)
    upload_deadline_time: float = 0.0
    settle_time: float = 0.0  # when the inputs that count were final: latency counts from here
    reduce_deadline_time: float = 0.0
    lag: LoopLag = field(default_factory=LoopLag)  # our own stalls while observing: no miner's doing
    polled: dict[str, float] = field(default_factory=dict)  # miner -> when its last listing of outputs started

    def own_stall(self, version: Version, skew: float) -> float:
        """Seconds by which our own stalls may have made us read ``version`` late: those before we sent the read
        (since the last listing that did not show it: we listed and asked late), and those after the deadline
        while it was in flight (an answer may have sat unread). Stalls in flight before the deadline do not
        count: had the answer come then, we would have read it when the stall ended, still in time."""
        if version.read_at is None or version.asked_at is None:
            return 0.0
        deadline = self.reduce_deadline_time + skew
        return (self.lag.within(version.unseen_at, version.asked_at)
                + self.lag.within(max(version.asked_at, deadline), version.read_at))

    def latest(self, slot: tuple[str, int]) -> tuple[str, float] | None:
        """(etag, first seen) of the newest version seen before the deadline, or None."""
        seen = self.versions.get(slot)
        if not seen:
            return None
        etag = max(seen, key=lambda e: seen[e].first_seen)
        return etag, seen[etag].first_seen

    def pinned(self, slot: tuple[str, int]) -> Version | None:
        """The newest version of ``slot`` whose header we read and verified before the deadline."""
        valid = [v for v in self.versions.get(slot, {}).values() if v.valid and v.root]
        return max(valid, key=lambda v: v.first_seen) if valid else None


@dataclass
class WindowReport:
    window: int
    validator: str
    checks: list[SegmentCheck]
    scores: dict[str, float]
    ema: dict[str, float]
    weights_set: bool = False
    bytes_fetched: int = 0
    output_bytes_checked: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    hosting: list[HostingCheck] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    def line(self) -> str:
        """One log line: how the checks went, the spread of scores, rejections, bytes, weights."""
        ok = sum(c.status == "ok" for c in self.checks)
        bad = Counter(c.status for c in self.checks if c.status != "ok")
        lat = sorted(c.latency for c in self.checks if c.latency is not None)
        scores = sorted(self.scores.items(), key=lambda kv: kv[1])
        low = f", lowest {scores[0][0][:8]} {scores[0][1]:.3f}" if scores else ""
        mean = sum(self.scores.values()) / len(self.scores) if self.scores else 0.0
        rejected = ", ".join(f"{k}={v}" for k, v in sorted(self.rejected.items())) or "none"
        return (f"window {self.window}: checks {ok}/{len(self.checks)} ok"
                + "".join(f", {n} {status}" for status, n in sorted(bad.items()))
                + f", {len(scores)} miners scored, mean {mean:.3f}{low}, median latency "
                + (f"{lat[len(lat) // 2]:.2f}s" if lat else "-") + f", rejected {rejected}, fetched "
                + f"{self.bytes_fetched} B to check {self.output_bytes_checked} B of outputs"
                + (", weights set" if self.weights_set else ""))

    def table(self) -> str:
        lines = [f"window {self.window}: {len(self.checks)} checks, fetched {self.bytes_fetched} B for "
                 f"{self.output_bytes_checked} B of outputs"
                 + (f" ({100 * self.bytes_fetched / self.output_bytes_checked:.2f}%)" if self.output_bytes_checked
                    else ""),
                 f"  {'miner':12} {'seg':>4} {'status':8} {'diff':>9} {'inputs':>7} {'latency':>8} {'score':>6}"]
        for c in sorted(self.checks, key=lambda c: (c.miner, c.segment)):
            diff = "-" if c.difference is None else f"{c.difference:.2e}"
            lat = "-" if c.latency is None else f"{c.latency:.2f}s"
            lines.append(f"  {c.miner[:12]:12} {c.segment:>4} {c.status:8} {diff:>9} "
                         f"{c.included_expected}/{c.expected:<5} {lat:>8} {c.score:6.3f}"
                         + (f"  {c.reason}" if c.reason else ""))
        lines += hosting_lines(self.hosting)
        for h in sorted(self.scores):
            lines.append(f"  score {h[:12]} window {self.scores[h]:.3f} ema {self.ema.get(h, 0):.3f}")
        return "\n".join(lines)


class OwnStall(Exception):
    """We read an output's header after the reduce deadline, but our own stalls may be why: no evidence either
    way. The check is dropped, not scored: a starved validator blames no miner, and credits none either (a
    miner's endpoint may also have held the read until it wrote the output late)."""


class OtherReplicaFailed(Exception):
    """Reading another replica's output (to compare with the one checked) failed: no evidence either way."""


async def _theirs(work):
    """``work``, a read of another replica's output; its failure becomes :class:`OtherReplicaFailed`."""
    try:
        return await work
    except (InvalidObject, StorageError, PreconditionFailed) as e:
        raise OtherReplicaFailed(str(e)) from e


class Validator:
    def __init__(self, net: Network, bucket: str, state_path: str | Path, config: ValidatorConfig = ValidatorConfig()):
        self.net = net
        self.bucket_name = bucket
        self.state_path = Path(state_path)
        self.config = config
        self.board = Scoreboard.load(self.state_path)
        self._sem = asyncio.Semaphore(config.concurrency)
        self.observers = Observers()  # each called with every WindowReport (metrics)
        self.observing: dict[int, Observation] = {}  # window -> what we have seen of it so far, while we watch it

    async def run(self, windows: int | None = None, stop: asyncio.Event | None = None) -> list[WindowReport]:
        """Validate windows from the next one we can fully observe; windows overlap, scores apply in order."""
        reports: list[WindowReport] = []
        block = await self.net.block()
        window = self.net.spec.windows.window_of(block)
        if block >= self.net.phases(window).upload_deadline:
            window += 1  # we could not list this window's inputs at its deadline: do not judge it
        window = max(window, self.board.last_window + 1)
        pending: list[asyncio.Task] = []
        done = 0

        async def finish(task: asyncio.Task) -> None:
            nonlocal done
            done += 1
            try:
                reports.append(await task)
            except Exception:  # one window's failure must never end the validator
                log.exception("window validation failed; carrying on with the next window")

        while windows is None or done + len(pending) < windows:
            if stop and stop.is_set():
                break
            await self.net.wait_for_block(self.net.phases(window).start_block)
            pending.append(asyncio.create_task(self.validate_window(window)))
            window += 1
            # Apply finished windows in order; keep at most two in flight (this one's checks overlap the next's
            # observation phase).
            while pending and (pending[0].done() or len(pending) > 2):
                await finish(pending.pop(0))
        for task in pending:
            await finish(task)
        return reports

    async def validate_window(self, window: int) -> WindowReport:
        plan = await self.net.plan(window)
        # Our own entropy, drawn now and never published before the checks: no miner can compute which segments
        # and ranges we will check (a public seed would let it answer only those).
        rng = random.Random(os.urandom(32))
        slots, rejected = await self._sample(plan, rng)
        observation = await self.observe(plan, watched={(m, s.index) for m, s, _ in slots}
                                         | {(r, s.index) for _, s, _ in slots for r in plan.miners_for(s.index)})
        checks, fetched, checked_bytes, rejected = await self.check(plan, observation, slots, rng, rejected)
        rejected.update(observation.rejected)
        hosting = await check_hosting(self.net, window, self.config.hosting, self.config.scoring, rejected)
        await self.recheck_overwrites(plan, observation, checks)
        await self.read_evidence(plan, observation, checks, rng, rejected)
        return await self.score(plan, checks, fetched, checked_bytes, rejected, hosting)

    async def recheck_overwrites(self, plan: Plan, obs: Observation, checks: list[SegmentCheck]) -> None:
        """At the window's end, list the outputs again: one whose ETag changed since we checked it was
        overwritten after the fact (peers downloading late would get other bytes than we checked)."""
        await self.net.wait_for_block(self.net.phases(plan.window).end_block)
        later = Observation()
        await asyncio.gather(*(self._poll_outputs(plan, m, later, None) for m in plan.miners))
        for c in checks:
            slot = (c.miner, c.segment)
            checked = obs.checked.get(slot)
            now = later.latest(slot)
            if c.status == "ok" and checked is not None and now is not None and now[0] != checked:
                c.status, c.reason = "wrong", "output was overwritten after the reduce deadline"
                c.score = 0.0

    async def read_evidence(self, plan: Plan, obs: Observation, checks: list[SegmentCheck], rng: random.Random,
                            rejected: Counter) -> None:
        """Read the evidence of a few peers chosen at random (:class:`~mapreduce.wire.records.Evidence`). A miner that
        signed two different outputs for one segment, or served a peer an output other than the one we pinned,
        gets 0 on every check of the window: it showed us one thing and peers another."""
        directory = await self.net.directory(plan.window)
        peers = rng.sample(list(directory.peers), min(self.config.evidence_peers, len(directory.peers)))
        cap = evidence_max_bytes(self.net.spec)

        async def one(peer: str) -> Evidence | None:
            key = str(keys.evidence_key(self.net.spec.run_id, plan.window, peer))
            try:
                bucket = await self.net.bucket(plan.window, peer)
                data = await asyncio.wait_for(bucket.store.get(bucket.name, key, max_bytes=cap),
                                              self.config.list_timeout)
                return await asyncio.to_thread(Evidence.decode, data, self.net.spec, plan.window, peer)
            except InvalidObject as e:
                rejected[e.reason] += 1
            except (StorageError, NoBucketOnChain, asyncio.TimeoutError):
                pass  # none (the usual case), or unreadable: nothing to learn
            return None

        convicted: dict[str, str] = {}
        for peer, evidence in zip(peers, await asyncio.gather(*(one(p) for p in peers))):
            roots: dict[tuple[str, int], set[str]] = {}
            for served in evidence.served if evidence else ():
                if served.miner not in plan.miners or served.segment not in {
                        s.index for s in plan.segments_for(served.miner)}:
                    rejected["bad_evidence"] += 1
                    continue
                seg = plan.segments[served.segment]
                key = str(keys.output_key(self.net.spec.run_id, plan.window, served.segment, served.miner))
                try:
                    header = parse_header(served.header, served.size, key, self.net.output_expect(
                        seg, served.miner, len(directory.peers)))
                except InvalidObject:
                    rejected["bad_evidence"] += 1  # not the miner's signed words: proves nothing
                    continue
                roots.setdefault((served.miner, served.segment), set()).add(header.sha256)
            for (miner, segment), seen in roots.items():
                pinned = obs.pinned((miner, segment))
                if len(seen) > 1 or (pinned is not None and pinned.root not in seen):
                    convicted[miner] = (f"signed another output for segment {segment} than the one it showed us "
                                        f"(evidence of peer {peer[:10]})")
        for miner, why in convicted.items():
            rejected["equivocation"] += 1
            mine = [c for c in checks if c.miner == miner]
            if not mine:
                mine = [SegmentCheck(miner, -1, "wrong")]
                checks.extend(mine)
            for c in mine:
                c.status, c.reason, c.score = "wrong", why, 0.0

    # -- 1. observe --------------------------------------------------------------------------------------------------

    async def observe(self, plan: Plan, watched: set[tuple[str, int]] | None = None) -> Observation:
        obs = Observation(watched=watched)
        self.observing[plan.window] = obs
        try:
            with obs.lag:
                return await self._observe(plan, obs)
        finally:
            self.observing.pop(plan.window, None)

    async def _observe(self, plan: Plan, obs: Observation) -> Observation:
        phases = self.net.phases(plan.window)
        directory = await self.net.directory(plan.window)
        miners = [m for m in plan.miners if directory.accepts(m)]  # our own lists exclude the rest: not judged
        # Our evidence of what was on time: each miner's inputs listed just before the upload deadline, by our own
        # clock. What a listing that ended before the deadline holds was written in time, whatever the miner's
        # server later stamps on it.
        await self.net.wait_for_block(phases.upload_deadline - 1)
        block_seconds = await self.net.block_seconds(phases.upload_deadline - 1)
        expected_deadline = await self.net.block_timestamp(phases.upload_deadline - 1) + block_seconds
        lead = min(self.config.evidence_lead, 0.5 * block_seconds)
        await asyncio.sleep(max(0.0, expected_deadline - lead - time.time()))
        finished = await asyncio.gather(*(self._list_inputs(plan, m, obs, at_deadline=True) for m in miners))
        await self.net.wait_for_block(phases.upload_deadline)
        obs.upload_deadline_time = await self.net.block_timestamp(phases.upload_deadline)
        skew = self.net.spec.windows.clock_skew_seconds
        for miner, at in zip(miners, finished):
            if at is None or at > obs.upload_deadline_time + skew:  # ended too late to prove anything
                obs.present.pop(miner, None)
        # The inputs that count must wait for stragglers stamped within the clock allowance. Outputs are watched
        # from then on, while those listings run: a slow bucket must not delay when we see another miner's output.
        await self.net.settle(phases.upload_deadline)
        obs.settle_time = settle_time(obs.upload_deadline_time, skew)
        headers: list[asyncio.Task] = []

        async def watch(miner: str) -> None:
            # One loop per miner: an endpoint that stalls its listings delays only when we see its own outputs;
            # one whose listings fail is polled less and less often (up to every 2 s) until they work again.
            interval = self.config.poll_interval
            while True:
                past = await self.net.block() >= phases.reduce_deadline
                ok = await self._poll_outputs(plan, miner, obs, headers)
                if past:
                    return
                interval = self.config.poll_interval if ok else min(2.0, 2 * interval)
                await asyncio.sleep(interval)
        watcher = asyncio.gather(*(watch(m) for m in miners))
        await asyncio.gather(*(self._list_inputs(plan, m, obs, at_deadline=False) for m in miners))
        await watcher
        await asyncio.gather(*headers, return_exceptions=True)
        obs.reduce_deadline_time = await self.net.block_timestamp(phases.reduce_deadline)
        return obs

    async def _list_inputs(self, plan: Plan, miner: str, obs: Observation, at_deadline: bool) -> float | None:
        """At the deadline: the input keys present (our evidence of what was on time); returns when the listing
        ended, by our clock. At the settle time: the inputs that count, per segment of the miner."""
        run, window = self.net.spec.run_id, plan.window
        directory = await self.net.directory(window)
        segments = plan.segments_for(miner)
        async def inputs() -> list[ObjectInfo]:
            bucket = await self.net.bucket(window, miner)
            try:
                return await list_capped(bucket, keys.role_prefix(run, window, "in"),
                                         len(directory.peers) * len(segments))
            except ListingTooLong:  # flooded with junk: one capped listing per segment, per peer if need be
                found = []
                for seg in segments:
                    found += await list_capped(bucket, keys.segment_prefix(run, window, seg.index, "in"),
                                               len(directory.peers), writers=directory.peers)
                return found

        try:
            listing = await asyncio.wait_for(inputs(), self.config.list_timeout)
        except (StorageError, NoBucketOnChain, asyncio.TimeoutError) as e:
            obs.unreachable[miner] = f"cannot list its inputs: {str(e) or 'timed out'}"
            log.info("window %d: cannot list miner %s's inputs: %s", window, miner[:10], str(e) or "timed out")
            return None
        obs.reachable.add(miner)
        skew = self.net.spec.windows.clock_skew_seconds
        if at_deadline:
            obs.present[miner] = frozenset(i.key for i in listing)
            return time.time()
        if any(impossible_stamp(i, skew) for i in listing):
            obs.lying_clock.add(miner)
        mine = {s.index for s in segments}
        groups = genuine(listing, run, window, "in", miner, lambda h: directory.exclusion(h, "peer"), obs.rejected)
        groups = {k: v for k, v in groups.items() if k[0] in mine}
        for (segment, peer), info in counted(groups, obs.upload_deadline_time, skew, obs.rejected,
                                             obs.present.get(miner, frozenset())).items():
            obs.inputs.setdefault((miner, segment), {})[peer] = info
        return time.time()

    async def _poll_outputs(self, plan: Plan, miner: str, obs: Observation, headers: list[asyncio.Task] | None
                            ) -> bool:
        """Note every version of the miner's outputs we see, with the time we first saw it (our clock); with
        ``headers``, start reading each new version's header (is it a valid output of the miner's?)."""
        now = time.time()
        run, window = self.net.spec.run_id, plan.window
        segments = plan.segments_for(miner)
        async def outputs() -> tuple[Bucket, list[ObjectInfo]]:
            bucket = await self.net.bucket(window, miner)
            try:
                return bucket, await bucket.store.list(bucket.name, keys.role_prefix(run, window, "out"),
                                                       max_keys=cap_for(len(segments)))
            except ListingTooLong:  # junk under out/: look at exactly its keys
                found = []
                for seg in segments:
                    key = str(keys.output_key(run, window, seg.index, miner))
                    found += [i for i in await bucket.store.list(bucket.name, key, max_keys=PER_WRITER_KEYS)
                              if i.key == key]
                return bucket, found

        try:
            bucket, listing = await asyncio.wait_for(outputs(), self.config.list_timeout)
        except (StorageError, NoBucketOnChain, asyncio.TimeoutError) as e:
            log.info("window %d: cannot list miner %s's outputs: %s", window, miner[:10], str(e) or "timed out")
            return False
        obs.reachable.add(miner)
        mine = {s.index for s in segments}
        for info in listing:
            try:
                k = ObjectKey.parse(info.key)
            except InvalidObject:
                continue
            if k.role != "out" or k.hotkey != miner or k.segment not in mine:
                continue
            slot = (miner, k.segment)
            versions = obs.versions.setdefault(slot, {})
            if info.etag not in versions:
                version = versions[info.etag] = Version(now, info, unseen_at=obs.polled.get(miner, obs.settle_time))
                if headers is not None and (obs.watched is None or slot in obs.watched):
                    headers.append(asyncio.create_task(self._read_version(plan, bucket, info, version)))
        obs.polled[miner] = now
        return True

    async def _read_version(self, plan: Plan, bucket: Bucket, info: ObjectInfo, version: Version) -> None:
        k = ObjectKey.parse(info.key)
        seg = plan.segments[k.segment]
        directory = await self.net.directory(plan.window)
        expect = self.net.output_expect(seg, k.hotkey, len(directory.peers))
        deadline = self.net.phases(plan.window).reduce_deadline
        while True:  # until it is read, or the deadline passes: only a header read before the deadline counts
            reader = ReaderCache(self.net, bucket).reader(info, seg, lambda h: h == k.hotkey, expect)
            asked = time.time()
            try:
                header = await asyncio.wait_for(reader.open(), self.config.list_timeout)
                inputs, mean = listed_inputs(header.meta), listed_mean(header.meta)
                check_proof_shape(header.entries["proof"].shape, inputs)
                version.root, version.mean = header.sha256, mean
                version.inputs = tuple((h, s) for h, s, _ in inputs)
                version.valid, version.read_at, version.asked_at = True, time.time(), asked
                return
            except (InvalidObject, Wrong) as e:
                version.valid, version.why = False, str(e)
                return
            except (StorageError, asyncio.TimeoutError) as e:  # replaced already, or unreadable for now
                log.debug("window %d: header of %s unreadable for now: %s", plan.window, info.key,
                          str(e) or "timed out")
                if await self.net.block() >= deadline:
                    return
                await asyncio.sleep(self.config.poll_interval)

    # -- 2. check ----------------------------------------------------------------------------------------------------

    async def _sample(self, plan: Plan, rng: random.Random) -> tuple[list, Counter]:
        """The (miner, segment, element ranges) we will check, drawn from our own entropy: ``segments_per_miner``
        of each miner's, preferring segments drawn for another replica (:func:`~mapreduce.audit.sample_checks`),
        and the ranges once per segment. Every replica of a segment we check is checked at the same places, so the
        inputs' chunks there, the same signed objects in each replica's bucket, are read once
        (:class:`~mapreduce.audit.InputReads`)."""
        cfg = self.config
        directory = await self.net.directory(plan.window)
        rejected: Counter = Counter()
        holdings = {}
        for miner in plan.miners:
            if not directory.accepts(miner):
                rejected["not_allowed"] += 1  # our own lists exclude it: no check, no score, no weight
                continue
            holdings[miner] = list(plan.segments_for(miner))
        slots = []
        ranges: dict[int, list[tuple[int, int]]] = {}
        for miner, seg in sample_checks(rng, holdings, cfg.segments_per_miner):
            if seg.index not in ranges:
                ranges[seg.index] = sample_ranges(rng, seg, cfg.ranges_per_segment, cfg.range_elements,
                                                  self.net.spec.wire.range_itemsize)
            slots.append((miner, seg, ranges[seg.index]))
        return slots, rejected

    async def check(self, plan: Plan, obs: Observation, slots: list, rng: random.Random, rejected: Counter):
        directory = await self.net.directory(plan.window)
        stats = {"fetched": 0, "checked": 0}
        records: dict = {}
        if any(m in obs.unreachable and m not in obs.reachable for m in plan.miners):
            # Peers' records say whether they could write to a miner we cannot read: its bucket is up for them.
            records = await read_records(self.net, plan.window, directory.peers, rejected)
        by_segment: dict[int, list] = {}
        for slot in slots:
            by_segment.setdefault(slot[1].index, []).append((*slot, random.Random(rng.random())))

        async def replicas(group: list) -> list[SegmentCheck | None]:
            # One segment's replicas one after the other, so the later ones take the inputs' ranges the first one
            # read; the segments themselves at once.
            known = InputReads()
            return [await self._check_slot(plan, obs, m, seg, ranges, rejected, stats, records, slot_rng, known)
                    for m, seg, ranges, slot_rng in group]

        checks = [c for group in await asyncio.gather(*(replicas(g) for g in by_segment.values())) for c in group]
        return [c for c in checks if c is not None], stats["fetched"], stats["checked"], rejected

    async def _check_slot(self, plan: Plan, obs: Observation, miner: str, seg: Segment,
                          ranges: list[tuple[int, int]], rejected: Counter, stats: dict,
                          records: dict, rng: random.Random, known: InputReads) -> SegmentCheck | None:
        async with self._sem:
            check = SegmentCheck(miner, seg.index, "ok")
            cache: ReaderCache | None = None
            try:
                if miner not in obs.reachable:
                    uploads = sum(1 for r in records.values() if seg.index in r.uploads
                                  and r.uploads[seg.index].tag_at(miner))
                    if not (obs.reachable or uploads):
                        return None  # we could read no bucket at all: our fault, not the miners'
                    check.status = "missing"
                    check.reason = (f"bucket unreadable ({obs.unreachable.get(miner, 'no answer')[:120]})"
                                    + (f"; {uploads} peer(s) recorded uploads to it" if uploads else ""))
                    return self._scored(check, obs)
                cache = ReaderCache(self.net, await self.net.bucket(plan.window, miner))
                await asyncio.wait_for(self._check_reachable(plan, obs, miner, seg, cache, ranges, rejected, check,
                                                             stats, rng, known), self.config.check_timeout)
                if check.status == "skip":
                    return None
            except OwnStall as e:
                rejected["unchecked_own_stall"] += 1
                log.warning("window %d: no check of miner %s segment %d: %s (this machine is overloaded)",
                            plan.window, miner[:10], seg.index, e)
                return None
            except Wrong as e:
                check.status, check.reason = "wrong", str(e)
            except NotFound as e:
                check.status, check.reason = "invalid", f"output vanished: {e}"
            except InvalidObject as e:
                rejected[e.reason] += 1
                check.status, check.reason = "invalid", f"{e.reason}: {e}"
            except PreconditionFailed:  # our reads carry the ETag of the version we checked: it changed under us
                check.status, check.reason = "wrong", "output was overwritten after the reduce deadline"
            except StorageError as e:
                check.status, check.reason = "invalid", f"unreadable: {e}"
            except asyncio.TimeoutError:
                rejected["timeout"] += 1
                check.status = "invalid"
                check.reason = f"its endpoint did not answer within {self.config.check_timeout:.0f}s"
            except NoBucketOnChain as e:  # the miner left the directory mid-window
                check.status, check.reason = "invalid", f"no bucket on chain: {e}"
            except Exception:  # our own bug: never score a miner for it
                log.exception("window %d: internal error checking miner %s segment %d", plan.window, miner[:10],
                              seg.index)
                rejected["internal_error"] += 1
                return None
            finally:
                stats["fetched"] += cache.bytes_fetched if cache else 0
            return self._scored(check, obs)

    async def _check_reachable(self, plan: Plan, obs: Observation, miner: str, seg: Segment, cache: ReaderCache,
                               ranges: list[tuple[int, int]], rejected: Counter, check: SegmentCheck,
                               stats: dict, rng: random.Random, known: InputReads) -> None:
        expected = await self._expected_inputs(plan, obs, miner, seg, cache, rejected)
        check.expected = len(expected)
        slot = (miner, seg.index)
        latest = obs.latest(slot)
        valid_versions = [e for e, v in obs.versions.get(slot, {}).items() if v.valid]
        if latest is None:
            if not expected:
                check.status = "skip"  # nothing to reduce, nothing to judge
                return
            check.status, check.reason = "missing", "no output by the reduce deadline"
            return
        if len(valid_versions) > 1:
            raise Wrong(f"published {len(valid_versions)} different valid outputs before the deadline")
        if miner in obs.lying_clock:
            raise Wrong("its server stamps objects in the future: its clock cannot be trusted")
        await self._compare(plan, obs, miner, seg, cache, ranges, expected, check, stats, rejected, rng, known)

    def _scored(self, check: SegmentCheck, obs: Observation) -> SegmentCheck:
        reduce_seconds = obs.reduce_deadline_time - obs.settle_time
        check.score = segment_score(check, self.config.scoring, reduce_seconds)
        return check

    async def _expected_inputs(self, plan: Plan, obs: Observation, miner: str, seg: Segment, cache: ReaderCache,
                               rejected: Counter) -> dict[str, tuple[str, ObjectInfo]]:
        """Peer -> (content hash, listing entry) of every input that counts whose header verifies."""
        directory = await self.net.directory(plan.window)
        counted_inputs = sorted(obs.inputs.get((miner, seg.index), {}).items())

        async def header_hash(peer: str, info: ObjectInfo) -> str | None:
            try:
                return (await cache.reader(info, seg, directory.admits_peer).open()).sha256
            except InvalidObject as e:
                rejected[e.reason] += 1  # the miner is right to leave it out
                return None
            except PreconditionFailed:  # only the bucket's owner can replace an object (write-once for others)
                raise Wrong(f"the input from {peer[:10]} was replaced after the upload deadline") from None

        # The headers at once: each is one small ranged read, so their latencies, not their bytes, add up.
        hashes = await asyncio.gather(*(header_hash(p, i) for p, i in counted_inputs))
        return {peer: (h, info) for (peer, info), h in zip(counted_inputs, hashes) if h is not None}

    async def _compare(self, plan: Plan, obs: Observation, miner: str, seg: Segment, cache: ReaderCache,
                       ranges: list[tuple[int, int]], expected: dict[str, tuple[str, ObjectInfo]],
                       check: SegmentCheck, stats: dict, rejected: Counter, rng: random.Random,
                       known: InputReads) -> None:
        bucket = cache.bucket
        key = str(keys.output_key(self.net.spec.run_id, plan.window, seg.index, miner))
        info = await bucket.store.head(bucket.name, key)
        version = self._pinned(obs, miner, seg, info)
        check.latency = version.first_seen - obs.settle_time
        obs.checked[(miner, seg.index)] = info.etag
        if impossible_stamp(info, self.net.spec.windows.clock_skew_seconds):
            raise Wrong("its server stamps objects in the future: its clock cannot be trusted")
        directory = await self.net.directory(plan.window)
        out_reader = cache.reader(info, seg, lambda h: h == miner,
                                  self.net.output_expect(seg, miner, len(directory.peers)))
        header = await out_reader.open()
        if header.sha256 != version.root:
            raise Wrong("serves other bytes than the output it showed before the reduce deadline")
        if header.entries["data"].start != 0:
            raise Wrong("its output does not hold the mean first (the layout every replica shares)")
        stats["checked"] += info.size
        inputs = listed_inputs(header.meta)
        proof_shape = header.entries["proof"].shape
        check_proof_shape(proof_shape, inputs)
        check.included = len(inputs)
        listed = {h: s for h, s, _ in inputs}
        # The other replicas of this segment: where their signed outputs differ from this one, look there.
        elsewhere, extra = await self._against_replicas(plan, obs, miner, seg, out_reader, version, rng, rejected)
        input_readers = await open_listed_inputs(self.net, plan.window, seg, cache, inputs,
                                                 obs.upload_deadline_time,
                                                 known={i.key: i for _, i in expected.values()})
        row = proof_shape[1] * proof_shape[2]  # chunk-major: every input's rows of one chunk are together

        async def proof(first: int, last: int) -> bytes:
            return (await out_reader.read("proof", first * row, last * row)).numpy().tobytes()

        salt = proof_salt(self.net.spec.run_id, plan.window, seg.index, miner)
        check.difference = await recompute_difference(lambda a, b: out_reader.read("data", a, b), input_readers,
                                                      sorted(set(ranges) | set(extra)),
                                                      self.net.spec.wire, seg.numel, proof, salt, known,
                                                      own=frozenset({rng.randrange(len(inputs))}))
        await self._settle_expected(plan, seg, bucket, listed, expected, elsewhere, rejected)
        check.expected = len(expected)
        check.included_expected = sum(expected[h][0] == s for h, s in listed.items() if h in expected)
        reasons = []
        if check.difference > 0:
            check.status = "wrong"  # honest reduction is exact: any difference at all is not the reduction
            reasons.append("output differs from the recomputed mean")
        if check.included_expected < check.expected:
            missing = sorted(set(expected) - set(listed))
            reasons.append(f"left out {check.expected - check.included_expected} valid input(s) "
                           f"({', '.join(h[:10] for h in missing)})")
        check.reason = "; ".join(reasons)

    def _pinned(self, obs: Observation, miner: str, seg: Segment, info: ObjectInfo) -> Version:
        """The version of the output we saw and read before the reduce deadline, if the one there now is it."""
        seen = obs.versions.get((miner, seg.index), {})
        if info.etag not in seen:
            if seen:
                raise Wrong("output was overwritten after the reduce deadline")
            raise Late("the output there now appeared after the reduce deadline")
        version = seen[info.etag]
        if version.valid is False:
            raise Wrong(f"the output seen before the deadline is not a valid output of this miner: {version.why}")
        skew = self.net.spec.windows.clock_skew_seconds
        if version.root is None or version.read_at is None or version.read_at > obs.reduce_deadline_time + skew:
            # Listed, but we could not read it before the deadline: a listing alone proves nothing (a miner's own
            # endpoint can list what does not exist yet, hold our reads, and write it after the deadline).
            own = obs.own_stall(version, skew)
            if version.read_at is not None and version.read_at - own <= obs.reduce_deadline_time + skew:
                raise OwnStall(f"read {version.read_at - obs.reduce_deadline_time:.2f}s after the reduce deadline, "
                               f"{own:.2f}s of our own stalls before it")
            after = "" if version.read_at is None else (
                f" (read {version.read_at - obs.reduce_deadline_time:.2f}s after it, of which {own:.2f}s our own "
                "stall)")
            raise Late("its output could not be read before the reduce deadline" + after)
        return version

    async def _settle_expected(self, plan: Plan, seg: Segment, bucket, listed: dict[str, str],
                               expected: dict[str, tuple[str, ObjectInfo]],
                               elsewhere: dict[str, tuple[str, ObjectInfo]], rejected: Counter) -> None:
        """The inputs this output should cover: those we listed before the deadline that are valid as a whole (a
        peer can sign a valid header over a NaN or torn body, which the miner was right to refuse), plus those
        another replica's signed output shows existed."""
        left_out = sorted(p for p in expected if listed.get(p) != expected[p][0])
        for peer in left_out:
            ref = InputRef(peer, expected[peer][1].key, expected[peer][1])
            if await fetch_input(self.net, plan.window, seg, bucket, ref, rejected) is None:
                del expected[peer]
        for peer in elsewhere:
            if peer not in expected and peer not in listed:
                expected[peer] = elsewhere[peer]

    async def _against_replicas(self, plan: Plan, obs: Observation, miner: str, seg: Segment, reader: RangeReader,
                                version: Version, rng: random.Random, rejected: Counter
                                ) -> tuple[dict[str, tuple[str, ObjectInfo]], list[tuple[int, int]]]:
        """Compare ``miner``'s pinned output with the other replicas' pinned outputs of ``seg``.

        Honest replicas sign the same mean over the same inputs, so a difference means someone is wrong. Over the
        same inputs: the element ranges where the two means differ (found from their leaf hashes, without reading
        the data), up to ``settle_ranges`` of them, are returned for recomputation. Over other inputs: a valid,
        on-time input another replica holds and lists, whose peer's signed record says it was uploaded to
        ``miner`` too, is returned as expected of ``miner`` (a miner that deleted an input from its own bucket
        before anyone listed it still left it out)."""
        elsewhere: dict[str, tuple[str, ObjectInfo]] = {}
        extra: list[tuple[int, int]] = []
        for other in plan.miners_for(seg.index):
            theirs = obs.pinned((other, seg.index)) if other != miner else None
            if theirs is None or (theirs.mean, theirs.inputs) == (version.mean, version.inputs):
                continue
            rejected["disagreement"] += 1
            try:
                bucket = await self.net.bucket(plan.window, other)
                directory = await self.net.directory(plan.window)
                their_reader = ReaderCache(self.net, bucket).reader(
                    theirs.info, seg, lambda h: h == other, self.net.output_expect(seg, other, len(directory.peers)))
                if theirs.inputs == version.inputs:
                    extra += await self._differing(seg, reader, their_reader, rng)
                    continue
                mine = {h for h, _ in version.inputs}
                missing = [(h, sha) for h, sha in theirs.inputs if h not in mine][:self.config.settle_ranges]
                for peer, sha in missing:
                    got = await self._shown_elsewhere(plan, miner, other, bucket, seg, peer, sha, rejected)
                    if got is not None:
                        elsewhere[peer] = got
            except (OtherReplicaFailed, StorageError, NoBucketOnChain) as e:
                # The other replica is unreadable or invalid: that is its miner's problem, never this one's.
                log.info("window %d segment %d: replica %s not comparable: %s", plan.window, seg.index, other[:10], e)
        return elsewhere, extra

    async def _differing(self, seg: Segment, mine: RangeReader, theirs: RangeReader,
                         rng: random.Random) -> list[tuple[int, int]]:
        """Up to ``settle_ranges`` element ranges (one data chunk each) where two outputs' means differ. A failure
        to read ``theirs`` raises :class:`OtherReplicaFailed`; a failure to read ``mine`` propagates."""
        header = await mine.open()
        other = await _theirs(theirs.open())
        entry = header.entries["data"]
        if other.entries["data"] != entry:
            return []  # another layout: the sampled ranges are all we can compare
        per = hashtree.CHUNK_BYTES // entry.itemsize
        whole = entry.end // hashtree.CHUNK_BYTES  # chunks holding nothing but the mean
        ranges = []
        if whole:
            a = await mine.leaves(0, whole)
            b = await _theirs(theirs.leaves(0, whole))
            ranges = [(c * per, (c + 1) * per) for c in range(whole) if a[c] != b[c]]
        if whole * per < seg.numel:  # the last chunk also holds the start of each miner's own proof: compare values
            tail = (whole * per, seg.numel)
            x = await mine.read("data", *tail)
            y = await _theirs(theirs.read("data", *tail))
            if not torch.equal(x, y):
                ranges.append(tail)
        return rng.sample(ranges, min(self.config.settle_ranges, len(ranges)))

    async def _shown_elsewhere(self, plan: Plan, miner: str, other: str, bucket: Bucket, seg: Segment, peer: str,
                               sha: str, rejected: Counter) -> tuple[str, ObjectInfo] | None:
        """``(sha, info)`` if ``peer``'s input ``sha`` is valid and whole in ``other``'s bucket and ``peer``'s own
        signed record says it uploaded this segment to ``miner`` as well."""
        records = await read_records(self.net, plan.window, [peer], rejected)
        record = records.get(peer)
        if record is None or seg.index not in record.uploads or record.uploads[seg.index].sha256 != sha \
                or not record.uploads[seg.index].tag_at(miner):
            return None
        key = record.key_at(self.net.spec.run_id, seg.index, other)
        if key is None:
            return None
        try:
            info = await bucket.store.head(bucket.name, str(key))
        except StorageError:
            return None
        got = await fetch_input(self.net, plan.window, seg, bucket, InputRef(peer, str(key), info), rejected)
        if got is None or got[0] != sha:
            return None
        return sha, info

    # -- 3. score ----------------------------------------------------------------------------------------------------

    async def score(self, plan: Plan, checks: list[SegmentCheck], fetched: int, checked: int,
                    rejected: Counter, hosting: list[HostingCheck] | None = None) -> WindowReport:
        scores = window_scores(checks, hosting or [], self.config.scoring)
        self.board.update(plan.window, scores, self.config.scoring.ema_alpha)
        report = WindowReport(plan.window, self.net.hotkey, checks, scores, dict(self.board.ema),
                              bytes_fetched=fetched, output_bytes_checked=checked, rejected=dict(rejected),
                              hosting=list(hosting or []))
        if plan.window - self.board.last_weights_window >= self.config.scoring.weights_every:
            report.weights_set = await self._set_weights(plan.window)
        self.board.save(self.state_path)
        await self._publish(report)
        log.info(report.line())
        log.debug(report.table())
        self.observers.notify(report)
        return report

    async def _set_weights(self, window: int) -> bool:
        """One attempt per due window, and only one the chain would accept: with a validator permit, and outside
        the subnet's weights rate limit (both read from the chain first). A refusal is logged, never retried in a
        loop; a chain that cannot be read skips this window's attempt, never the validation."""
        directory = await self.net.directory(window)
        uids, weights = self.board.weights({h: directory.uid(h) for h in directory.miners if directory.accepts(h)})
        if not uids:
            return False
        chain = self.net.chain
        try:
            me = [n for n in await asyncio.to_thread(chain.neurons) if n.hotkey == self.net.hotkey]
            if not me or not me[0].validator_permit:
                log.warning("window %d: weights not set: hotkey %s has no validator permit on netuid %s (it needs "
                            "stake enough to be among the subnet's top validators)", window, self.net.hotkey,
                            getattr(chain, "netuid", "?"))
                return False
            wait = await asyncio.to_thread(chain.weights_wait, me[0].uid)
        except ChainError as e:  # a chain read failing must not stop validation
            log.error("window %d: weights not set: cannot read our permit or the rate limit: %s", window, e)
            return False
        if wait > 0:
            log.info("window %d: weights not set yet: the chain's weights rate limit allows it in %d block(s)",
                     window, wait)
            return False
        try:
            await asyncio.to_thread(chain.set_weights, self.net.chain_signer, uids, weights,
                                    self.net.spec.weights_version)
        except Exception as e:  # the chain refusing weights must not stop validation
            log.error("window %d: setting weights failed: %s", window, e)
            return False
        self.board.last_weights_window = window
        log.info("window %d: set weights on %d miners", window, len(uids))
        return True

    async def _publish(self, report: WindowReport) -> None:
        """Our signed report, in our own bucket (written with our account's keys)."""
        try:
            obj = encode_report(self.net.spec.run_id, report.window, self.net.signer, json.loads(report.to_json()))
            bucket = await self.net.bucket(report.window, self.net.hotkey)
            key = str(keys.report_key(self.net.spec.run_id, report.window, self.net.hotkey))
            await write_own(bucket, key, obj.data)
        except (StorageError, NoBucketOnChain, ValueError) as e:  # ValueError: a non-finite number in the report
            log.warning("window %d: could not publish the report: %s", report.window, e)
