"""Broadcast: one peer sends named tensors (typically initial weights) to every other peer through the miners.

The sender pays about one copy per replica in upload; the receivers' downloads come from the miners' buckets, not
the sender's, so the sender's egress does not grow with the number of receivers. Miners run nothing for it: the
sender writes each segment straight into the buckets of the miners the broadcast plan assigns it (with the same
write-once keys peers use for inputs), and validators reward miners for keeping those copies readable and quick
(:mod:`mapreduce.hosting`). Wire rules are in :mod:`mapreduce.wire.broadcast_record`.

::

    caster = Broadcaster(net, bucket="my-peer-bucket")
    receipt = await caster.broadcast(dict(model.named_parameters()))      # on the sending peer
    result = await caster.receive(window, sender=sender_hotkey)           # on every other peer
    for n, p in model.named_parameters():
        p.data.copy_(result.tensors[n])

A receiver waits for the sender's record (until the window's upload deadline), then fetches each segment from the
first replica whose copy verifies (sender's signature, sha256 tree, the hash in the record, shape against the run
spec) and falls back to the next replica when a copy is missing or bad, counting each refusal by reason.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping

import torch

from storage import NotFound, ObjectTooLarge, StorageError

from .directory import Directory
from .errors import BroadcastFailed, HashMismatch, InvalidObject, JunkKey, NoBucketOnChain
from .flat import flatten, unflatten
from .network import Network
from .plan import Plan, Segment
from .trust import order_replicas, trusted_scores
from .windows import on_time
from .wire import keys
from .wire.broadcast_record import BroadcastRecord
from .wire.codec import DTYPES, check_finite, decode
from .wire.expect import BROADCAST_DTYPE, copy_expect, record_max_bytes
from .writes import sign_and_copy, write_own

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BroadcastConfig:
    """How a :class:`Broadcaster` works: requests in flight, polling, window choice, replica order."""

    concurrency: int = 8
    poll_interval: float = 0.1
    # Send only in a window with at least this many blocks of its upload phase left.
    upload_margin_blocks: int = 1
    # Order replicas with the trusted validators' scores (mapreduce.trust); off: plan order, rotated per receiver.
    rank_by_reports: bool = True
    # Seconds one request to another party's endpoint may take (a copy, the sender's record): a stalling endpoint
    # costs its own turn, and the next replica is tried.
    request_timeout: float = 60.0


@dataclass
class BroadcastReceipt:
    """What the sender did: hashes, where each segment landed, and what it cost."""

    window: int
    sender: str
    sha256: dict[int, str] = field(default_factory=dict)
    stored_at: dict[int, list[str]] = field(default_factory=dict)
    failed: dict[int, list[str]] = field(default_factory=dict)
    tags: dict[int, dict[str, str]] = field(default_factory=dict)  # segment -> miner -> key tag of the copy there
    bytes_uploaded: int = 0  # every byte the sender sent: copies and record
    tensor_bytes: int = 0  # the broadcast's payload, fp32
    seconds: float = 0.0
    on_time: bool = True  # finished before the upload deadline, so receivers and validators count it

    @property
    def replicas(self) -> float:
        """Copies stored per segment, on average."""
        return sum(len(v) for v in self.stored_at.values()) / max(1, len(self.stored_at))


@dataclass(frozen=True)
class SegmentSource:
    """Where a receiver got one segment."""

    segment: int
    miner: str
    refused: int  # replicas tried (and refused) before this one; 0 means no fallback


@dataclass
class BroadcastResult:
    """What a receiver got: the tensors (views of ``flat``), where each segment came from, what it refused."""

    window: int
    sender: str
    flat: torch.Tensor
    tensors: dict[str, torch.Tensor]
    sources: list[SegmentSource]
    rejected: Counter
    bytes_downloaded: int = 0
    seconds: float = 0.0

    @property
    def fallbacks(self) -> list[SegmentSource]:
        return [s for s in self.sources if s.refused]


class Broadcaster:
    """Sends and receives broadcasts for one peer; ``bucket`` is the peer's own, where its records go."""

    def __init__(self, net: Network, bucket: str, config: BroadcastConfig = BroadcastConfig()):
        self.net = net
        self.bucket = bucket
        self.config = config
        self._sem = asyncio.Semaphore(config.concurrency)

    @property
    def hotkey(self) -> str:
        return self.net.hotkey

    async def next_window(self) -> int:
        """The window whose upload phase still has room; waits for its first block."""
        return await self.net.next_window(self.config.upload_margin_blocks)

    # -- sending -------------------------------------------------------------------------------------------------

    async def broadcast(self, tensors: Mapping[str, torch.Tensor], window: int | None = None) -> BroadcastReceipt:
        """Send ``tensors`` (named and shaped as in the run spec) in ``window`` (default: the next with room).

        Raises :class:`BroadcastFailed` if the window's upload phase is over, a segment could be stored at no
        miner, or the record cannot be written (or a different one exists: one broadcast per sender per window).
        """
        started = time.monotonic()
        flat = flatten(self.net.spec, tensors)  # fp32: exact for fp32, bf16 and fp16 tensors alike
        check_finite("broadcast", flat)
        if window is None:
            window = await self.next_window()
        phases = self.net.phases(window)
        if await self.net.block() >= phases.upload_deadline:
            raise BroadcastFailed(f"window {window}'s upload phase is over; broadcast in a later window")
        plan = await self.net.broadcast_plan(window, self.hotkey)
        directory = await self.net.directory(window)
        receipt = BroadcastReceipt(window, self.hotkey, tensor_bytes=flat.numel() * flat.element_size())
        cutoff = self.net.phase_end(phases.upload_deadline)  # a copy stored after it would not count
        try:
            await asyncio.gather(*(self._send_segment(plan, directory, s, flat, receipt, cutoff)
                                   for s in plan.segments))
        finally:
            cutoff.cancel()
        for i, stored in receipt.stored_at.items():  # plan order (the order receivers see), not completion order
            stored.sort(key=plan.miners_for(i).index)
        nowhere = [s.index for s in plan.segments if not receipt.stored_at.get(s.index)]
        if nowhere:
            raise BroadcastFailed(f"window {window}: segments {nowhere[:8]} could not be stored at any miner",
                                  {"unstored": len(nowhere)})
        await self._write_record(plan, receipt)
        receipt.on_time = await self.net.block() < phases.upload_deadline
        if not receipt.on_time:
            log.warning("window %d: broadcast finished after the upload deadline; receivers will refuse it", window)
        receipt.seconds = time.monotonic() - started
        return receipt

    async def _send_segment(self, plan: Plan, directory: Directory, seg: Segment, flat: torch.Tensor,
                            receipt: BroadcastReceipt, cutoff: asyncio.Future) -> None:
        replicas = plan.miners_for(seg.index)
        miners = [m for m in replicas if directory.accepts(m)]  # our own lists exclude the rest: no copy
        copies = await sign_and_copy(self.net, plan.window, seg, "bcast", flat[seg.start:seg.end], _copy_tensors,
                                     miners, self._sem, cutoff)
        receipt.sha256[seg.index] = copies.sha256
        receipt.bytes_uploaded += copies.bytes_sent
        failed = sorted(set(copies.failed) | (set(replicas) - set(miners)))
        if failed:
            receipt.failed[seg.index] = failed
        if copies.stored:
            receipt.stored_at[seg.index] = [m for m, _ in copies.stored]
            receipt.tags[seg.index] = dict(copies.stored)

    async def _write_record(self, plan: Plan, receipt: BroadcastReceipt) -> None:
        n = len(plan.segments)
        record = BroadcastRecord(plan.window, self.hotkey, tuple(receipt.sha256[i] for i in range(n)),
                                 tuple(tuple((m, receipt.tags[i][m]) for m in plan.miners_for(i)
                                             if m in receipt.tags.get(i, {})) for i in range(n)))
        obj = record.encode(self.net.spec, self.net.signer)
        key = str(keys.broadcast_record_key(self.net.spec.run_id, plan.window, self.hotkey))
        bucket = await self.net.bucket(plan.window, self.hotkey)

        async def is_ours(data: bytes) -> bool:
            try:
                there = await asyncio.to_thread(BroadcastRecord.decode, data, self.net.spec, plan, self.hotkey)
            except InvalidObject:
                return False  # not a record of ours: replaced
            if there.sha256 != record.sha256:
                raise BroadcastFailed(f"window {plan.window}: a different broadcast of ours is already recorded; "
                                      "one broadcast per sender per window")
            return True
        try:
            if await write_own(bucket, key, obj.data, is_ours=is_ours) != "existing":
                receipt.bytes_uploaded += obj.size
        except StorageError as e:
            raise BroadcastFailed(f"window {plan.window}: could not write the broadcast record: {e}") from e

    # -- receiving -----------------------------------------------------------------------------------------------

    async def receive(self, window: int, sender: str) -> BroadcastResult:
        """The tensors ``sender`` broadcast in ``window``, verified, bit for bit as sent.

        Waits for the sender's record until the window's upload deadline. Raises :class:`BroadcastFailed` (with
        the refusals counted in ``rejected``) if the sender is not an allowed peer, wrote no valid on-time record,
        or some segment has no valid copy at any replica.
        """
        started = time.monotonic()
        rejected: Counter = Counter()
        plan = await self.net.broadcast_plan(window, sender)
        directory = await self.net.directory(window)
        excluded = directory.exclusion(sender, "peer")
        if excluded is not None:
            rejected[excluded.reason] += 1
            raise BroadcastFailed(f"window {window}: not receiving from {sender}: {excluded}", rejected)
        record = await self._await_record(plan, sender, rejected)
        scores: dict[str, float] = {}
        if self.config.rank_by_reports:
            scores = (await trusted_scores(self.net, window)).scores
        result = BroadcastResult(window, sender, torch.empty(self.net.spec.numel, dtype=torch.float32), {}, [],
                                 rejected)
        got = await asyncio.gather(*(self._receive_segment(plan, directory, record, s, scores, result)
                                     for s in plan.segments))
        missing = [s.index for s, src in zip(plan.segments, got) if src is None]
        if missing:
            raise BroadcastFailed(f"window {window}: no valid copy of segments {missing[:8]} from {sender[:10]} "
                                  f"at any replica (refused: {dict(rejected)})", rejected)
        result.sources = list(got)
        result.tensors = unflatten(self.net.spec, result.flat)
        result.seconds = time.monotonic() - started
        return result

    async def _await_record(self, plan: Plan, sender: str, rejected: Counter) -> BroadcastRecord:
        window = plan.window
        deadline_block = self.net.phases(window).upload_deadline
        key = str(keys.broadcast_record_key(self.net.spec.run_id, window, sender))
        while True:
            try:
                bucket = await self.net.bucket(window, sender)
                info = await asyncio.wait_for(bucket.store.head(bucket.name, key), self.config.request_timeout)
            except NotFound:
                info = None
            except (StorageError, NoBucketOnChain, asyncio.TimeoutError) as e:
                log.info("window %d: sender %s's bucket unreachable: %s", window, sender[:10], str(e) or "timed out")
                info = None
            # Read the block after looking: an object seen before the deadline block exists was written in time.
            past = await self.net.block() >= deadline_block
            if info is not None:
                break
            if past:
                rejected["missing"] += 1
                raise BroadcastFailed(f"window {window}: {sender[:10]} wrote no broadcast record by the upload "
                                      "deadline", rejected)
            await asyncio.sleep(self.config.poll_interval)
        if past:
            deadline = await self.net.block_timestamp(deadline_block)
            if not on_time(info.last_modified.timestamp(), deadline, self.net.spec.windows.clock_skew_seconds):
                rejected["late"] += 1
                raise BroadcastFailed(f"window {window}: {sender[:10]}'s broadcast record was written after the "
                                      "upload deadline", rejected)
        try:
            data = await asyncio.wait_for(bucket.store.get(bucket.name, key, max_bytes=record_max_bytes(
                self.net.spec), if_match=info.etag), self.config.request_timeout)
            return await asyncio.to_thread(BroadcastRecord.decode, data, self.net.spec, plan, sender)
        except asyncio.TimeoutError:
            rejected["timeout"] += 1
            raise BroadcastFailed(f"window {window}: {sender[:10]}'s broadcast record did not come within "
                                  f"{self.config.request_timeout:.0f}s", rejected) from None
        except ObjectTooLarge:
            rejected["oversized"] += 1
            raise BroadcastFailed(f"window {window}: {sender[:10]}'s broadcast record is oversized", rejected)
        except InvalidObject as e:
            rejected[e.reason] += 1
            raise BroadcastFailed(f"window {window}: {sender[:10]}'s broadcast record refused ({e.reason}): {e}",
                                  rejected) from e
        except StorageError as e:
            rejected["unreadable"] += 1
            raise BroadcastFailed(f"window {window}: cannot read {sender[:10]}'s broadcast record: {e}",
                                  rejected) from e

    async def _receive_segment(self, plan: Plan, directory: Directory, record: BroadcastRecord, seg: Segment,
                               scores: Mapping[str, float], result: BroadcastResult) -> SegmentSource | None:
        window, sender, rejected = plan.window, record.sender, result.rejected
        expect = copy_expect(self.net.spec, seg, sender)
        candidates = order_replicas(record.miners_for(seg.index), scores, self.hotkey, seg.index)
        for refused, miner in enumerate(candidates):
            if not directory.accepts(miner):
                rejected["not_allowed"] += 1
                log.info("window %d segment %d: skipping miner %s, excluded by our lists", window, seg.index,
                         miner[:10])
                continue
            copy_key = record.copy_key(self.net.spec.run_id, seg.index, miner)
            key = str(copy_key)
            if not keys.tag_valid(copy_key, miner):
                rejected[JunkKey.reason] += 1  # the sender's record names a key it did not make for that bucket
                continue
            async with self._sem:
                try:
                    bucket = await self.net.bucket(window, miner)
                    data = await asyncio.wait_for(bucket.store.get(bucket.name, key, max_bytes=expect.max_bytes),
                                                  self.config.request_timeout)
                    result.bytes_downloaded += len(data)
                    decoded = await asyncio.to_thread(decode, data, key, expect)
                    if decoded.sha256 != record.sha256[seg.index]:
                        raise HashMismatch(f"the copy at miner {miner[:10]} is not the one the sender recorded")
                    result.flat[seg.start:seg.end].copy_(decoded.tensors["data"])
                    return SegmentSource(seg.index, miner, refused)
                except NotFound:
                    reason, detail = "missing", "no copy"
                except ObjectTooLarge as e:
                    reason, detail = "oversized", str(e)
                except InvalidObject as e:
                    reason, detail = e.reason, str(e)
                except (StorageError, NoBucketOnChain) as e:
                    reason, detail = "unreachable", str(e)
                except asyncio.TimeoutError:
                    reason, detail = "timeout", f"no answer within {self.config.request_timeout:.0f}s"
            rejected[reason] += 1
            log.warning("window %d segment %d: broadcast copy at miner %s refused (%s): %s; trying the next "
                        "replica", window, seg.index, miner[:10], reason, detail)
        return None


def _copy_tensors(values: torch.Tensor) -> dict[str, torch.Tensor]:
    """A broadcast copy's tensors: fp32 whatever the run's wire format, so weights arrive exactly (wire/expect.py)."""
    return {"data": values.to(DTYPES[BROADCAST_DTYPE])}
