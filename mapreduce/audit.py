"""Checking a miner's output without downloading its inputs: what validators and peers both do.

An output claims "this is the mean, in canonical order, of these inputs (hotkey, hash)". The checks here, all by
ranged reads of a few KiB:

- every listed input exists in the miner's bucket, was written on time, verifies (signature, hash tree) and has
  the listed hash (:func:`open_listed_inputs`);
- the list agrees with the peers' own signed upload records: no forged hash, no omitted upload
  (:func:`check_against_records`);
- chosen element ranges of the output equal the mean recomputed from the same ranges of the inputs
  (:func:`recompute_difference`).

A failed check raises :class:`Wrong` with the reason; the caller decides what it costs (a validator scores the
miner 0, a peer moves on to the next replica).
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import random
from dataclasses import dataclass
from typing import Awaitable, Callable

import torch

from storage import NotFound, ObjectInfo, PreconditionFailed, StorageError

from . import hashtree, keys
from .codec import Expect, ObjectMeta, decode
from .errors import InvalidObject, ProtocolError
from .network import Bucket, Network
from .partial import RangeReader
from .plan import Segment
from .proof import chunk_rows
from .reduce import reduce_slices
from .windows import on_time

log = logging.getLogger(__name__)


class Wrong(ProtocolError):
    """The output is not what it claims to be."""

    reason = "wrong_output"


@dataclass(frozen=True)
class UploadRecord:
    """One peer's signed account of a window: segment -> (hash of its input, miners that accepted it)."""

    peer: str
    uploads: dict[int, tuple[str, frozenset[str]]]


class ReaderCache:
    """One :class:`RangeReader` per object, so a header is fetched once however many checks read it."""

    def __init__(self, net: Network, bucket: Bucket):
        self.net = net
        self.bucket = bucket
        self.readers: dict[str, RangeReader] = {}

    @property
    def bytes_fetched(self) -> int:
        return sum(r.bytes_fetched for r in self.readers.values())

    def reader(self, info: ObjectInfo, seg: Segment, allowed: Callable[[str], bool],
               expect: Expect | None = None) -> RangeReader:
        if info.key not in self.readers:
            bucket = self.bucket

            async def fetch(start: int, end: int) -> bytes:
                return await bucket.store.get_range(bucket.name, info.key, start, end, if_match=info.etag)
            # A header is ~1 KiB, plus 64 hex characters per MiB of data and ~120 bytes per listed input.
            guess = 4096 + 64 * hashtree.group_count(hashtree.leaf_count(info.size)) + 128 * len(self.readers)
            self.readers[info.key] = RangeReader(fetch, info.size, info.key,
                                                 expect or self.net.segment_expect(seg, allowed), first_read=guess)
        return self.readers[info.key]


def listed_inputs(meta: ObjectMeta) -> list[tuple[str, str]]:
    """An output's ``inputs`` metadata, checked for shape, count and canonical order."""
    try:
        inputs = json.loads(meta.extra.get("inputs", "null"))
        count = int(meta.extra.get("count", "-1"))
    except ValueError:
        raise Wrong("output's inputs or count are not readable") from None
    if (not isinstance(inputs, list) or not inputs or count != len(inputs)
            or not all(isinstance(i, list) and len(i) == 2 and all(isinstance(x, str) for x in i) for i in inputs)):
        raise Wrong("output does not list its inputs and their count")
    hotkeys = [h for h, _ in inputs]
    if hotkeys != sorted(set(hotkeys)):
        raise Wrong("output's inputs are not in canonical order, or repeat")
    return [(h, s) for h, s in inputs]


async def open_listed_inputs(net: Network, window: int, seg: Segment, cache: ReaderCache,
                             inputs: list[tuple[str, str]], upload_deadline: float,
                             known: dict[str, ObjectInfo] | None = None) -> list[RangeReader]:
    """Readers of every listed input, each checked: exists, on time, from a peer, verifies, has the listed hash."""
    directory = await net.directory(window)
    skew = net.spec.windows.clock_skew_seconds

    async def one(hotkey: str, sha: str) -> RangeReader:
        key = str(keys.input_key(net.spec.run_id, window, seg.index, hotkey))
        try:
            info = (known or {}).get(hotkey) or await cache.bucket.store.head(cache.bucket.name, key)
        except NotFound:
            raise Wrong(f"includes {hotkey[:10]}, whose input does not exist") from None
        if not on_time(info.last_modified.timestamp(), upload_deadline, skew):
            raise Wrong(f"includes a late input from {hotkey[:10]}")
        reader = cache.reader(info, seg, directory.is_peer)
        try:
            header = await reader.open()
        except InvalidObject as e:
            raise Wrong(f"includes an invalid input from {hotkey[:10]} ({e.reason})") from None
        except PreconditionFailed:  # reads carry the ETag seen at the deadline
            raise Wrong(f"the input from {hotkey[:10]} was replaced after the upload deadline") from None
        if header.sha256 != sha:
            raise Wrong(f"lists a wrong hash for {hotkey[:10]}")
        return reader

    # All at once: each is a request or two of a few KiB, so their latencies, not their bytes, add up.
    return list(await asyncio.gather(*(one(h, s) for h, s in inputs)))


async def read_records(net: Network, window: int, peers: list[str]) -> dict[str, UploadRecord]:
    """The upload records the given peers wrote for ``window``; missing or invalid ones are skipped."""
    out = {}
    for peer in peers:
        key = str(keys.record_key(net.spec.run_id, window, peer))
        expect = Expect({}, allowed=lambda h, p=peer: h == p, max_bytes=1 << 20, max_header_bytes=1 << 20)
        try:
            bucket = await net.bucket(window, peer)
            decoded = decode(await bucket.store.get(bucket.name, key, max_bytes=expect.max_bytes), key, expect)
            rows = json.loads(decoded.meta.extra["uploads"])
            out[peer] = UploadRecord(peer, {int(s): (str(h), frozenset(m)) for s, h, m in rows})
        except (StorageError, ProtocolError, KeyError, ValueError, TypeError) as e:
            log.info("window %d: no usable upload record from %s: %s", window, peer[:10], e)
            continue
    return out


def check_against_records(miner: str, seg: Segment, inputs: list[tuple[str, str]],
                          records: dict[str, UploadRecord]) -> list[str]:
    """Raise :class:`Wrong` if a listed hash contradicts its peer's record; return the peers whose record says
    they uploaded this segment to this miner but who are not listed (the caller decides if their input was valid)."""
    listed = dict(inputs)
    for hotkey, sha in inputs:
        rec = records.get(hotkey)
        if rec is not None and seg.index in rec.uploads and rec.uploads[seg.index][0] != sha:
            raise Wrong(f"lists a hash for {hotkey[:10]} that its own record contradicts (forged input)")
    return sorted(p for p, rec in records.items()
                  if p not in listed and seg.index in rec.uploads and miner in rec.uploads[seg.index][1])


def sample_ranges(rng: random.Random, seg: Segment, count: int, length: int) -> list[tuple[int, int]]:
    n = min(length, seg.numel)
    return [(s, s + n) for s in sorted(rng.randrange(0, seg.numel - n + 1) for _ in range(count))]


ProofRows = Callable[[int, int], Awaitable[bytes]]
"""``(first chunk, last chunk)`` -> the output's proof rows of those chunks for every input: ``[chunks, inputs, 8]``
bytes. The proof is stored chunk-major, so the rows a sampled range needs are contiguous: one ranged read of one
or two 16 KiB chunks of the output covers every input's rows, where input-major rows would need a read per input."""


def check_proof_shape(proof_shape: tuple[int, ...], inputs: list[tuple[str, str]]) -> None:
    if len(proof_shape) != 3 or proof_shape[1] != len(inputs):
        raise Wrong(f"proof has {proof_shape[1] if len(proof_shape) == 3 else 0} rows per chunk for "
                    f"{len(inputs)} inputs")


async def recompute_difference(output: Callable[[int, int], Awaitable[torch.Tensor]],
                               inputs: list[RangeReader], ranges: list[tuple[int, int]],
                               wire_dtype: torch.dtype, proof: ProofRows | None = None,
                               salt: bytes = b"") -> float:
    """``||o - r|| / (||r|| + eps)`` over ``ranges``: ``o`` read through ``output``, ``r`` recomputed.

    With ``proof``, the output's proof-of-possession rows of every input chunk read are checked as well
    (:mod:`mapreduce.proof`), at no extra cost in input reads.
    """
    async def one(start: int, end: int) -> tuple[float, float]:
        # The output's and the inputs' reads at once (each a few KiB: latency-bound); the sum below still adds the
        # inputs in canonical order.
        got, *reads = await asyncio.gather(output(start, end), *(r.read_chunks("data", start, end) for r in inputs))
        got = got.double()
        slices = [values for values, _, _ in reads]
        if proof is not None and reads:
            # Every input has the same layout, so the same chunks cover the range in each.
            first, chunks = reads[0][1], reads[0][2]
            last = first + -(-len(chunks) // hashtree.CHUNK_BYTES)
            rows = await proof(first, last)
            width = len(inputs) * hashtree.PROOF_BYTES
            for index, (_, _, chunks) in enumerate(reads):
                mine = b"".join(rows[c * width + index * hashtree.PROOF_BYTES:c * width + (index + 1) *
                                     hashtree.PROOF_BYTES] for c in range(last - first))
                if mine != chunk_rows(chunks, salt):
                    raise Wrong(f"proof of possession fails for input {index} (chunks {first}-{last - 1}): "
                                "the miner did not hold that input")
        want = reduce_slices(slices, wire_dtype).double()
        return float(torch.sum((got - want) ** 2)), float(torch.sum(want ** 2))

    sums = await asyncio.gather(*(one(start, end) for start, end in ranges))  # every range at once, too
    diff_sq, ref_sq = sum(d for d, _ in sums), sum(r for _, r in sums)
    if not math.isfinite(diff_sq):
        raise Wrong("output holds NaN or Inf where sampled")
    return math.sqrt(diff_sq) / (math.sqrt(ref_sq) + 1e-12)
