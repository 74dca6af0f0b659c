"""Checking a miner's output without downloading its inputs: what validators and peers both do.

An output claims "this is the mean, in canonical order, of these inputs (hotkey, hash, key tag)". The checks
here, all by ranged reads of a few KiB:

- every listed input exists in the miner's bucket under a key its peer made for that bucket, was written on time,
  verifies (signature, hash tree) and has the listed hash (:func:`open_listed_inputs`);
- the list agrees with the peers' own signed upload records: an upload the record names but the output leaves
  out is a candidate omission, which the caller confirms by verifying that whole input before blaming the miner;
  a listed input whose hash contradicts its peer's record is the *peer's* doing (it signed both), counted against
  the peer, never the miner (:func:`check_against_records`);
- chosen element ranges of the output equal the mean recomputed from the same ranges of the inputs
  (:func:`recompute_difference`).

A failed check raises :class:`Wrong` with the reason; the caller decides what it costs (a validator scores the
miner 0, a peer moves on to the next replica).
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import random
import re
import time
from collections import Counter
from typing import Awaitable, Callable

import torch

from storage import NotFound, ObjectInfo, PreconditionFailed, StorageError

from .errors import InvalidObject, MalformedHeader, NoBucketOnChain, ProtocolError
from .network import Bucket, Network
from .plan import Segment
from .reduce import reduce_slices
from .windows import from_the_future, on_time
from .wire import hashtree, keys, strictjson
from .wire.codec import DTYPES, Expect, Header, ObjectMeta
from .wire.expect import record_max_bytes
from .wire.formats import WireFormat
from .wire.names import check_hotkey
from .wire.partial import RangeReader, first_read_guess
from .wire.proof import chunk_rows
from .wire.records import SHA256, UploadRecord

log = logging.getLogger(__name__)


class Wrong(ProtocolError):
    """The output is not what it claims to be."""

    reason = "wrong_output"


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
            expect = expect or self.net.segment_expect(seg, allowed)
            guess = first_read_guess(info.size)
            if "proof" in expect.tensors:  # an output: its header lists its inputs, as many as its size says
                code, shape = expect.tensors["data"]
                guess = first_read_guess(info.size, math.prod(shape) * DTYPES[code].itemsize,
                                         expect.tensors["proof"][1][0])
            self.readers[info.key] = RangeReader(fetch, info.size, info.key, expect, first_read=guess)
        return self.readers[info.key]


_TAG = re.compile(r"[0-9a-f]{128}")


def listed_inputs(meta: ObjectMeta) -> list[tuple[str, str, str]]:
    """An output's ``inputs`` metadata, ``[(peer hotkey, sha256, key tag)]``, checked for form, count and
    canonical order."""
    try:
        inputs = strictjson.loads(meta.extra.get("inputs", "null"), "the output's input list")
    except MalformedHeader as e:
        raise Wrong(str(e)) from None
    count = meta.extra.get("count", "")
    if not (isinstance(inputs, list) and inputs and count.isdigit() and count.isascii() and int(count) == len(inputs)
            and all(isinstance(i, list) and len(i) == 3 and all(isinstance(x, str) for x in i)
                    and SHA256.fullmatch(i[1]) and _TAG.fullmatch(i[2]) for i in inputs)):
        raise Wrong("output does not list its inputs ([peer, sha256, key tag]) and their count")
    hotkeys = [h for h, _, _ in inputs]
    if hotkeys != sorted(set(hotkeys)):
        raise Wrong("output's inputs are not in canonical order, or repeat")
    try:
        for h in hotkeys:
            check_hotkey(h)
    except ValueError as e:
        raise Wrong(f"output lists a hotkey that is not one: {e}") from None
    return [(h, s, t) for h, s, t in inputs]


def mean_digest(values: torch.Tensor) -> str:
    """The sha256 of a mean's bytes as stored (wire dtype): what an output's ``mean`` metadata must say. Honest
    reduction is deterministic, so every honest replica of a segment signs the same digest over the same inputs."""
    return hashlib.sha256(memoryview(values.detach().contiguous().view(torch.uint8).numpy())).hexdigest()


def listed_mean(meta: ObjectMeta) -> str:
    """An output's ``mean`` metadata (64 hex digits), checked for form."""
    digest = meta.extra.get("mean", "")
    if not SHA256.fullmatch(digest):
        raise Wrong("output does not state the sha256 of its mean")
    return digest


def impossible_stamp(info: ObjectInfo, skew: float) -> bool:
    """A ``Last-Modified`` later than our own clock now (:func:`mapreduce.windows.from_the_future`): the server's
    clock lies. Only the bucket's owner runs the server its bucket is on, so this is evidence against the owner."""
    return from_the_future(info.last_modified.timestamp(), time.time(), skew)


async def open_listed_inputs(net: Network, window: int, seg: Segment, cache: ReaderCache,
                             inputs: list[tuple[str, str, str]], upload_deadline: float,
                             known: dict[str, ObjectInfo] | None = None) -> list[RangeReader]:
    """Readers of every listed input, each checked: under a key its peer made for this bucket, exists, on time,
    from a peer, verifies, has the listed hash. ``known``: key -> listing entry, to save a HEAD per input."""
    directory = await net.directory(window)
    skew = net.spec.windows.clock_skew_seconds

    async def one(hotkey: str, sha: str, tag: str) -> RangeReader:
        k = keys.input_key(net.spec.run_id, window, seg.index, hotkey, tag)
        if not keys.tag_valid(k, cache.bucket.owner):
            raise Wrong(f"lists an input of {hotkey[:10]} under a key its peer did not make for this bucket")
        key = str(k)
        try:
            info = (known or {}).get(key) or await cache.bucket.store.head(cache.bucket.name, key)
        except NotFound:
            raise Wrong(f"includes {hotkey[:10]}, whose input does not exist") from None
        if impossible_stamp(info, skew):
            raise Wrong(f"its server stamps the input of {hotkey[:10]} in the future: its clock cannot be trusted")
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
    return list(await asyncio.gather(*(one(h, s, t) for h, s, t in inputs)))


async def read_records(net: Network, window: int, peers: list[str], rejected: Counter | None = None,
                       concurrency: int = 16, timeout: float = 10.0) -> dict[str, UploadRecord]:
    """The upload records the given peers wrote for ``window``; missing or invalid ones are skipped (an invalid
    one counted in ``rejected`` by reason). Each peer's endpoint gets ``timeout`` seconds: a peer whose server
    stalls only loses its own record."""
    limit = asyncio.Semaphore(concurrency)
    cap = record_max_bytes(net.spec)

    async def one(peer: str) -> UploadRecord | None:
        key = str(keys.record_key(net.spec.run_id, window, peer))
        async with limit:
            try:
                bucket = await net.bucket(window, peer)
                data = await asyncio.wait_for(bucket.store.get(bucket.name, key, max_bytes=cap), timeout)
                return await asyncio.to_thread(UploadRecord.decode, data, net.spec, window, peer)
            except NotFound:
                return None
            except asyncio.TimeoutError:
                if rejected is not None:
                    rejected["timeout"] += 1
                log.info("window %d: the upload record of %s did not come within %.0fs", window, peer[:10], timeout)
            except InvalidObject as e:
                if rejected is not None:
                    rejected[e.reason] += 1
                log.info("window %d: upload record of %s refused (%s): %s", window, peer[:10], e.reason, e)
            except (StorageError, NoBucketOnChain) as e:
                log.info("window %d: no usable upload record from %s: %s", window, peer[:10], e)
        return None

    got = await asyncio.gather(*(one(p) for p in peers))
    return {p: r for p, r in zip(peers, got) if r is not None}


def check_against_records(miner: str, seg: Segment, inputs: list[tuple[str, str, str]],
                          records: dict[str, UploadRecord]) -> tuple[list[str], list[str]]:
    """``(omitted, contradicting)``: the peers whose record says they uploaded this segment to this miner but who
    are not listed (candidates: the caller verifies each such input before blaming the miner), and the listed
    peers whose own record names another hash than the input the output lists (the peer signed both: it is the
    one at fault, never the miner)."""
    listed = {h: s for h, s, _ in inputs}
    contradicting = sorted(h for h, s in listed.items() if h in records and seg.index in records[h].uploads
                           and records[h].uploads[seg.index].sha256 != s)
    omitted = sorted(p for p, rec in records.items()
                     if p not in listed and seg.index in rec.uploads and rec.uploads[seg.index].tag_at(miner))
    return omitted, contradicting


def sample_ranges(rng: random.Random, seg: Segment, count: int, length: int,
                  itemsize: int | None = None) -> list[tuple[int, int]]:
    """``count`` ranges of ``length`` elements of the segment, sorted.

    With ``itemsize`` (bytes per element on the wire), each range is whole hash-tree chunks instead: ``count``
    distinct places, each widened to the chunks that ``length`` elements there touch. A reader verifies a range
    by fetching every chunk it touches whole, so recomputing all of their elements costs no extra byte (4096 fp32
    elements per 16 KiB chunk, where a 1024-element range used a quarter of what it fetched), and a range never
    straddles a boundary it would pay a second chunk for. Every chunk, the short last one too, is equally likely.
    """
    n = min(length, seg.numel)
    if itemsize is None:
        return [(s, s + n) for s in sorted(rng.randrange(0, seg.numel - n + 1) for _ in range(count))]
    per_chunk = hashtree.CHUNK_BYTES // itemsize
    chunks = -(-seg.numel // per_chunk)
    span = min(chunks, -(-n // per_chunk))  # chunks one range covers
    places = range(chunks - span + 1)
    ranges: list[tuple[int, int]] = []
    for c in sorted(rng.sample(places, min(count, len(places)))):
        lo, hi = c * per_chunk, min(seg.numel, (c + span) * per_chunk)
        if ranges and lo < ranges[-1][1]:  # overlaps the previous one (ranges longer than a chunk): merge
            ranges[-1] = (ranges[-1][0], hi)
        else:
            ranges.append((lo, hi))
    return ranges


def sample_checks(rng: random.Random, holdings: dict[str, list[Segment]], per_miner: int
                  ) -> list[tuple[str, Segment]]:
    """``per_miner`` (or all, if fewer) of each miner's segments to check, as ``(miner, segment)`` pairs,
    preferring segments already drawn for another miner: a validator that checks two replicas of a segment at the
    same ranges reads its inputs once (:class:`InputReads`), so overlap saves it input reads at no loss of
    coverage (every miner is still checked ``per_miner`` times).

    Miners are taken in a random order; each takes at random among its segments already drawn, then at random
    among the rest. A miner cannot tell which of its segments will be checked: over the private order, each of
    its segments is about equally likely (``per_miner / len(segments)``) as with independent draws.
    """
    order = sorted(holdings)
    rng.shuffle(order)
    drawn: set[int] = set()
    picks: list[tuple[str, Segment]] = []
    for miner in order:
        segments = holdings[miner]
        want = min(per_miner, len(segments))
        again = [s for s in segments if s.index in drawn]
        chosen = rng.sample(again, min(want, len(again)))
        chosen += rng.sample([s for s in segments if s.index not in drawn], want - len(chosen))
        drawn |= {s.index for s in chosen}
        picks += [(miner, s) for s in chosen]
    return picks


def differing_ranges(rng: random.Random, values: torch.Tensor, others: list[torch.Tensor], length: int,
                     count: int) -> list[tuple[int, int]]:
    """Up to ``count`` ranges of ``length`` elements (aligned to ``length``) where ``values`` differs from any of
    ``others``, chosen at random among all such ranges: where replicas disagree, one of them is wrong."""
    n = values.numel()
    differ = torch.zeros(-(-n // length) * length, dtype=torch.bool)
    for other in others:
        differ[:n] |= values != other
    starts = (differ.view(-1, length).any(dim=1).nonzero().flatten() * length).tolist()
    chosen = rng.sample(starts, min(count, len(starts)))
    return [(s, min(n, s + length)) for s in sorted(chosen)]


class InputReads:
    """Input ranges already read and verified, by the input's signed content (hash-tree root and tensor layout)
    and the element range: the replicas of one segment list the same inputs (the same signed objects, each in its
    own bucket), so a validator checking two replicas at the same range reads each input's chunks once. Only
    completed reads are kept, never one in flight: a read that fails or hangs at one miner's bucket must not cost
    another miner its check, which then reads from its own bucket. (A check that takes others' reads still reads
    one input of its own, drawn at random: whether a miner's bucket serves its inputs' bytes stays checked.)"""

    def __init__(self) -> None:
        self._done: dict[tuple, tuple[torch.Tensor, int, bytes]] = {}

    @staticmethod
    def _key(header: Header, start: int, end: int) -> tuple:
        # The root fixes the data bytes; the layout, how they decode (both signed by the input's peer).
        return header.sha256, tuple(sorted(header.entries.items())), start, end

    def get(self, header: Header, start: int, end: int) -> tuple[torch.Tensor, int, bytes] | None:
        return self._done.get(self._key(header, start, end))

    def put(self, header: Header, start: int, end: int, read: tuple[torch.Tensor, int, bytes]) -> None:
        self._done[self._key(header, start, end)] = read


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
                               wire: WireFormat, numel: int, proof: ProofRows | None = None,
                               salt: bytes = b"", known: InputReads | None = None,
                               own: frozenset[int] = frozenset()) -> float:
    """``||o - r|| / (||r|| + eps)`` over ``ranges`` of a segment of ``numel`` elements: ``o`` read through
    ``output``, ``r`` recomputed from the inputs' values there, decoded as ``wire`` says from the spans of its
    tensors the range needs (an int8 input's scales too; a topk input's entries of the blocks the range touches,
    its index checked block by block as a miner checks the whole).

    With ``proof``, the output's proof-of-possession rows of every input chunk read are checked as well
    (:mod:`mapreduce.wire.proof`), at no extra cost in input reads. With ``known``, an input range another check
    already read and verified (the same signed object: :class:`InputReads`) is taken from there, and every range
    read here is added to it; the inputs whose indexes are in ``own`` are read through their reader all the same.
    """
    async def input_values(index: int, start: int, end: int) -> tuple[torch.Tensor, int, bytes]:
        reader = inputs[index]
        header = await reader.open()
        if known is not None and index not in own and (done := known.get(header, start, end)) is not None:
            return done
        got = await read_input(reader, start, end)
        if known is not None:
            known.put(header, start, end, got)
        return got

    async def read_input(reader: RangeReader, start: int, end: int) -> tuple[torch.Tensor, int, bytes]:
        spans = wire.spans(numel, start, end)
        data, first, chunks = await reader.read_chunks("data", *spans["data"])
        tensors = {"data": data}
        for name, span in spans.items():
            if name != "data":
                tensors[name] = await reader.read(name, *span)
        return wire.decode_range(tensors, numel, start, end), first, chunks

    async def one(start: int, end: int) -> tuple[float, float]:
        # The output's and the inputs' reads at once (each a few KiB: latency-bound); the sum below still adds the
        # inputs in canonical order.
        got, *reads = await asyncio.gather(output(start, end),
                                           *(input_values(i, start, end) for i in range(len(inputs))))
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
        want = reduce_slices(slices, wire.output_dtype).double()
        return float(torch.sum((got - want) ** 2)), float(torch.sum(want ** 2))

    sums = await asyncio.gather(*(one(start, end) for start, end in ranges))  # every range at once, too
    diff_sq, ref_sq = sum(d for d, _ in sums), sum(r for _, r in sums)
    if not math.isfinite(diff_sq):
        raise Wrong("output holds NaN or Inf where sampled")
    return math.sqrt(diff_sq) / (math.sqrt(ref_sq) + 1e-12)
