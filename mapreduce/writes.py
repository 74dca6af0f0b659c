"""How roles write: signed copies into miners' buckets under key tags, and their own objects into their own bucket.

Both are write-once (``If-None-Match: *``), and both treat a key that is already taken as a question, not as a
success: *whose object is it?*

- **Copies** (a peer's inputs, a sender's broadcast segments) go to each replica miner's bucket under a key ending
  in a fresh tag made for that bucket (:func:`mapreduce.wire.keys.make_tag`), which nobody can predict. A key found
  taken holds our object only if its bytes are ours (an earlier attempt of ours landed); anything else is
  :class:`~mapreduce.errors.Squatted`, an error for that replica, never counted as stored.
- **Own objects** (a miner's outputs, a peer's records, a validator's reports) go to the writer's own bucket with
  its account's keys. A key found taken is kept if the object there is ours (``is_ours``: e.g. an output written
  before a restart); anything else was put there by someone holding a write key to our bucket, and is replaced.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Mapping

import torch

from storage import PreconditionFailed, StorageError

from .errors import ProtocolError, Squatted
from .network import Bucket, Network
from .plan import Segment
from .wire import keys
from .wire.codec import Encoded, ObjectMeta, encode

log = logging.getLogger(__name__)


async def _holds(bucket: Bucket, key: str, data: memoryview) -> bytes | None:
    """The object at ``key`` if it is at most a little larger than ``data`` (else None: certainly not ours)."""
    try:
        return bytes(await bucket.store.get(bucket.name, key, max_bytes=len(data) + (1 << 20)))
    except StorageError:
        return None


@dataclass
class Copies:
    """Where one object's copies landed: ``(miner, tag)`` pairs in the order asked, failures by miner."""

    stored: list[tuple[str, str]] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    bytes_sent: int = 0
    sha256: str = ""  # the signed object's root (sign_and_copy)


async def write_copies(net: Network, window: int, segment: int, role: str, miners: list[str], data: memoryview,
                       limit: asyncio.Semaphore | None = None, cutoff: asyncio.Future | None = None) -> Copies:
    """Write ``data`` (an object signed by us for ``segment``) to each of ``miners``' buckets, write-once, under a
    key tag made for that bucket; every failure is logged and returned in ``failed``, by miner. A copy still in
    flight when ``cutoff`` finishes (the window's upload deadline: :meth:`Network.phase_end`) is given up
    (``deadline``): it would not count, and a miner whose endpoint stalls must not hold us past it."""
    out = Copies()
    stored: dict[str, str] = {}
    limit = limit or asyncio.Semaphore(len(miners) or 1)

    async def put(miner: str, key: str) -> None:
        bucket = await net.bucket(window, miner)
        try:
            await bucket.store.put(bucket.name, key, data, if_none_match=True)
            out.bytes_sent += len(data)
        except PreconditionFailed:
            if await _holds(bucket, key, data) != bytes(data):
                raise Squatted(f"{key[:80]}... in miner {miner[:10]}'s bucket holds an object that is not "
                               "ours") from None

    async def one(miner: str) -> None:
        tag = keys.make_tag(net.signer, net.spec.run_id, window, segment, role, miner)
        key = str(keys.ObjectKey(net.spec.run_id, window, role, net.hotkey, segment, tag))
        async with limit:
            try:
                await (put(miner, key) if cutoff is None else net.within(cutoff, put(miner, key)))
            except (StorageError, ProtocolError) as e:
                reason = getattr(e, "reason", None) or type(e).__name__
                log.warning("window %d segment %d: %s copy to miner %s failed (%s): %s", window, segment, role,
                            miner[:10], reason, e)
                out.failed[miner] = reason
                return
        stored[miner] = tag

    await asyncio.gather(*(one(m) for m in miners))
    out.stored = [(m, stored[m]) for m in miners if m in stored]
    return out


async def sign_and_copy(net: Network, window: int, segment: Segment, role: str, values: torch.Tensor,
                        tensors: Callable[[torch.Tensor], Mapping[str, torch.Tensor]], miners: list[str],
                        limit: asyncio.Semaphore, cutoff: asyncio.Future | None = None) -> Copies:
    """Sign ``tensors(values)`` as our ``role`` object of ``segment`` and write it once to each of ``miners``'
    buckets (:func:`write_copies`): what a peer does with each segment of its gradient (``tensors``: the wire
    format's encoding) and a sender with each segment of a broadcast. The encoding and signing hold one of
    ``limit``'s slots and run off the event loop, so memory stays bounded by the slots, not the number of
    segments."""
    async with limit:
        meta = ObjectMeta(net.spec.run_id, window, role, net.hotkey, segment.index)
        obj: Encoded = await asyncio.to_thread(lambda: encode(meta, tensors(values), net.signer))
    copies = await write_copies(net, window, segment.index, role, miners, obj.data, limit, cutoff)
    copies.sha256 = obj.sha256
    return copies


async def write_own(bucket: Bucket, key: str, data: memoryview | bytes,
                    is_ours: Callable[[bytes], Awaitable[bool]] | None = None,
                    content_type: str = "application/octet-stream"
                    ) -> str:
    """Write one of our objects to our own bucket, write-once; returns ``"written"``, ``"existing"`` (ours was
    there already: equal bytes, or ``is_ours`` says so) or ``"replaced"`` (a foreign object was there)."""
    view = memoryview(data)
    try:
        await bucket.store.put(bucket.name, key, view, if_none_match=True, content_type=content_type)
        return "written"
    except PreconditionFailed:
        pass
    try:
        there = bytes(await bucket.store.get(bucket.name, key, max_bytes=max(2 * len(view), 1 << 20)))
    except StorageError:
        there = None  # too large to be ours, or gone again: either way not ours
    if there is not None and (there == bytes(view) or (is_ours is not None and await is_ours(there))):
        return "existing"
    log.warning("s3://%s/%s held an object that is not ours (someone with a write key to our bucket put it "
                "there); replacing it", bucket.name, key)
    await bucket.store.put(bucket.name, key, view, content_type=content_type)
    return "replaced"
