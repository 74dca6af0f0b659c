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
from collections import Counter, deque
from dataclasses import dataclass

import torch

from storage import ObjectInfo, ObjectTooLarge, StorageError

from . import keys
from .codec import decode
from .errors import InvalidObject, Late, MetadataMismatch
from .keys import ObjectKey
from .network import Bucket, Network
from .plan import Segment
from .proof import proof_rows
from .reduce import Accumulator
from .windows import on_time

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputRef:
    hotkey: str
    key: str
    info: ObjectInfo


async def list_inputs(net: Network, window: int, seg: Segment, bucket: Bucket, deadline: float,
                      rejected: Counter) -> list[InputRef]:
    """Inputs for ``seg`` in ``bucket`` that were written by the upload deadline by registered peers, by hotkey."""
    directory = await net.directory(window)
    prefix = keys.segment_prefix(net.spec.run_id, window, seg.index, "in")
    skew = net.spec.windows.clock_skew_seconds
    refs = []
    for info in await bucket.store.list(bucket.name, prefix):
        try:
            k = ObjectKey.parse(info.key)
            if (k.run, k.window, k.segment, k.role) != (net.spec.run_id, window, seg.index, "in"):
                raise MetadataMismatch(f"{info.key} is not an input of segment {seg.index}")
            excluded = directory.exclusion(k.hotkey, "peer")  # unknown, or outside the allow/deny lists
            if excluded is not None:
                raise excluded
            if not on_time(info.last_modified.timestamp(), deadline, skew):
                raise Late(f"written {info.last_modified.timestamp() - deadline:.1f}s after the upload deadline")
        except InvalidObject as e:
            rejected[e.reason] += 1
            log.info("window %d segment %d: input %s not counted (%s): %s", window, seg.index, info.key[-60:],
                     e.reason, e)
            continue
        refs.append(InputRef(k.hotkey, info.key, info))
    return sorted(refs, key=lambda r: r.hotkey)


def _decode_and_prove(data, key: str, expect, salt: bytes | None):
    decoded = decode(data, key, expect)
    if salt is None:
        return decoded, None
    raw = memoryview(decoded.tensors["data"].view(torch.uint8).numpy())
    return decoded, proof_rows(raw, salt)


async def fetch_input(net: Network, window: int, seg: Segment, bucket: Bucket, ref: InputRef,
                      rejected: Counter, salt: bytes | None = None):
    """Download and verify one input: ``(sha256, values, proof rows or None)``, or None (counted in ``rejected``).

    With a ``salt`` (a miner's), also compute the input's proof-of-possession rows while its bytes are in memory.
    """
    directory = await net.directory(window)
    expect = net.segment_expect(seg, allowed=directory.is_peer)
    try:
        data = await bucket.store.get(bucket.name, ref.key, max_bytes=expect.max_bytes, if_match=ref.info.etag)
        decoded, proof = await asyncio.to_thread(_decode_and_prove, data, ref.key, expect, salt)
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
    return decoded.sha256, decoded.tensors["data"], proof


async def reduce_segment(net: Network, window: int, seg: Segment, bucket: Bucket, deadline: float,
                         rejected: Counter, lookahead: int = 2, salt: bytes | None = None) -> Accumulator:
    """Mean of the valid on-time inputs of ``seg`` in ``bucket``, added in canonical (hotkey) order; with a
    ``salt``, the accumulator also collects each input's proof-of-possession rows."""
    refs = await list_inputs(net, window, seg, bucket, deadline, rejected)
    acc = Accumulator(seg.numel)
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
                acc.add(ref.hotkey, *got)
            del got  # release this input before the next download starts: memory stays bounded
            start_next()
    finally:
        for task in pending:
            task.cancel()
    return acc
