"""The validator: watch each window, sample the miners' outputs after the deadline, recompute, score, set weights.

Per window:

1. **Observe** (upload deadline to reduce deadline): list every miner's inputs right at the upload deadline (what
   the miner must include), then poll for outputs and note when each first appears, by our own clock: the latency
   is observed independently of the miner, and an output we never saw before the deadline is missing.
2. **Check** (after the reduce deadline): the sampling seed is the reduce deadline block's hash, which did not
   exist while miners worked. For each sampled (miner, segment) read the output's header and a few element ranges
   with ranged GETs, read the same ranges of every input it lists, recompute the mean in canonical order, and
   compare. Headers of the expected inputs are checked too; nothing is downloaded whole.
3. **Score** (:mod:`mapreduce.scoring`), persist state, write a JSON report to our bucket, set weights every
   ``weights_every`` windows.
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from storage import NotFound, ObjectInfo, PreconditionFailed, StorageError

from . import keys
from .audit import (ReaderCache, Wrong, check_proof_shape, listed_inputs, open_listed_inputs, recompute_difference,
                    sample_ranges)
from .errors import InvalidObject, Late
from .hosting import HostingConfig, check_hosting, hosting_lines
from .keys import ObjectKey
from .network import Network
from .observers import Observers
from .plan import Plan, Segment
from .proof import proof_salt
from .scoring import HostingCheck, Scoreboard, ScoringConfig, SegmentCheck, segment_score, window_scores
from .windows import on_time

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidatorConfig:
    segments_per_miner: int = 2
    ranges_per_segment: int = 2
    range_elements: int = 1024
    poll_interval: float = 0.25
    concurrency: int = 8
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    hosting: HostingConfig = field(default_factory=HostingConfig)  # broadcast copies (mapreduce.hosting)


@dataclass
class Observation:
    """What we saw of one window while it ran."""

    inputs: dict[tuple[str, int], dict[str, ObjectInfo]] = field(default_factory=dict)  # (miner, seg) -> peer -> info
    first_seen: dict[tuple[str, int], float] = field(default_factory=dict)  # (miner, seg) -> unix time
    etags: dict[tuple[str, int], str] = field(default_factory=dict)
    upload_deadline_time: float = 0.0
    reduce_deadline_time: float = 0.0


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


class Validator:
    def __init__(self, net: Network, bucket: str, state_path: str | Path, config: ValidatorConfig = ValidatorConfig()):
        self.net = net
        self.bucket_name = bucket
        self.state_path = Path(state_path)
        self.config = config
        self.board = Scoreboard.load(self.state_path)
        self._sem = asyncio.Semaphore(config.concurrency)
        self.observers = Observers()  # each called with every WindowReport (metrics)

    async def run(self, windows: int | None = None, stop: asyncio.Event | None = None) -> list[WindowReport]:
        """Validate windows from the next one we can fully observe; windows overlap, scores apply in order."""
        reports: list[WindowReport] = []
        block = await self.net.block()
        window = self.net.spec.windows.window_of(block)
        if block >= self.net.phases(window).upload_deadline:
            window += 1  # we could not list this window's inputs at its deadline: do not judge it
        window = max(window, self.board.last_window + 1)
        pending: list[asyncio.Task] = []
        while windows is None or len(reports) + len(pending) < windows:
            if stop and stop.is_set():
                break
            await self.net.wait_for_block(self.net.phases(window).start_block)
            pending.append(asyncio.create_task(self.validate_window(window)))
            window += 1
            # Apply finished windows in order; keep at most two in flight (this one's checks overlap the next's
            # observation phase).
            while pending and (pending[0].done() or len(pending) > 2):
                reports.append(await pending.pop(0))
        for task in pending:
            reports.append(await task)
        return reports

    async def validate_window(self, window: int) -> WindowReport:
        plan = await self.net.plan(window)
        observation = await self.observe(plan)
        checks, fetched, checked_bytes, rejected = await self.check(plan, observation)
        hosting = await check_hosting(self.net, window, self.config.hosting, self.config.scoring, rejected)
        await self.recheck_overwrites(plan, observation, checks)
        return await self.score(plan, checks, fetched, checked_bytes, rejected, hosting)

    async def recheck_overwrites(self, plan: Plan, obs: Observation, checks: list[SegmentCheck]) -> None:
        """At the window's end, list the outputs again: one whose ETag changed since we first saw it was
        overwritten after the fact (peers downloading late would get other bytes than we checked)."""
        await self.net.wait_for_block(self.net.phases(plan.window).end_block)
        later = Observation()
        await asyncio.gather(*(self._list_window(plan, m, later, inputs=False) for m in plan.miners))
        for c in checks:
            slot = (c.miner, c.segment)
            if slot in obs.etags and later.etags.get(slot, obs.etags[slot]) != obs.etags[slot]:
                c.status, c.reason = "wrong", "output was overwritten after the reduce deadline"
                c.score = 0.0

    # -- 1. observe --------------------------------------------------------------------------------------------------

    async def observe(self, plan: Plan) -> Observation:
        phases = self.net.phases(plan.window)
        obs = Observation()
        await self.net.wait_for_block(phases.upload_deadline)
        obs.upload_deadline_time = await self.net.block_timestamp(phases.upload_deadline)
        # outputs appearing meanwhile are noted by the polling below; the inputs list must wait for stragglers
        await self.net.settle(phases.upload_deadline)
        await asyncio.gather(*(self._list_window(plan, m, obs, inputs=True) for m in plan.miners))
        while True:
            past = await self.net.block() >= phases.reduce_deadline
            await asyncio.gather(*(self._list_window(plan, m, obs, inputs=False) for m in plan.miners))
            if past:
                break
            await asyncio.sleep(self.config.poll_interval)
        obs.reduce_deadline_time = await self.net.block_timestamp(phases.reduce_deadline)
        return obs

    async def _list_window(self, plan: Plan, miner: str, obs: Observation, inputs: bool) -> None:
        now = time.time()
        try:
            bucket = await self.net.bucket(plan.window, miner)
            listing = await bucket.store.list(bucket.name, keys.window_prefix(self.net.spec.run_id, plan.window))
        except (StorageError, KeyError) as e:
            log.info("window %d: cannot list miner %s: %s", plan.window, miner[:10], e)
            return
        for info in listing:
            try:
                k = ObjectKey.parse(info.key)
            except InvalidObject:
                continue
            slot = (miner, k.segment)
            if inputs and k.role == "in":
                obs.inputs.setdefault(slot, {})[k.hotkey] = info
            elif not inputs and k.role == "out" and k.hotkey == miner and slot not in obs.first_seen:
                obs.first_seen[slot] = now
                obs.etags[slot] = info.etag

    # -- 2. check ----------------------------------------------------------------------------------------------------

    async def check(self, plan: Plan, obs: Observation):
        rng = random.Random(await self.net.sample_seed(plan.window))
        cfg = self.config
        directory = await self.net.directory(plan.window)
        rejected: Counter = Counter()
        slots = []
        for miner in plan.miners:
            if not directory.accepts(miner):
                rejected["not_allowed"] += 1  # our own lists exclude it: no check, no score, no weight
                continue
            segs = list(plan.segments_for(miner))
            for seg in rng.sample(segs, min(cfg.segments_per_miner, len(segs))):
                slots.append((miner, seg, sample_ranges(rng, seg, cfg.ranges_per_segment, cfg.range_elements)))
        stats = {"fetched": 0, "checked": 0}
        checks = await asyncio.gather(*(self._check_slot(plan, obs, m, seg, ranges, rejected, stats)
                                        for m, seg, ranges in slots))
        return [c for c in checks if c is not None], stats["fetched"], stats["checked"], rejected

    async def _check_slot(self, plan: Plan, obs: Observation, miner: str, seg: Segment,
                          ranges: list[tuple[int, int]], rejected: Counter, stats: dict) -> SegmentCheck | None:
        async with self._sem:
            check = SegmentCheck(miner, seg.index, "ok")
            cache: ReaderCache | None = None
            try:
                cache = ReaderCache(self.net, await self.net.bucket(plan.window, miner))
                expected = await self._expected_inputs(plan, obs, miner, seg, cache, rejected)
                check.expected = len(expected)
                slot = (miner, seg.index)
                if slot not in obs.first_seen:
                    if not expected:
                        return None  # nothing to reduce, nothing to judge
                    check.status, check.reason = "missing", "no output by the reduce deadline"
                    return self._scored(check, obs)
                check.latency = obs.first_seen[slot] - obs.upload_deadline_time
                await self._compare(plan, obs, miner, seg, cache, ranges, expected, check, stats)
            except Wrong as e:
                check.status, check.reason = "wrong", str(e)
            except NotFound as e:
                check.status, check.reason = "invalid", f"output vanished: {e}"
            except InvalidObject as e:
                rejected[e.reason] += 1
                check.status, check.reason = "invalid", f"{e.reason}: {e}"
            except StorageError as e:
                check.status, check.reason = "invalid", f"unreadable: {e}"
            except KeyError as e:  # the miner left the directory mid-window
                check.status, check.reason = "invalid", f"no bucket on chain: {e}"
            finally:
                stats["fetched"] += cache.bytes_fetched if cache else 0
            return self._scored(check, obs)

    def _scored(self, check: SegmentCheck, obs: Observation) -> SegmentCheck:
        reduce_seconds = obs.reduce_deadline_time - obs.upload_deadline_time
        check.score = segment_score(check, self.config.scoring, reduce_seconds)
        return check

    async def _expected_inputs(self, plan: Plan, obs: Observation, miner: str, seg: Segment, cache: ReaderCache,
                               rejected: Counter) -> dict[str, str]:
        """Peer -> content hash of every valid, on-time input the miner had at the upload deadline."""
        directory = await self.net.directory(plan.window)
        skew = self.net.spec.windows.clock_skew_seconds
        on_time_inputs = [(peer, info) for peer, info in sorted(obs.inputs.get((miner, seg.index), {}).items())
                          if on_time(info.last_modified.timestamp(), obs.upload_deadline_time, skew)]

        async def header_hash(peer: str, info: ObjectInfo) -> str | None:
            try:
                return (await cache.reader(info, seg, directory.admits_peer).open()).sha256
            except InvalidObject as e:
                rejected[e.reason] += 1  # the miner is right to leave it out
                return None
            except PreconditionFailed:  # only the bucket's owner can replace an object (write-once for others)
                raise Wrong(f"the input from {peer[:10]} was replaced after the upload deadline") from None

        # The headers at once: each is one small ranged read, so their latencies, not their bytes, add up.
        hashes = await asyncio.gather(*(header_hash(p, i) for p, i in on_time_inputs))
        return {peer: h for (peer, _), h in zip(on_time_inputs, hashes) if h is not None}

    async def _compare(self, plan: Plan, obs: Observation, miner: str, seg: Segment, cache: ReaderCache,
                       ranges: list[tuple[int, int]], expected: dict[str, str], check: SegmentCheck,
                       stats: dict) -> None:
        bucket = cache.bucket
        key = str(keys.output_key(self.net.spec.run_id, plan.window, seg.index, miner))
        info = await bucket.store.head(bucket.name, key)
        if info.etag != obs.etags[(miner, seg.index)]:
            raise Wrong("output was overwritten after we first saw it")
        if not on_time(info.last_modified.timestamp(), obs.reduce_deadline_time,
                       self.net.spec.windows.clock_skew_seconds):
            raise Late("output written after the reduce deadline")
        directory = await self.net.directory(plan.window)
        out_reader = cache.reader(info, seg, lambda h: h == miner,
                                  self.net.output_expect(seg, miner, len(directory.peers)))
        header = await out_reader.open()
        stats["checked"] += info.size
        inputs = listed_inputs(header.meta)
        proof_shape = header.entries["proof"].shape
        check_proof_shape(proof_shape, inputs)
        check.included = len(inputs)
        check.included_expected = sum(expected.get(h) == s for h, s in inputs)
        input_readers = await open_listed_inputs(self.net, plan.window, seg, cache, inputs,
                                                 obs.upload_deadline_time, known=obs.inputs.get((miner, seg.index)))
        row = proof_shape[1] * proof_shape[2]  # chunk-major: every input's rows of one chunk are together

        async def proof(first: int, last: int) -> bytes:
            return (await out_reader.read("proof", first * row, last * row)).numpy().tobytes()

        salt = proof_salt(self.net.spec.run_id, plan.window, seg.index, miner)
        check.difference = await recompute_difference(lambda a, b: out_reader.read("data", a, b), input_readers,
                                                      ranges, self.net.spec.torch_wire_dtype, proof, salt)
        reasons = []
        if check.difference > 0:
            reasons.append("output differs from the recomputed mean")
        if check.included_expected < check.expected:
            missing = sorted(set(expected) - {h for h, _ in inputs})
            reasons.append(f"left out {check.expected - check.included_expected} valid input(s) "
                           f"({', '.join(h[:10] for h in missing)})")
        check.reason = "; ".join(reasons)

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
        directory = await self.net.directory(window)
        uids, weights = self.board.weights({h: directory.uid(h) for h in directory.miners if directory.accepts(h)})
        if not uids:
            return False
        try:
            await asyncio.to_thread(self.net.chain.set_weights, self.net.chain_signer, uids, weights)
        except Exception as e:  # the chain refusing weights must not stop validation
            log.error("window %d: setting weights failed: %s", window, e)
            return False
        self.board.last_weights_window = window
        log.info("window %d: set weights on %d miners", window, len(uids))
        return True

    async def _publish(self, report: WindowReport) -> None:
        try:
            bucket = await self.net.bucket(report.window, self.net.hotkey)
            key = str(keys.report_key(self.net.spec.run_id, report.window, self.net.hotkey))
            await bucket.store.put(bucket.name, key, report.to_json().encode(), content_type="application/json")
        except (StorageError, KeyError) as e:
            log.warning("window %d: could not publish the report: %s", report.window, e)
