"""The miner: each window, reduce the segments the plan gives it and publish the results on time.

Per window: wait for the upload deadline; for each assigned segment, list the inputs in our bucket, keep the
valid on-time ones, reduce them in canonical order with fp32 accumulation, and write the signed output, which
lists every included input (hotkey and content hash) and their count, write-once, before the reduce deadline.

Restart safety comes from the key layout and write-once puts: an output of ours that already exists is never
rewritten, so a miner killed mid-window and restarted picks up where the chain is, without double counting. The
miner writes its bucket with its own account's keys; an object at its output key that is not its own valid output
(someone holding the bucket's public write key put it there first) is replaced, never taken for ours.

Nothing one object, one segment or one window does stops the miner: a failure is logged and counted, the segment
is marked failed, and the next window starts on time.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import torch

from storage import NotFound, StorageError

from .audit import mean_digest
from .directory import BucketLocation
from .errors import InvalidObject, PhaseOver, ProtocolError
from .inputs import reduce_segment
from .network import Bucket, Network
from .observers import Observers
from .plan import Segment
from .trust import standing_line
from .windows import settle_time
from .wire import keys, strictjson
from .wire.codec import ObjectMeta, decode, encode
from .wire.proof import proof_salt
from .writes import write_own

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MinerConfig:
    """What a miner does at once. Every field is a ``--miner.<field>`` flag (mapreduce/ops/flags.py): its meaning is
    the ``help`` of its metadata."""

    segment_concurrency: int = field(default=2, metadata={
        "help": "segments reduced at once; the others wait their turn"})
    lookahead: int = field(default=2, metadata={
        "help": "inputs downloaded ahead of the one being added; memory is about (lookahead + 1) segments"})


@dataclass
class SegmentOutcome:
    segment: int
    inputs: int
    status: str  # "written", "existing" (an earlier run wrote it), "no-inputs", "late" (not done by the deadline),
    # "failed" (storage errors, or an internal error: logged)
    seconds: float = 0.0


@dataclass
class MinerWindowReport:
    window: int
    outcomes: list[SegmentOutcome] = field(default_factory=list)
    rejected: Counter = field(default_factory=Counter)
    finished_block: int = 0
    reduce_deadline: int = 0
    seconds: float = 0.0

    @property
    def on_time(self) -> bool:
        return self.finished_block < self.reduce_deadline

    def line(self) -> str:
        written = sum(o.status == "written" for o in self.outcomes)
        inputs = "+".join(str(o.inputs) for o in self.outcomes) or "0"
        rejected = ", ".join(f"{k}={v}" for k, v in sorted(self.rejected.items())) or "none"
        other = [f"s{o.segment}:{o.status}" for o in self.outcomes if o.status != "written"]
        return (f"window {self.window}: {written}/{len(self.outcomes)} outputs written, inputs {inputs}, "
                f"rejected {rejected}{', ' + ' '.join(other) if other else ''}, {self.seconds:.2f}s, "
                f"{'on time' if self.on_time else 'LATE'} (block {self.finished_block}, "
                f"deadline {self.reduce_deadline})")


class Miner:
    def __init__(self, net: Network, bucket: str, config: MinerConfig = MinerConfig()):
        self.net = net
        self.bucket_name = bucket
        self.config = config
        self.observers = Observers()  # each called with every MinerWindowReport (metrics)
        self._settle_at: dict[int, float] = {}  # window -> when its input listing is final (run_window sets it)
        self._max_inputs: dict[int, int] = {}  # window -> peers on chain: bounds the size of our outputs

    async def setup(self, location: BucketLocation) -> None:
        """Create our bucket (with our account's keys) if needed and publish it on chain."""
        store = await self.net.pool.own_store()
        await store.create_bucket(self.bucket_name)
        await self.net.commit(location)

    async def run(self, windows: int | None = None, stop: asyncio.Event | None = None) -> list[MinerWindowReport]:
        """Serve windows from the current one on; ``windows`` bounds how many (None: until ``stop``)."""
        reports = []
        block = await self.net.block()
        window = self.net.spec.windows.window_of(block)
        if block >= self.net.phases(window).reduce_deadline:
            window += 1  # too late for this one: its outputs would not count
        while (windows is None or len(reports) < windows) and not (stop and stop.is_set()):
            try:
                report = await self.run_window(window)
            except (StorageError, ProtocolError) as e:  # e.g. the chain or our own bucket unreachable for a while
                log.error("window %d: %s; carrying on with the next window", window, e)
                report = MinerWindowReport(window, reduce_deadline=self.net.phases(window).reduce_deadline)
            except Exception:  # a bug, or the chain failing in a way nobody foresaw: never the end of the miner
                log.exception("window %d: internal error; carrying on with the next window", window)
                report = MinerWindowReport(window, reduce_deadline=self.net.phases(window).reduce_deadline)
            log.info(report.line())
            log.info(await standing_line(self.net, window))  # what the validators we trust say of us
            self.observers.notify(report)
            reports.append(report)
            window += 1
        return reports

    async def run_window(self, window: int) -> MinerWindowReport:
        phases = self.net.phases(window)
        report = MinerWindowReport(window, reduce_deadline=phases.reduce_deadline)
        await self.net.wait_for_block(phases.start_block)
        plan = await self.net.plan(window)
        mine = plan.segments_for(self.net.hotkey)
        await self.net.wait_for_block(phases.upload_deadline)
        started = time.monotonic()
        deadline = await self.net.block_timestamp(phases.upload_deadline)
        # Inputs stamped within the clock allowance may still appear until settle_time; rather than wait for it,
        # produce() starts on what is listed now and reduce_segment lists again then (same result, sooner).
        self._settle_at = {w: t for w, t in self._settle_at.items() if w > window - 3}
        self._settle_at[window] = settle_time(deadline, self.net.spec.windows.clock_skew_seconds)
        bucket = await self.net.bucket(window, self.net.hotkey)
        sem = asyncio.Semaphore(self.config.segment_concurrency)
        cutoff = self.net.phase_end(phases.reduce_deadline)  # an output written after it counts for nothing

        async def one(seg: Segment) -> SegmentOutcome:
            async with sem:
                t0 = time.monotonic()
                try:
                    outcome = await self.net.within(
                        cutoff, self._reduce_and_write(window, seg, bucket, deadline, report.rejected))
                except PhaseOver:
                    outcome = SegmentOutcome(seg.index, 0, "late")
                except Exception:  # a bug must cost one segment, never the window or the process
                    log.exception("window %d segment %d: internal error", window, seg.index)
                    report.rejected["internal_error"] += 1
                    outcome = SegmentOutcome(seg.index, 0, "failed")
                outcome.seconds = time.monotonic() - t0
                return outcome

        try:
            report.outcomes = sorted(await asyncio.gather(*(one(s) for s in mine)), key=lambda o: o.segment)
        finally:
            cutoff.cancel()
        report.seconds = time.monotonic() - started
        report.finished_block = await self.net.block()
        return report

    async def _reduce_and_write(self, window: int, seg: Segment, bucket: Bucket, deadline: float,
                                rejected: Counter) -> SegmentOutcome:
        key = str(keys.output_key(self.net.spec.run_id, window, seg.index, self.net.hotkey))
        is_ours = await self._ours_checker(window, seg, key)
        try:
            info = await bucket.store.head(bucket.name, key)
            if info.size <= self._output_cap(window, seg):
                if await is_ours(bytes(await bucket.store.get(bucket.name, key, max_bytes=info.size))):
                    return SegmentOutcome(seg.index, 0, "existing")  # written before a restart; write-once
            log.warning("window %d segment %d: our output key holds an object that is not our output; it will be "
                        "replaced", window, seg.index)
            rejected["squatted"] += 1
        except NotFound:
            pass
        try:
            produced = await self.produce(window, seg, bucket, deadline, rejected)
            if produced is None:
                return SegmentOutcome(seg.index, 0, "no-inputs")
            status = await self.publish(window, seg, bucket, produced, is_ours=is_ours)
            return SegmentOutcome(seg.index, len(produced.inputs), "existing" if status == "existing" else "written")
        except StorageError as e:
            log.error("window %d segment %d: could not reduce or write: %s", window, seg.index, e)
            return SegmentOutcome(seg.index, 0, "failed")

    def _output_cap(self, window: int, seg: Segment) -> int:
        return self.net.output_expect(seg, self.net.hotkey, self._max_inputs.get(window, 1)).max_bytes

    async def _ours_checker(self, window: int, seg: Segment, key: str):
        """A predicate: are these bytes a valid output of ours for this key?"""
        self._max_inputs[window] = max(1, len((await self.net.directory(window)).peers))
        self._max_inputs = {w: n for w, n in self._max_inputs.items() if w > window - 3}
        expect = self.net.output_expect(seg, self.net.hotkey, self._max_inputs[window])

        def check(data: bytes) -> bool:
            try:
                decode(data, key, expect)
                return True
            except InvalidObject:
                return False

        async def is_ours(data: bytes) -> bool:
            return await asyncio.to_thread(check, data)
        return is_ours

    async def produce(self, window: int, seg: Segment, bucket: Bucket, deadline: float,
                      rejected: Counter) -> "Produced | None":
        """The honest output: the ordered mean of the valid on-time inputs, with the proof of possession."""
        salt = proof_salt(self.net.spec.run_id, window, seg.index, self.net.hotkey)
        acc = await reduce_segment(self.net, window, seg, bucket, deadline, rejected, self.config.lookahead, salt,
                                   settle_at=self._settle_at.get(window))
        if not acc.count:
            return None
        return Produced(acc.mean(self.net.spec.wire.output_dtype), acc.inputs, torch.stack(acc.proofs))

    async def publish(self, window: int, seg: Segment, bucket: Bucket, produced: "Produced",
                      write_once: bool = True, is_ours=None) -> str:
        """Sign and write an output to our bucket, write-once (a foreign object at the key is replaced);
        ``write_once=False`` overwrites whatever is there. Returns what :func:`~mapreduce.writes.write_own` did."""
        spec = self.net.spec
        inputs = [[h, s, t] for h, s, t in produced.inputs]
        meta = ObjectMeta(spec.run_id, window, "out", self.net.hotkey, seg.index,
                          extra={"inputs": strictjson.dumps(inputs), "count": str(len(inputs)),
                                 "mean": mean_digest(produced.mean)})
        # Stored chunk-major ([chunks, inputs, 8]) so a checker reads every input's rows of a chunk at once.
        tensors = {"data": produced.mean, "proof": produced.proof.transpose(0, 1)}
        obj = await asyncio.to_thread(encode, meta, tensors, self.net.signer)
        if not write_once:
            await bucket.store.put(bucket.name, str(meta.key), obj.data)
            return "written"
        return await write_own(bucket, str(meta.key), obj.data, is_ours=is_ours)


@dataclass
class Produced:
    """An output before it is signed: the mean, the inputs it covers (hotkey, hash, key tag), their proof rows
    (``[inputs, chunks, 8]``, one stacked row block per input; :meth:`Miner.publish` stores them chunk-major)."""

    mean: torch.Tensor
    inputs: list[tuple[str, str, str]]  # (peer hotkey, input sha256, key tag the input was read under)
    proof: torch.Tensor
