"""The peer: upload gradient segments, get back the average. What a training loop calls.

One window, seen from a peer::

    upload phase   split the flat gradient by the plan; sign each segment; write it (write-once) to the bucket of
                   every miner holding that segment; write a signed record of what went where to our own bucket
    reduce phase   poll each segment's replicas; take the first valid output that includes our input (else the
                   first valid output); after the reduce deadline, a segment with no valid replica is reduced by
                   the peer itself from the inputs, or left as our own gradient (``PeerConfig.fallback``)

Error feedback (a wire format whose ``error_feedback`` says so: topk): the peer sends the encoding of its gradient
plus its residual, ``g + e`` (at most the run's value bound in magnitude), and keeps ``e = (g + e) - decoded`` for
the next window, element by element of the flat vector: what the miners did not get this window is added to the
next one, not lost. The residual lives in this object's memory only, one fp32 vector of the run's length: a
restarted peer starts again from zero (it loses at most one window's unsent remainder, as a peer that skips a
window does). A segment that reached no miner goes back into the residual whole (``_keep_undelivered``).

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
from typing import Literal, Mapping

import torch

from storage import ListingTooLong, ObjectInfo, ObjectTooLarge, StorageError

from .audit import (ReaderCache, Wrong, check_against_records, check_proof_shape, differing_ranges, impossible_stamp,
                    listed_inputs, listed_mean, mean_digest, open_listed_inputs, read_records, recompute_difference,
                    sample_ranges)
from .directory import BucketLocation
from .errors import Late, NoBucketOnChain, NotAParticipant, ProtocolError
from .flat import flatten, unflatten
from .inputs import InputRef, download_listed, fetch_input, reduce_segment
from .listing import list_capped
from .network import Bucket, Network
from .plan import Plan, Segment
from .watch import OutputWatch
from .windows import on_time, settle_time
from .wire import keys
from .wire.codec import Expect, check_finite, decode, header_end
from .wire.proof import proof_salt
from .wire.records import MAX_SERVED, Evidence, SegmentUpload, Served, UploadRecord
from .writes import sign_and_copy, write_own

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PeerConfig:
    """How a peer moves its gradient and judges the outputs. Every field is a ``--peer.<field>`` flag for a peer
    program that adds them (``mapreduce.ops.flags.add_dataclass_flags``): its meaning is the ``help`` of its
    metadata."""

    concurrency: int = field(default=8, metadata={
        "help": "S3 transfers in flight at once (input uploads and copies, output header reads, downloads)"})
    poll_interval: float = field(default=0.1, metadata={
        "help": "seconds between polls of the miners' outputs (one listing per miner per round; mapreduce.watch)"})
    max_poll_interval: float = field(default=1.0, metadata={
        "help": "the poll interval backs off up to this many seconds while nothing new appears"})
    fallback: Literal["reduce", "own"] = field(default="reduce", metadata={
        "help": "for a segment with no valid replica by the reduce deadline: 'reduce' fetches the inputs and reduces "
                "it ourselves, 'own' keeps our own gradient for it"})
    upload_margin_blocks: int = field(default=1, metadata={
        "help": "start a window only with at least this many blocks of its upload phase left; else wait for the "
                "next one"})
    audits_per_segment: float = field(default=1.0, metadata={
        "help": "an output two replicas agree on is audited only at random: on average by this many peers of the "
                "window (probability per peer: this over the number of peers); an uncorroborated output, and every "
                "claim of disagreeing replicas, is always audited"})
    spot_check_ranges: int = field(default=1, metadata={
        "help": "element ranges an audit samples and recomputes from the inputs, each widened to the whole hash-"
                "tree chunks it touches (ranged reads: one 16 KiB chunk, 4096 fp32 elements, plus ~3 KiB of header "
                "and leaf hashes per input)"})
    spot_check_elements: int = field(default=1024, metadata={
        "help": "elements each sampled audit range covers at least (before it is widened to whole chunks), and in "
                "each range recomputed where replicas differ"})
    settle_ranges: int = field(default=4, metadata={
        "help": "where replicas' outputs differ, at most this many differing ranges are recomputed in addition"})
    fetch_timeout: float = field(default=30.0, metadata={
        "help": "seconds one poll of one replica may take (listing, download, audit); a replica whose endpoint "
                "stalls is given up for that poll while the others are polled"})

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
    # error feedback only: the values our inputs carry, decoded (gradient plus residual, as sent); else None
    sent: torch.Tensor | None = None
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
    audits: int = 0  # outputs audited against their inputs (the rest were corroborated by another replica)
    served: list[Served] = field(default_factory=list)  # signed headers of refused outputs: our evidence

    @property
    def fallbacks(self) -> list[SegmentResult]:
        return [s for s in self.segments if s.source != "replica"]

    @property
    def peers_included(self) -> int:
        return min((s.count for s in self.segments), default=0)


@dataclass
class Candidate:
    """One replica's output of a segment: its signed claim (from the header) and, once downloaded, its data."""

    miner: str
    bucket: Bucket
    info: ObjectInfo
    expect: Expect
    root: str  # the signed root of the object's hash tree: the object the claim was read from
    header: bytes  # the signed header as served
    inputs: list[tuple[str, str, str]]
    mean: str
    values: torch.Tensor | None = None
    proof: torch.Tensor | None = None

    @property
    def claim(self) -> tuple:
        """What honest replicas of a segment agree on, bit for bit: the mean and the inputs it covers."""
        return self.mean, tuple((h, s) for h, s, _ in self.inputs)


class Peer:
    """A trainer taking part in a run. ``bucket`` is the peer's own bucket, for its upload records."""

    def __init__(self, net: Network, bucket: str, config: PeerConfig = PeerConfig()):
        self.net = net
        self.bucket = bucket
        self.config = config
        self._sem = asyncio.Semaphore(config.concurrency)
        self._records: dict[str, UploadRecord] = {}
        # error feedback: what our inputs have not carried yet (see the module's docstring); None is zero
        self._residual: torch.Tensor | None = None

    @property
    def hotkey(self) -> str:
        return self.net.hotkey

    async def setup(self, location: BucketLocation | None = None) -> None:
        """Create our bucket (with our account's keys) if needed and publish it on chain as a peer's (once per run;
        a no-op when the chain already holds it). ``location`` defaults to our bucket on the storage endpoint we
        use, with the read-only keys in ``MR_PUBLIC_*`` (none: others read it anonymously)."""
        own = self.net.pool.default
        location = location or BucketLocation.published("peer", self.bucket, own.endpoint_url, own_region=own.region,
                                                         own_addressing_style=own.addressing_style)
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
        encoded: dict[int, Mapping[str, torch.Tensor]] = {}
        if self.net.spec.wire.error_feedback:
            receipt.sent, encoded = await asyncio.to_thread(self._with_residual, plan, flat)
        # A copy not stored by the upload deadline would not count: no miner's endpoint may hold us past it.
        cutoff = self.net.phase_end(self.net.phases(window).upload_deadline)
        try:
            await asyncio.gather(*(self._upload_segment(plan, s, flat, receipt, cutoff, encoded.get(s.index))
                                   for s in plan.segments))
        finally:
            cutoff.cancel()
            if receipt.sent is not None:
                self._keep_undelivered(plan, receipt)
        receipt.finished_at = time.time()
        await self._write_record(receipt)
        return receipt

    def _with_residual(self, plan: Plan, flat: torch.Tensor
                       ) -> tuple[torch.Tensor, dict[int, Mapping[str, torch.Tensor]]]:
        """Error feedback: encode every segment of ``flat`` plus our residual, and keep what the encoding left out
        as the next residual. Returns the decoded values sent and each segment's input tensors (encoded here once,
        so the residual is exactly what the uploaded inputs leave out)."""
        sent, tensors, self._residual = self.net.spec.wire.with_residual(
            flat, self._residual, self.net.spec.max_abs_value, [(s.start, s.end) for s in plan.segments])
        return sent, {s.index: t for s, t in zip(plan.segments, tensors)}

    def _keep_undelivered(self, plan: Plan, receipt: UploadReceipt) -> None:
        """Error feedback: a segment no miner stored reaches no average, so what its input carried goes back into
        the residual (to the rounding of one fp32 add) instead of being lost; it is sent with the next window's."""
        for seg in plan.segments:
            if not receipt.stored_at.get(seg.index):
                self._residual[seg.start:seg.end] += receipt.sent[seg.start:seg.end]

    async def _upload_segment(self, plan: Plan, seg: Segment, flat: torch.Tensor, receipt: UploadReceipt,
                              cutoff: asyncio.Future, encoded: Mapping[str, torch.Tensor] | None = None) -> None:
        """Sign and copy one segment: ``encoded`` when error feedback made it already, else the segment of ``flat``
        in the wire format."""
        directory = await self.net.directory(plan.window)
        # the run's lists shaped the plan; this process's own lists only narrow whom we use
        miners = [m for m in plan.miners_for(seg.index) if directory.accepts(m)]
        encode = self.net.spec.wire.encode if encoded is None else (lambda _segment: encoded)
        copies = await sign_and_copy(self.net, plan.window, seg, "in", flat[seg.start:seg.end],
                                     encode, miners, self._sem, cutoff)
        receipt.sha256[seg.index] = copies.sha256
        receipt.bytes_uploaded += copies.bytes_sent
        if copies.stored:
            receipt.stored_at[seg.index] = [m for m, _ in copies.stored]
            receipt.tags[seg.index] = dict(copies.stored)
        if copies.failed:
            receipt.failed[seg.index] = sorted(copies.failed)

    async def _write_evidence(self, window: int, served: list[Served]) -> None:
        """Signed headers of outputs we refused, in our bucket, for validators: what a miner showed us and them."""
        obj = Evidence(self.hotkey, window, tuple(served[:MAX_SERVED])).encode(self.net.spec, self.net.signer)
        try:
            bucket = await self.net.bucket(window, self.hotkey)
            await write_own(bucket, str(keys.evidence_key(self.net.spec.run_id, window, self.hotkey)), obj.data)
        except (StorageError, NoBucketOnChain) as e:
            log.warning("window %d: could not write our evidence: %s", window, e)

    async def _write_record(self, receipt: UploadReceipt) -> None:
        """The signed record of what we uploaded where: a miner cannot drop our input without a trace."""
        uploads = {s: SegmentUpload(receipt.sha256[s], tuple(receipt.tags.get(s, {}).items()))
                   for s in sorted(receipt.sha256)}
        obj = UploadRecord(self.hotkey, receipt.window, uploads).encode(self.net.spec, self.net.signer)
        try:
            bucket = await self.net.bucket(receipt.window, self.hotkey)
            await write_own(bucket, str(keys.record_key(self.net.spec.run_id, receipt.window, self.hotkey)), obj.data)
        except (StorageError, NoBucketOnChain) as e:
            log.warning("window %d: could not write the upload record: %s", receipt.window, e)

    # -- download ------------------------------------------------------------------------------------------------

    async def download(self, window: int, receipt: UploadReceipt, own: torch.Tensor) -> AllReduceResult:
        plan = await self.net.plan(window)
        result = AllReduceResult(window, torch.empty(self.net.spec.numel), {}, [], receipt)
        await self.net.wait_for_block(self.net.phases(window).upload_deadline)
        directory = await self.net.directory(window)
        self._records = {}  # other peers' upload records, read only when an audit needs them
        self._audit_probability = min(1.0, self.config.audits_per_segment / max(1, len(directory.peers)))
        # Honest miners write outputs only once their input listing is final (settle_time): polling before then
        # would only load their servers while they download our inputs.
        deadline = await self.net.block_timestamp(self.net.phases(window).upload_deadline)
        await asyncio.sleep(max(0.0, settle_time(deadline, self.net.spec.windows.clock_skew_seconds) - time.time()))
        watch = OutputWatch(self.net, plan, [m for m in plan.miners if directory.accepts(m)], result.rejected,
                            poll_interval=self.config.poll_interval,
                            max_poll_interval=self.config.max_poll_interval, timeout=self.config.fetch_timeout)
        for seg in plan.segments:
            for miner in plan.miners_for(seg.index):
                if directory.accepts(miner):
                    watch.want(miner, seg.index)
        polling = asyncio.create_task(watch.run())
        try:
            segments = await asyncio.gather(*(self._download_segment(plan, s, receipt, own, result, deadline, watch)
                                              for s in plan.segments))
        finally:
            polling.cancel()
        if result.served:
            await self._write_evidence(window, result.served)
        result.segments = sorted(segments, key=lambda r: r.segment)
        result.tensors = unflatten(self.net.spec, result.flat)
        return result

    async def _download_segment(self, plan: Plan, seg: Segment, receipt: UploadReceipt, own: torch.Tensor,
                                result: AllReduceResult, upload_deadline: float, watch: OutputWatch
                                ) -> SegmentResult:
        """Read each replica's output header as it appears; take an output once two replicas sign the same claim
        (mean digest and input list), or once the only one left passes a full audit; when replicas disagree,
        audit each claim and take the valid one with the most inputs."""
        directory = await self.net.directory(plan.window)
        replicas = [m for m in plan.miners_for(seg.index) if directory.accepts(m)]
        # Our own evidence, by our own clock: every upload of ours had landed (the server said so) before the
        # deadline. A miner whose output leaves such an input of ours out is lying about it, whatever its server's
        # timestamps say; its output is refused (and if every replica does it, we reduce the segment ourselves).
        on_time_by_us = receipt.finished_at is not None and receipt.finished_at <= upload_deadline
        judged: dict[str, str] = {}  # miner -> ETag of the output we judged there (judged again only if it changes)
        candidates: dict[str, Candidate] = {}
        late_fallback: Candidate | None = None  # a valid output that (rightly) left our late input out
        try:
            while True:
                closed = watch.closed
                for miner in replicas:
                    info = watch.output(miner, seg.index)
                    if info is None or judged.get(miner) == info.etag:
                        continue
                    judged[miner] = info.etag
                    candidates.pop(miner, None)
                    c = await self._guarded(plan, seg, miner, result, self._read_claim(plan, seg, miner, info,
                                                                                       closed, result))
                    if c is None:
                        continue
                    if self._omits_us(c, receipt, seg):
                        if on_time_by_us:
                            result.rejected["omits_own_input"] += 1
                            log.warning("window %d segment %d: miner %s left out our input, which was in its bucket "
                                        "before the deadline; refused", plan.window, seg.index, miner[:10])
                            continue
                        log.warning("window %d segment %d: miner %s left our (late) input out", plan.window,
                                    seg.index, miner[:10])
                        late_fallback = late_fallback or c
                        continue
                    candidates[miner] = c
                # In plan order, whatever order they appeared in: every peer breaks ties between claims alike.
                candidates = {m: candidates[m] for m in replicas if m in candidates}
                pending = [m for m in replicas if m not in judged and m not in watch.unreachable]
                taken = await self._decide(plan, seg, candidates, closed or not pending, result)
                if taken is not None:
                    result.flat[seg.start:seg.end] = taken.values
                    included = any(h == self.hotkey for h, _, _ in taken.inputs)
                    return SegmentResult(seg.index, "replica", taken.miner, len(taken.inputs), included)
                if closed:
                    break
                await watch.next_round()
            if late_fallback is not None and await self._decide(plan, seg, {late_fallback.miner: late_fallback},
                                                                True, result) is not None:
                result.flat[seg.start:seg.end] = late_fallback.values
                return SegmentResult(seg.index, "replica", late_fallback.miner, len(late_fallback.inputs), False)
            return await self._finish_alone(plan, seg, own, result)
        finally:
            watch.settle(seg.index)

    def _omits_us(self, c: "Candidate", receipt: UploadReceipt, seg: Segment) -> bool:
        """The output leaves out our input although that miner's bucket accepted it."""
        ours = receipt.sha256.get(seg.index)
        included = any(h == self.hotkey and s == ours for h, s, _ in c.inputs)
        return not included and c.miner in receipt.stored_at.get(seg.index, [])

    async def _decide(self, plan: Plan, seg: Segment, candidates: dict[str, "Candidate"], final: bool,
                      result: AllReduceResult) -> "Candidate | None":
        """The output to take, if the candidates settle it now (``final``: no other replica will come)."""
        claims: dict[tuple, list[Candidate]] = {}
        for c in candidates.values():  # in plan order
            claims.setdefault(c.claim, []).append(c)
        if len(claims) == 1:
            (members,) = claims.values()
            if len(members) < 2 and not final:
                return None  # one signed claim so far: wait for a replica to agree
            audit = len(members) < 2 or random.random() < self._audit_probability
            for c in members:
                if await self._guarded(plan, seg, c.miner, result, self._verify(plan, seg, c, audit, None, result)):
                    return c
                del candidates[c.miner]
                audit = True  # the claim's own signer failed it: trust the next one only after an audit
            return None
        if not claims:
            return None
        # Replicas disagree: at least one of them is wrong. Audit one output of each claim, looking hardest where
        # they differ, and take the valid one that covers the most inputs (a miner that dropped an input loses to
        # one that kept it).
        heads = [members[0] for members in claims.values()]
        result.rejected["disagreement"] += 1
        log.info("window %d segment %d: replicas disagree (%s); auditing each", plan.window, seg.index,
                 ", ".join(c.miner[:10] for c in heads))
        for c in heads:
            if not await self._guarded(plan, seg, c.miner, result, self._download(plan, seg, c, result)):
                for other in claims[c.claim]:
                    del candidates[other.miner]
        heads = [c for c in heads if c.values is not None]
        valid = []
        for c in heads:
            others = [o.values for o in heads if o is not c]
            if await self._guarded(plan, seg, c.miner, result, self._verify(plan, seg, c, True, others, result)):
                valid.append(c)
            else:
                for other in claims[c.claim]:
                    candidates.pop(other.miner, None)
        if not valid:
            return None
        return max(valid, key=lambda c: len(c.inputs))  # max keeps the first (plan order) of equals

    async def _guarded(self, plan: Plan, seg: Segment, miner: str, result: AllReduceResult, work):
        """``work``'s result, or None when it fails (counted by reason). At most ``fetch_timeout``."""
        try:
            return await asyncio.wait_for(work, self.config.fetch_timeout)
        except asyncio.TimeoutError:
            result.rejected["timeout"] += 1
            log.warning("window %d segment %d: miner %s did not answer within %.0fs", plan.window, seg.index,
                        miner[:10], self.config.fetch_timeout)
        except (ProtocolError, ObjectTooLarge) as e:
            reason = getattr(e, "reason", "oversized")
            result.rejected[reason] += 1
            log.warning("window %d segment %d: output of miner %s rejected (%s): %s", plan.window, seg.index,
                        miner[:10], reason, e)
        except (StorageError, NoBucketOnChain) as e:
            result.rejected["unreadable"] += 1
            log.warning("window %d segment %d: output of miner %s unreadable: %s", plan.window, seg.index,
                        miner[:10], e)
        except Exception:  # a bug must cost one replica, never the window
            log.exception("window %d segment %d: internal error reading miner %s's output", plan.window, seg.index,
                          miner[:10])
            result.rejected["internal_error"] += 1
        return None

    async def _read_claim(self, plan: Plan, seg: Segment, miner: str, info: ObjectInfo, past_deadline: bool,
                          result: AllReduceResult) -> "Candidate":
        """The output's signed claim, from its header alone (a ranged read of a few KiB)."""
        skew = self.net.spec.windows.clock_skew_seconds
        if impossible_stamp(info, skew):
            raise Wrong("its server stamps objects in the future: its clock cannot be trusted")
        if past_deadline:
            deadline = await self.net.block_timestamp(self.net.phases(plan.window).reduce_deadline)
            if not on_time(info.last_modified.timestamp(), deadline, skew):
                raise Late(f"output written {info.last_modified.timestamp() - deadline:.1f}s after the deadline")
        directory = await self.net.directory(plan.window)
        expect = self.net.output_expect(seg, miner, len(directory.peers))
        async with self._sem:
            bucket = await self.net.bucket(plan.window, miner)
            reader = ReaderCache(self.net, bucket).reader(info, seg, lambda h: h == miner, expect)
            try:
                header = await reader.open()
            finally:
                result.bytes_downloaded += reader.bytes_fetched
        c = Candidate(miner, bucket, info, expect, header.sha256, reader.header_bytes, listed_inputs(header.meta),
                      listed_mean(header.meta))
        check_proof_shape(tuple(header.entries["proof"].shape), c.inputs)
        return c

    async def _download(self, plan: Plan, seg: Segment, c: "Candidate", result: AllReduceResult) -> bool:
        """The whole output, verified, and the same object whose header made the claim."""
        if c.values is not None:
            return True
        async with self._sem:
            data = await download_listed(c.bucket, c.info, c.expect.max_bytes)
        result.bytes_downloaded += len(data)
        decoded = await asyncio.to_thread(decode, data, c.info.key, c.expect)
        if decoded.sha256 != c.root:
            # Two outputs for one segment, both signed by the miner: proof for the validators.
            result.served += [Served(c.miner, seg.index, c.info.size, c.header),
                              Served(c.miner, seg.index, len(data), bytes(data[:header_end(data)]))]
            raise Wrong("served other bytes for its output than its header read showed")
        if mean_digest(decoded.tensors["data"]) != c.mean:
            raise Wrong("the mean's digest in its header does not match the mean it holds")
        c.values = decoded.tensors["data"].float()
        c.proof = decoded.tensors["proof"]
        return True

    async def _verify(self, plan: Plan, seg: Segment, c: "Candidate", audit: bool,
                      others: list[torch.Tensor] | None, result: AllReduceResult) -> bool:
        """Download ``c`` (if not yet); with ``audit``, also audit it (:meth:`_audit`)."""
        await self._download(plan, seg, c, result)
        if audit:
            result.audits += 1
            try:
                await self._audit(plan, seg, c, others or [], result)
            except Wrong:
                # Its signed header, for validators to compare with what they were shown.
                result.served.append(Served(c.miner, seg.index, c.info.size, c.header))
                raise
        return True

    async def _audit(self, plan: Plan, seg: Segment, c: "Candidate", others: list[torch.Tensor],
                     result: AllReduceResult) -> None:
        """Trust an output only if its listed inputs verify, the peers it leaves out did not upload a valid input
        there (their own signed records say), and recomputed ranges match: sampled ones, and up to
        ``settle_ranges`` where it differs from another replica's output."""
        deadline = await self.net.block_timestamp(self.net.phases(plan.window).upload_deadline)
        directory = await self.net.directory(plan.window)
        listed = {h for h, _, _ in c.inputs}
        unlisted = [p for p in directory.peers if p not in listed and p != self.hotkey]
        # Only the peers an output leaves out can show an omission: their records, not everyone's.
        unread = [p for p in unlisted if p not in self._records]
        if unread:
            got = await read_records(self.net, plan.window, unread, result.rejected)
            self._records.update({p: got.get(p) for p in unread})
        records = {p: r for p in unlisted if (r := self._records.get(p)) is not None}
        omitted, _ = check_against_records(c.miner, seg, c.inputs, records)
        for peer in omitted:
            # Uploaded there, per its own record. Blame the miner only if that whole input is valid and on time:
            # a header that verifies over a NaN or torn body must not frame an honest miner.
            key = self._records[peer].key_at(self.net.spec.run_id, seg.index, c.miner)
            if await self._valid_whole_input(plan, seg, c.bucket, peer, key, deadline, result.rejected):
                raise Wrong(f"leaves out a valid input from {peer[:10]}")
        rng = random.Random()
        ranges = sample_ranges(rng, seg, self.config.spot_check_ranges, self.config.spot_check_elements,
                               self.net.spec.wire.range_itemsize)
        ranges += differing_ranges(rng, c.values, others, self.config.spot_check_elements, self.config.settle_ranges)
        if not ranges:
            return
        # One listing gives every input's size, ETag and time: no HEAD per input (HEADs if it is flooded).
        prefix = keys.segment_prefix(self.net.spec.run_id, plan.window, seg.index, "in")
        try:
            known = {o.key: o for o in await list_capped(c.bucket, prefix, expected=len(c.inputs))}
        except ListingTooLong:
            known = {}
        readers = await open_listed_inputs(self.net, plan.window, seg, ReaderCache(self.net, c.bucket), c.inputs,
                                           deadline, known=known)
        values, proof = c.values, c.proof

        async def output(a: int, b: int) -> torch.Tensor:
            return values[a:b]

        async def rows(first: int, last: int) -> bytes:
            return proof[first:last].numpy().tobytes()
        salt = proof_salt(self.net.spec.run_id, plan.window, seg.index, c.miner)
        if await recompute_difference(output, readers, ranges, self.net.spec.wire, seg.numel, rows,
                                      salt) > 0:
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
                except (StorageError, NoBucketOnChain, asyncio.TimeoutError) as e:
                    log.warning("window %d segment %d: inputs at %s unreachable: %s", plan.window, seg.index,
                                miner[:10], str(e) or "timed out")
                    continue
                if acc.count:
                    included = self.hotkey in acc.hotkeys
                    result.flat[seg.start:seg.end] = acc.mean(self.net.spec.wire.output_dtype).float()
                    log.warning("window %d segment %d: no valid replica; reduced it ourselves from %d inputs",
                                plan.window, seg.index, acc.count)
                    return SegmentResult(seg.index, "self-reduced", None, acc.count, included)
        log.warning("window %d segment %d: no valid replica and no inputs; keeping our own gradient",
                    plan.window, seg.index)
        wire = self.net.spec.wire  # its own gradient as the miners would have seen it
        if result.receipt.sent is not None:  # error feedback: what our input carried (gradient plus residual)
            result.flat[seg.start:seg.end] = result.receipt.sent[seg.start:seg.end]
        else:
            result.flat[seg.start:seg.end] = wire.decode(wire.encode(own[seg.start:seg.end]), seg.numel).float()
        return SegmentResult(seg.index, "own", None, 1, True)

