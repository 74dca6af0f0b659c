"""A segment's inputs in one bucket: list, filter, verify and reduce them in the canonical order.

Used by miners (their job), by peers whose replicas all failed (the fallback), and by validators (to learn which
inputs were valid and on time). Every object that does not count is counted, by reason, in ``rejected``.

Downloads overlap: up to ``lookahead`` inputs are fetched and verified while the accumulator adds the current one,
but additions happen strictly in order, so memory is the fp32 accumulator plus the objects in flight, never all
of them, and the result is bit-for-bit what any other party computes from the same inputs.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass

import torch

from storage import ObjectInfo, ObjectTooLarge, StorageError

from .errors import InvalidObject, Late
from .listing import genuine, list_capped
from .network import Bucket, Network
from .plan import Segment
from .reduce import Accumulator
from .windows import from_the_future, on_time
from .wire import keys
from .wire.codec import decode
from .wire.formats import WireFormat
from .wire.keys import ObjectKey
from .wire.proof import proof_rows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputRef:
    hotkey: str
    key: str
    info: ObjectInfo

    @property
    def tag(self) -> str:
        return ObjectKey.parse(self.key).tag or ""


def counted(groups: dict[tuple[int, str], list[tuple[ObjectKey, ObjectInfo]]], deadline: float, skew: float,
            rejected: Counter, present: frozenset[str] = frozenset(), quiet: bool = False
            ) -> dict[tuple[int, str], ObjectInfo]:
    """``(segment, peer) -> the input that counts``, from :func:`mapreduce.listing.genuine`'s candidates.

    An input counts if it is on time: stamped by the bucket's server no later than the upload deadline plus the
    clock allowance, or listed in ``present``, keys the caller itself saw in the bucket before the deadline by its
    own clock, which the server's stamps cannot overrule (a validator's evidence against a miner whose server lies
    about time). A stamp from the future (:func:`~mapreduce.windows.from_the_future`) proves only that the
    server lies: it cannot make an input late. A peer with several such keys (it wrote twice) counts once, by its
    first key in key order, the same for everyone. Miners, validators and peers all decide with this one function.
    ``quiet``: log nothing (a provisional listing, listed again later: one line per fact, from the final one).
    """
    out = {}
    now = time.time()
    for (segment, peer), candidates in sorted(groups.items()):
        on_time_keys = [(k, info) for k, info in candidates
                        if str(k) in present or on_time(info.last_modified.timestamp(), deadline, skew)
                        or from_the_future(info.last_modified.timestamp(), now, skew)]
        if not on_time_keys:
            late_by = min(info.last_modified.timestamp() for _, info in candidates) - deadline
            rejected[Late.reason] += 1
            if not quiet:
                log.info("window input of %s for segment %d not counted (late): written %.1fs after the upload "
                         "deadline", peer[:10], segment, late_by)
            continue
        out[(segment, peer)] = on_time_keys[0][1]
    return out


async def list_inputs(net: Network, window: int, seg: Segment, bucket: Bucket, deadline: float,
                      rejected: Counter, present: frozenset[str] = frozenset(), quiet: bool = False
                      ) -> list[InputRef]:
    """The inputs of ``seg`` in ``bucket`` that count (:func:`counted`), sorted by peer hotkey: one per peer of the
    window, under a key that peer really wrote for this bucket (:func:`mapreduce.listing.genuine`). ``quiet``: a
    provisional listing, which logs nothing."""
    directory = await net.directory(window)
    run = net.spec.run_id
    prefix = keys.segment_prefix(run, window, seg.index, "in")
    listing = await list_capped(bucket, prefix, expected=len(directory.peers), writers=directory.peers)
    groups = genuine(listing, run, window, "in", bucket.owner, lambda h: directory.exclusion(h, "peer"), rejected,
                     segment=seg.index)
    chosen = counted(groups, deadline, net.spec.windows.clock_skew_seconds, rejected, present, quiet)
    return [InputRef(peer, info.key, info) for (_, peer), info in sorted(chosen.items())]


async def download_listed(bucket: Bucket, info: ObjectInfo, max_bytes: int) -> memoryview:
    """A listed object's bytes: one GET, conditional on the listed ETag, into a buffer of the listed size.

    The listing already gave the size, so no HEAD is needed to refuse an oversized object before downloading it
    (on moto a HEAD costs more than a small GET), and the buffer is a torch allocation, not a zero-filled
    ``bytearray``. The ETag makes the read fail rather than return another object than the one listed.
    """
    if info.size > max_bytes:
        raise ObjectTooLarge(bucket.name, info.key, info.size, max_bytes)
    buf = memoryview(torch.empty(info.size, dtype=torch.uint8).numpy())
    got = await bucket.store.get_into(bucket.name, info.key, buf, if_match=info.etag)
    return buf[:got.size]


def _decode_and_prove(data, key: str, expect, salt: bytes | None, wire: WireFormat, numel: int):
    """Check a whole input of a segment of ``numel`` elements; its values as the wire format decodes them (which
    checks a topk input's index), and with a salt its proof rows."""
    decoded = decode(data, key, expect)
    values = wire.decode(decoded.tensors, numel)
    if salt is None:
        return decoded, values, None
    raw = memoryview(decoded.tensors["data"].view(torch.uint8).numpy())
    return decoded, values, proof_rows(raw, salt)


async def fetch_input(net: Network, window: int, seg: Segment, bucket: Bucket, ref: InputRef,
                      rejected: Counter, salt: bytes | None = None):
    """Download and verify one input: ``(sha256, values, proof rows or None)``, or None (counted in ``rejected``).

    With a ``salt`` (a miner's), also compute the input's proof-of-possession rows while its bytes are in memory.
    """
    directory = await net.directory(window)
    expect = net.segment_expect(seg, allowed=directory.is_peer)
    try:
        data = await download_listed(bucket, ref.info, expect.max_bytes)
        decoded, values, proof = await asyncio.to_thread(_decode_and_prove, data, ref.key, expect, salt,
                                                         net.spec.wire, seg.numel)
    except ObjectTooLarge as e:
        rejected["oversized"] += 1
        log.info("window %d segment %d: input from %s is oversized: %s", window, seg.index, ref.hotkey[:10], e)
        return None
    except InvalidObject as e:
        rejected[e.reason] += 1
        log.info("window %d segment %d: input from %s rejected (%s): %s", window, seg.index, ref.hotkey[:10],
                 e.reason, e)
        return None
    except StorageError as e:
        rejected["unreadable"] += 1
        log.warning("window %d segment %d: input from %s unreadable: %s", window, seg.index, ref.hotkey[:10], e)
        return None
    return decoded.sha256, values, proof


async def reduce_segment(net: Network, window: int, seg: Segment, bucket: Bucket, deadline: float,
                         rejected: Counter, lookahead: int = 2, salt: bytes | None = None,
                         settle_at: float | None = None) -> Accumulator:
    """Mean of the valid on-time inputs of ``seg`` in ``bucket``, added in canonical (hotkey) order; with a
    ``salt``, the accumulator also collects each input's proof-of-possession rows.

    ``settle_at`` (unix time, :func:`~mapreduce.windows.settle_time`) is when the listing becomes final: an input
    stamped within the clock allowance can still appear until then. Called earlier, the reduction starts on the
    inputs listed now and lists again at that time, so the wait overlaps the work instead of preceding it. Inputs
    that appeared meanwhile are added if they sort after every input already taken; otherwise (an input written
    within a second or two of the deadline whose hotkey sorts earlier: rare) it starts over on the final list.
    Either way the result is the reduction of the final list, exactly as if it had waited.
    """
    if settle_at is None or time.time() >= settle_at:
        return await _reduce_listed(net, window, seg, bucket, await list_inputs(net, window, seg, bucket, deadline,
                                                                                rejected), rejected, lookahead, salt)
    # Provisional: the final listing counts and logs the rejections.
    early = await list_inputs(net, window, seg, bucket, deadline, Counter(), quiet=True)
    fetch_rejected: Counter = Counter()
    acc = await _reduce_listed(net, window, seg, bucket, early, fetch_rejected, lookahead, salt)
    await asyncio.sleep(max(0.0, settle_at - time.time()))
    final = await list_inputs(net, window, seg, bucket, deadline, rejected)
    taken = {r.key: r.info.etag for r in early}
    still = {r.key: r.info.etag for r in final if r.key in taken}
    new = [r for r in final if r.key not in taken]
    if still == taken and all(not early or r.hotkey > early[-1].hotkey for r in new):
        if new:
            acc = await _reduce_listed(net, window, seg, bucket, new, fetch_rejected, lookahead, salt, acc)
        rejected.update(fetch_rejected)
        return acc
    log.info("window %d segment %d: the final listing differs from the early one; reducing again", window,
             seg.index)
    del acc  # memory stays one accumulator
    return await _reduce_listed(net, window, seg, bucket, final, rejected, lookahead, salt)


async def _reduce_listed(net: Network, window: int, seg: Segment, bucket: Bucket, refs: list[InputRef],
                         rejected: Counter, lookahead: int, salt: bytes | None,
                         acc: Accumulator | None = None) -> Accumulator:
    """Fetch, verify and add ``refs`` (sorted) into ``acc`` (a new one if None), ``lookahead`` downloads ahead."""
    acc = acc if acc is not None else Accumulator(seg.numel)
    pending: deque[asyncio.Task] = deque()
    upcoming = iter(refs)

    def start_next() -> None:
        ref = next(upcoming, None)
        if ref is not None:
            pending.append(asyncio.create_task(fetch_input(net, window, seg, bucket, ref, rejected, salt)))

    for _ in range(max(1, lookahead)):
        start_next()
    try:
        for ref in refs:
            got = await pending.popleft()
            if got is not None:
                acc.add(ref.hotkey, *got, tag=ref.tag)
            del got  # release this input before the next download starts: memory stays bounded
            start_next()
    finally:
        for task in pending:
            task.cancel()
    return acc
