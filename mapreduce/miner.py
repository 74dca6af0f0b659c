"""The miner: each window, reduce the segments the plan gives it and publish the results on time.

Per window: wait for the upload deadline; for each assigned segment, list the inputs in our bucket, keep the
valid on-time ones, reduce them in canonical order with fp32 accumulation, and write the signed output, which
lists every included input (hotkey and content hash) and their count, write-once, before the reduce deadline.

Restart safety comes from the key layout and write-once puts: an output that already exists is never rewritten,
so a miner killed mid-window and restarted picks up where the chain is, without double counting.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import torch

from storage import NotFound, PreconditionFailed, StorageError

from . import keys
from .codec import ObjectMeta, encode
from .directory import BucketLocation
from .inputs import reduce_segment
from .network import Bucket, Network
from .observers import Observers
from .plan import Segment
from .proof import proof_salt
from .trust import standing_line
from .windows import settle_time

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MinerConfig:
    segment_concurrency: int = 2
    # Inputs downloaded ahead of the one being added; memory is about (lookahead + 1) segments.
    lookahead: int = 2


@dataclass
class SegmentOutcome:
    segment: int
    inputs: int
    status: str  # "written", "existing" (an earlier run wrote it), "no-inputs", "failed"
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

    async def setup(self, location: BucketLocation) -> None:
        """Create our bucket if needed and publish it on chain."""
        store = await self.net.pool.store_for(location)
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
            report = await self.run_window(window)
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

        async def one(seg: Segment) -> SegmentOutcome:
            async with sem:
                t0 = time.monotonic()
                outcome = await self._reduce_and_write(window, seg, bucket, deadline, report.rejected)
                outcome.seconds = time.monotonic() - t0
                return outcome

        report.outcomes = sorted(await asyncio.gather(*(one(s) for s in mine)), key=lambda o: o.segment)
        report.seconds = time.monotonic() - started
        report.finished_block = await self.net.block()
        return report

    async def _reduce_and_write(self, window: int, seg: Segment, bucket: Bucket, deadline: float,
                                rejected: Counter) -> SegmentOutcome:
        key = str(keys.output_key(self.net.spec.run_id, window, seg.index, self.net.hotkey))
        try:
            await bucket.store.head(bucket.name, key)
            return SegmentOutcome(seg.index, 0, "existing")  # written before a restart; write-once
        except NotFound:
            pass
        try:
            produced = await self.produce(window, seg, bucket, deadline, rejected)
            if produced is None:
                return SegmentOutcome(seg.index, 0, "no-inputs")
            await self.publish(window, seg, bucket, produced)
            return SegmentOutcome(seg.index, len(produced.inputs), "written")
        except PreconditionFailed:
            return SegmentOutcome(seg.index, 0, "existing")
        except StorageError as e:
            log.error("window %d segment %d: could not reduce or write: %s", window, seg.index, e)
            return SegmentOutcome(seg.index, 0, "failed")

    async def produce(self, window: int, seg: Segment, bucket: Bucket, deadline: float,
                      rejected: Counter) -> "Produced | None":
        """The honest output: the ordered mean of the valid on-time inputs, with the proof of possession."""
        salt = proof_salt(self.net.spec.run_id, window, seg.index, self.net.hotkey)
        acc = await reduce_segment(self.net, window, seg, bucket, deadline, rejected, self.config.lookahead, salt,
                                   settle_at=self._settle_at.get(window))
        if not acc.count:
            return None
        return Produced(acc.mean(self.net.spec.torch_wire_dtype), list(zip(acc.hotkeys, acc.hashes)),
                        torch.stack(acc.proofs))

    async def publish(self, window: int, seg: Segment, bucket: Bucket, produced: "Produced",
                      write_once: bool = True) -> None:
        """Sign and write an output, write-once."""
        spec = self.net.spec
        inputs = [[h, s] for h, s in produced.inputs]
        meta = ObjectMeta(spec.run_id, window, "out", self.net.hotkey, seg.index,
                          extra={"inputs": json.dumps(inputs, separators=(",", ":")), "count": str(len(inputs))})
        # Stored chunk-major ([chunks, inputs, 8]) so a checker reads every input's rows of a chunk at once.
        tensors = {"data": produced.mean, "proof": produced.proof.transpose(0, 1)}
        obj = await asyncio.to_thread(encode, meta, tensors, self.net.signer)
        await bucket.store.put(bucket.name, str(meta.key), obj.data, if_none_match=write_once)


@dataclass
class Produced:
    """An output before it is signed: the mean, the inputs it covers (hotkey, hash), their proof rows
    (``[inputs, chunks, 8]``, one stacked row block per input; :meth:`Miner.publish` stores them chunk-major)."""

    mean: torch.Tensor
    inputs: list[tuple[str, str]]
    proof: torch.Tensor
