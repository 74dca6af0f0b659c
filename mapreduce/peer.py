"""The peer: upload gradient segments, get back the average. What a training loop calls.

One window, seen from a peer::

    upload phase   split the flat gradient by the plan; sign each segment; write it (write-once) to the bucket of
                   every miner holding that segment; write a signed record of what went where to our own bucket
    reduce phase   poll each segment's replicas; take the first valid output that includes our input (else the
                   first valid output); after the reduce deadline, a segment with no valid replica is reduced by
                   the peer itself from the inputs, or left as our own gradient (``PeerConfig.fallback``)

:meth:`Peer.allreduce` does all of it for named tensors::

    result = await peer.allreduce({n: p.grad for n, p in model.named_parameters()})
    for n, p in model.named_parameters():
        p.grad.copy_(result.tensors[n])
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping

import torch

from storage import ListingTooLong, ObjectInfo, ObjectTooLarge, StorageError

from . import keys
from .audit import (ReaderCache, Wrong, check_against_records, check_proof_shape, impossible_stamp, listed_inputs,
                    open_listed_inputs, read_records, recompute_difference, sample_ranges)
from .codec import Encoded, ObjectMeta, check_finite, decode, encode
from .directory import BucketLocation
from .errors import Late, NotAParticipant, ProtocolError
from .flat import flatten, unflatten
from .inputs import InputRef, download_listed, fetch_input, reduce_segment
from .listing import PER_WRITER_KEYS, list_capped
from .network import Network
from .plan import Plan, Segment
from .proof import proof_salt
from .records import SegmentUpload, UploadRecord
from .windows import on_time, settle_time
from .writes import write_copies, write_own

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PeerConfig:
    concurrency: int = 8
    poll_interval: float = 0.1
    # "reduce": fetch the inputs and reduce a failed segment ourselves; "own": keep our own gradient for it.
    fallback: str = "reduce"
    # Start a window only with at least this many blocks of its upload phase left; else wait for the next one.
    upload_margin_blocks: int = 1
    # Element ranges of each output recomputed from its inputs (ranged reads) before it is trusted; 0 turns the
    # spot check off. One range of 1024 elements costs a few KiB per input.
    spot_check_ranges: int = 1
    spot_check_elements: int = 1024
    # Seconds one poll of one replica may take (listing, download, audit): a replica whose endpoint stalls is
    # given up for that poll, and the others are polled meanwhile.
    fetch_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.fallback not in ("reduce", "own"):
            raise ValueError("fallback must be 'reduce' or 'own'")


@dataclass
class UploadReceipt:
    window: int
    sha256: dict[int, str]  # segment -> content hash of our input
    stored_at: dict[int, list[str]]  # segment -> miners whose bucket accepted it
    failed: dict[int, list[str]]  # segment -> miners whose bucket did not
    bytes_uploaded: int = 0
    tags: dict[int, dict[str, str]] = field(default_factory=dict)  # segment -> miner -> key tag of our input there
    finished_at: float | None = None  # unix time (our clock) when every upload had landed


@dataclass(frozen=True)
class SegmentResult:
    segment: int
    source: str  # "replica", "self-reduced" or "own"
    miner: str | None
    count: int  # inputs in the average
    included_self: bool


@dataclass
class AllReduceResult:
    window: int
    flat: torch.Tensor
    tensors: dict[str, torch.Tensor]
    segments: list[SegmentResult]
    receipt: UploadReceipt
    bytes_downloaded: int = 0
    rejected: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def fallbacks(self) -> list[SegmentResult]:
        return [s for s in self.segments if s.source != "replica"]

    @property
    def peers_included(self) -> int:
        return min((s.count for s in self.segments), default=0)


class Peer:
    """A trainer taking part in a run. ``bucket`` is the peer's own bucket, for its upload records."""

    def __init__(self, net: Network, bucket: str, config: PeerConfig = PeerConfig()):
        self.net = net
        self.bucket = bucket
        self.config = config
        self._sem = asyncio.Semaphore(config.concurrency)
        self._records: dict[str, UploadRecord] = {}

    @property
    def hotkey(self) -> str:
        return self.net.hotkey

    async def setup(self, location: BucketLocation | None = None) -> None:
        """Create our bucket (with our account's keys) if needed and publish it on chain as a peer's (once per run;
        a no-op when the chain already holds it). ``location`` defaults to our bucket on the storage endpoint we
        use, with the read-only keys in ``MR_PUBLIC_*`` (none: others read it anonymously)."""
        location = location or BucketLocation.published("peer", self.bucket, self.net.pool.default.endpoint_url)
        store = await self.net.pool.own_store()
        await store.create_bucket(self.bucket)
        await self.net.commit(location)

    # -- windows -------------------------------------------------------------------------------------------------

    async def next_window(self) -> int:
        """The window whose upload phase still has room for us; waits for its first block."""
        return await self.net.next_window(self.config.upload_margin_blocks)

    async def allreduce(self, tensors: Mapping[str, torch.Tensor], window: int | None = None) -> AllReduceResult:
        """Average ``tensors`` (named as in the run spec) with every peer of the next window."""
        started = time.monotonic()
        flat = flatten(self.net.spec, tensors)
        if window is None:
            window = await self.next_window()
        receipt = await self.upload(window, flat)
        result = await self.download(window, receipt, flat)
        result.seconds = time.monotonic() - started
        return result

    # -- upload --------------------------------------------------------------------------------------------------

    async def upload(self, window: int, flat: torch.Tensor) -> UploadReceipt:
        # Never ship NaN, or values beyond the run's bound: every miner would (rightly) refuse them.
        check_finite("gradient", flat, self.net.spec.max_abs_value)
        plan = await self.net.plan(window)
        excluded = (await self.net.directory(window)).exclusion(self.hotkey, "peer")
        if excluded is not None:
            raise NotAParticipant(f"hotkey {self.hotkey} cannot take part as a peer in window {window}: {excluded}. "
                                  "Register it on the netuid, commit a peer bucket (Peer.setup), and check the "
                                  "run's allow and deny lists.")
        receipt = UploadReceipt(window, {}, {}, {})
        # A copy not stored by the upload deadline would not count: no miner's endpoint may hold us past it.
        cutoff = self.net.phase_end(self.net.phases(window).upload_deadline)
        try:
            await asyncio.gather(*(self._upload_segment(plan, s, flat, receipt, cutoff) for s in plan.segments))
        finally:
            cutoff.cancel()
        receipt.finished_at = time.time()
        await self._write_record(receipt)
        return receipt

    async def _upload_segment(self, plan: Plan, seg: Segment, flat: torch.Tensor, receipt: UploadReceipt,
                              cutoff: asyncio.Future) -> None:
        spec = self.net.spec
        async with self._sem:
            piece = flat[seg.start:seg.end].to(spec.torch_wire_dtype)
            meta = ObjectMeta(spec.run_id, plan.window, "in", self.hotkey, seg.index)
            obj: Encoded = await asyncio.to_thread(encode, meta, {"data": piece}, self.net.signer)
        receipt.sha256[seg.index] = obj.sha256
        directory = await self.net.directory(plan.window)
        # the run's lists shaped the plan; this process's own lists only narrow whom we use
        miners = [m for m in plan.miners_for(seg.index) if directory.accepts(m)]
        copies = await write_copies(self.net, plan.window, seg.index, "in", miners, obj.data, self._sem, cutoff)
        receipt.bytes_uploaded += copies.bytes_sent
        if copies.stored:
            receipt.stored_at[seg.index] = [m for m, _ in copies.stored]
            receipt.tags[seg.index] = dict(copies.stored)
        if copies.failed:
            receipt.failed[seg.index] = sorted(copies.failed)

    async def _write_record(self, receipt: UploadReceipt) -> None:
        """The signed record of what we uploaded where: a miner cannot drop our input without a trace."""
        uploads = {s: SegmentUpload(receipt.sha256[s], tuple(receipt.tags.get(s, {}).items()))
                   for s in sorted(receipt.sha256)}
        obj = UploadRecord(self.hotkey, receipt.window, uploads).encode(self.net.spec, self.net.signer)
        try:
            bucket = await self.net.bucket(receipt.window, self.hotkey)
            await write_own(bucket, str(keys.record_key(self.net.spec.run_id, receipt.window, self.hotkey)), obj.data)
        except (StorageError, KeyError) as e:
            log.warning("window %d: could not write the upload record: %s", receipt.window, e)

    # -- download ------------------------------------------------------------------------------------------------

    async def download(self, window: int, receipt: UploadReceipt, own: torch.Tensor) -> AllReduceResult:
        plan = await self.net.plan(window)
        result = AllReduceResult(window, torch.empty(self.net.spec.numel), {}, [], receipt)
        # Other peers' signed records of what they uploaded where: a miner that drops an input contradicts them.
        # Written during the upload phase, so read them once it is over.
        await self.net.wait_for_block(self.net.phases(window).upload_deadline)
        directory = await self.net.directory(window)
        self._records = await read_records(self.net, window, [p for p in directory.peers if p != self.hotkey],
                                           result.rejected)
        # Honest miners write outputs only once their input listing is final (settle_time): polling before then
        # would only load their servers while they download our inputs.
        deadline = await self.net.block_timestamp(self.net.phases(window).upload_deadline)
        await asyncio.sleep(max(0.0, settle_time(deadline, self.net.spec.windows.clock_skew_seconds) - time.time()))
        segments = await asyncio.gather(*(self._download_segment(plan, s, receipt, own, result, deadline)
                                          for s in plan.segments))
        result.segments = sorted(segments, key=lambda r: r.segment)
        result.tensors = unflatten(self.net.spec, result.flat)
        return result

    async def _download_segment(self, plan: Plan, seg: Segment, receipt: UploadReceipt, own: torch.Tensor,
                                result: AllReduceResult, upload_deadline: float) -> SegmentResult:
        phases = self.net.phases(plan.window)
        directory = await self.net.directory(plan.window)
        replicas = [m for m in plan.miners_for(seg.index) if directory.accepts(m)]
        ours = receipt.sha256.get(seg.index)
        # Our own evidence, by our own clock: every upload of ours had landed (the server said so) before the
        # deadline. A miner whose output leaves such an input of ours out is lying about it, whatever its server's
        # timestamps say; its output is refused (and if every replica does it, we reduce the segment ourselves).
        on_time_by_us = receipt.finished_at is not None and receipt.finished_at <= upload_deadline
        settled: set[str] = set()
        refused: dict[str, str] = {}  # miner -> ETag of the object we refused there (read again only if it changes)
        fallback: tuple[str, torch.Tensor, int] | None = None  # a valid output that (rightly) left our input out
        while True:
            past_deadline = await self.net.block() >= phases.reduce_deadline
            pending = [m for m in replicas if m not in settled]
            # Where is an output? Every replica at once: one small listing each, a stalling one bounded.
            found = await asyncio.gather(*(self._find_output(plan, seg, m, past_deadline, result) for m in pending))
            for miner, info in zip(pending, found):  # then in plan order, one download at a time
                if info is False:
                    settled.add(miner)  # unreachable past the deadline
                    continue
                if info is None or refused.get(miner) == info.etag:
                    if past_deadline and info is not None:
                        settled.add(miner)
                    continue
                got = await self._take_output(plan, seg, miner, info, past_deadline, result)
                if got is None:
                    refused[miner] = info.etag  # not a valid output of this miner (yet): junk at its key, or torn
                    if past_deadline:
                        settled.add(miner)
                    continue
                settled.add(miner)
                values, inputs = got
                included = any(h == self.hotkey and s == ours for h, s, _ in inputs)
                if included or miner not in receipt.stored_at.get(seg.index, []):
                    result.flat[seg.start:seg.end] = values
                    return SegmentResult(seg.index, "replica", miner, len(inputs), included)
                if on_time_by_us:
                    result.rejected["omits_own_input"] += 1
                    log.warning("window %d segment %d: miner %s left out our input, which was in its bucket before "
                                "the deadline; refused", plan.window, seg.index, miner[:10])
                    continue
                log.warning("window %d segment %d: miner %s left our (late) input out", plan.window, seg.index,
                            miner[:10])
                fallback = fallback or (miner, values, len(inputs))
            if past_deadline or len(settled) == len(replicas):
                break
            await asyncio.sleep(self.config.poll_interval)
        if fallback is not None:
            miner, values, count = fallback
            result.flat[seg.start:seg.end] = values
            return SegmentResult(seg.index, "replica", miner, count, False)
        return await self._finish_alone(plan, seg, own, result)

    async def _find_output(self, plan: Plan, seg: Segment, miner: str, past_deadline: bool,
                           result: AllReduceResult) -> ObjectInfo | None | bool:
        """The listing entry of ``miner``'s output of ``seg``; None if not there (yet), False if the miner cannot
        be reached past the deadline. At most ``fetch_timeout``: a stalling endpoint never holds the others up."""
        key = str(keys.output_key(self.net.spec.run_id, plan.window, seg.index, miner))
        try:
            async with self._sem:
                bucket = await self.net.bucket(plan.window, miner)
                # A listing with the output's key as the prefix rather than a HEAD: one cheap request per poll,
                # where a HEAD that misses costs two (the store asks whether the bucket exists), and it gives the
                # size and ETag the download needs, so that is one GET with no second HEAD.
                listing = await asyncio.wait_for(bucket.store.list(bucket.name, key, max_keys=PER_WRITER_KEYS),
                                                 self.config.fetch_timeout)
            return next((o for o in listing if o.key == key), None)
        except (StorageError, KeyError, asyncio.TimeoutError) as e:
            if past_deadline:
                result.rejected["unreachable"] += 1
                log.warning("window %d segment %d: miner %s unreachable: %s", plan.window, seg.index, miner[:10],
                            str(e) or "timed out")
                return False
            return None

    async def _take_output(self, plan: Plan, seg: Segment, miner: str, info: ObjectInfo, past_deadline: bool,
                           result: AllReduceResult) -> tuple[torch.Tensor, list[tuple[str, str, str]]] | None:
        """Download, verify and audit the output ``info`` lists; ``(values, inputs)``, or None (counted by
        reason). At most ``fetch_timeout``."""
        try:
            return await asyncio.wait_for(self._take_output_unbounded(plan, seg, miner, info, past_deadline, result),
                                          self.config.fetch_timeout)
        except asyncio.TimeoutError:
            result.rejected["timeout"] += 1
            log.warning("window %d segment %d: miner %s did not answer within %.0fs", plan.window, seg.index,
                        miner[:10], self.config.fetch_timeout)
        except (ProtocolError, ObjectTooLarge) as e:
            reason = getattr(e, "reason", "oversized")
            result.rejected[reason] += 1
            log.warning("window %d segment %d: output of miner %s rejected (%s): %s", plan.window, seg.index,
                        miner[:10], reason, e)
        except (StorageError, KeyError) as e:
            result.rejected["unreadable"] += 1
            log.warning("window %d segment %d: output of miner %s unreadable: %s", plan.window, seg.index,
                        miner[:10], e)
        except Exception:  # a bug must cost one replica, never the window
            log.exception("window %d segment %d: internal error reading miner %s's output", plan.window, seg.index,
                          miner[:10])
            result.rejected["internal_error"] += 1
        return None

    async def _take_output_unbounded(self, plan: Plan, seg: Segment, miner: str, info: ObjectInfo,
                                     past_deadline: bool, result: AllReduceResult):
        key = info.key
        directory = await self.net.directory(plan.window)
        expect = self.net.output_expect(seg, miner, len(directory.peers))
        skew = self.net.spec.windows.clock_skew_seconds
        if impossible_stamp(info, skew):
            raise Wrong("its server stamps objects in the future: its clock cannot be trusted")
        if past_deadline:
            deadline = await self.net.block_timestamp(self.net.phases(plan.window).reduce_deadline)
            if not on_time(info.last_modified.timestamp(), deadline, skew):
                raise Late(f"output written {info.last_modified.timestamp() - deadline:.1f}s after the deadline")
        async with self._sem:
            bucket = await self.net.bucket(plan.window, miner)
            data = await download_listed(bucket, info, expect.max_bytes)
        result.bytes_downloaded += len(data)
        decoded = await asyncio.to_thread(decode, data, key, expect)
        inputs = listed_inputs(decoded.meta)
        values = decoded.tensors["data"]
        check_proof_shape(tuple(decoded.tensors["proof"].shape), inputs)
        await self._audit(plan, seg, miner, bucket, inputs, values, decoded.tensors["proof"], result)
        return values.float(), inputs

    async def _audit(self, plan: Plan, seg: Segment, miner: str, bucket, inputs: list[tuple[str, str, str]],
                     values: torch.Tensor, proof: torch.Tensor, result: AllReduceResult) -> None:
        """Trust an output only if it agrees with the peers' records and with a recomputed sample."""
        cache = ReaderCache(self.net, bucket)
        deadline = await self.net.block_timestamp(self.net.phases(plan.window).upload_deadline)
        omitted, contradicting = check_against_records(miner, seg, inputs, self._records)
        for peer in contradicting:
            # That peer signed an input and a record that disagree: the peer lied, not the miner.
            result.rejected["peer_equivocates"] += 1
            log.info("window %d segment %d: peer %s's record contradicts its own signed input", plan.window,
                     seg.index, peer[:10])
        for peer in omitted:
            # Uploaded there, per its own record. Blame the miner only if that whole input is valid and on time:
            # a header that verifies over a NaN or torn body must not frame an honest miner.
            key = self._records[peer].key_at(self.net.spec.run_id, seg.index, miner)
            if await self._valid_whole_input(plan, seg, bucket, peer, key, deadline, result.rejected):
                raise Wrong(f"leaves out a valid input from {peer[:10]}")
        if self.config.spot_check_ranges:
            # One listing gives every input's size, ETag and time: no HEAD per input (HEADs if it is flooded).
            prefix = keys.segment_prefix(self.net.spec.run_id, plan.window, seg.index, "in")
            try:
                known = {o.key: o for o in await list_capped(bucket, prefix, expected=len(inputs))}
            except ListingTooLong:
                known = {}
            readers = await open_listed_inputs(self.net, plan.window, seg, cache, inputs, deadline, known=known)
            ranges = sample_ranges(random.Random(), seg, self.config.spot_check_ranges,
                                   self.config.spot_check_elements)

            async def output(a: int, b: int) -> torch.Tensor:
                return values[a:b]

            async def rows(first: int, last: int) -> bytes:
                return proof[first:last].numpy().tobytes()
            salt = proof_salt(self.net.spec.run_id, plan.window, seg.index, miner)
            if await recompute_difference(output, readers, ranges, self.net.spec.torch_wire_dtype, rows, salt) > 0:
                raise Wrong("output differs from the mean recomputed from its inputs")

    async def _valid_whole_input(self, plan: Plan, seg: Segment, bucket, peer: str, key, deadline: float,
                                 rejected: Counter) -> bool:
        """Whether ``peer``'s input at ``key`` in ``bucket`` is there, on time and valid, checked whole."""
        if key is None or not keys.tag_valid(key, bucket.owner):
            return False
        try:
            info = await bucket.store.head(bucket.name, str(key))
        except StorageError:
            return False  # not there (or unreadable): nothing shows the miner had it
        if impossible_stamp(info, self.net.spec.windows.clock_skew_seconds):
            raise Wrong(f"its server stamps the input of {peer[:10]} in the future: its clock cannot be trusted")
        if not on_time(info.last_modified.timestamp(), deadline, self.net.spec.windows.clock_skew_seconds):
            return False
        return await fetch_input(self.net, plan.window, seg, bucket, InputRef(peer, str(key), info),
                                 rejected) is not None

    async def _finish_alone(self, plan: Plan, seg: Segment, own: torch.Tensor,
                            result: AllReduceResult) -> SegmentResult:
        if self.config.fallback == "reduce":
            deadline = await self.net.block_timestamp(self.net.phases(plan.window).upload_deadline)
            for miner in plan.miners_for(seg.index):
                try:
                    bucket = await self.net.bucket(plan.window, miner)
                    acc = await asyncio.wait_for(
                        reduce_segment(self.net, plan.window, seg, bucket, deadline, result.rejected),
                        4 * self.config.fetch_timeout)
                except (StorageError, KeyError, asyncio.TimeoutError) as e:
                    log.warning("window %d segment %d: inputs at %s unreachable: %s", plan.window, seg.index,
                                miner[:10], str(e) or "timed out")
                    continue
                if acc.count:
                    included = self.hotkey in acc.hotkeys
                    result.flat[seg.start:seg.end] = acc.mean(self.net.spec.torch_wire_dtype).float()
                    log.warning("window %d segment %d: no valid replica; reduced it ourselves from %d inputs",
                                plan.window, seg.index, acc.count)
                    return SegmentResult(seg.index, "self-reduced", None, acc.count, included)
        log.warning("window %d segment %d: no valid replica and no inputs; keeping our own gradient",
                    plan.window, seg.index)
        result.flat[seg.start:seg.end] = own[seg.start:seg.end].to(self.net.spec.torch_wire_dtype).float()
        return SegmentResult(seg.index, "own", None, 1, True)

