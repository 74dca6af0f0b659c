"""Verified reads of a few elements of a remote object, without downloading it.

A validator opens an object by fetching its first bytes (the header, checked and signature-verified exactly as a
full decode would), then reads chosen element ranges of one tensor: for each range it fetches the data chunks that
cover it and the leaf hashes of their groups, and checks both against the signed group hashes. A few kilobytes
per range, verified end to end.

The reader is given a ``fetch(start, end)`` coroutine returning bytes ``[start, end)``; it does not know where
the bytes come from (an S3 ranged GET in production, a slice in tests).
"""
from __future__ import annotations

import hashlib
import struct
from typing import Awaitable, Callable

import torch

from ..errors import HashMismatch, Oversized, Truncated
from . import hashtree
from .codec import DTYPES, Expect, Header, check_values, header_end, parse_header

Fetch = Callable[[int, int], Awaitable[bytes]]

# Most headers fit in the first read; a larger one costs a second, exact read.
FIRST_READ = 4 * 1024

# What a header holds, measured on encoded objects (tests/protocol/test_codec.py checks the guess covers them):
# ~0.7 KiB of fixed fields and signature, 64 hex digits per group of leaf hashes, and in an output 258 bytes or a
# little more per listed input (hotkey, sha256, key tag, JSON-escaped). The guess rounds each up.
_HEADER_FIXED, _HEADER_PER_GROUP, _HEADER_PER_INPUT = 1024, 64, 264
_LISTED_INPUT_MIN = 258  # counting inputs from an output's size, the smallest entry: never too few inputs


def first_read_guess(size: int, data_bytes: int = 0, proof_chunks: int = 0) -> int:
    """Bytes to fetch first when opening an object of ``size`` bytes so that its header fits, without reading much
    more. For an output (``proof_chunks`` > 0: its proof has that many rows of 8 bytes per input, after
    ``data_bytes`` of mean) the number of inputs it lists follows from its size, so the guess grows with them:
    a fixed guess either wastes bytes at small P or costs a second request at large P."""
    guess = _HEADER_FIXED + _HEADER_PER_GROUP * hashtree.group_count(hashtree.leaf_count(size))
    if proof_chunks > 0:
        rest = size - data_bytes - hashtree.DIGEST * hashtree.leaf_count(size)  # header + proof rows
        guess += _HEADER_PER_INPUT * max(1, rest // (proof_chunks * hashtree.PROOF_BYTES + _LISTED_INPUT_MIN))
    return guess


class RangeReader:
    """Reads verified element ranges of one object through ranged fetches; counts the bytes it fetched."""

    def __init__(self, fetch: Fetch, size: int, key: str, expect: Expect, first_read: int = FIRST_READ):
        """``first_read``: bytes fetched to find the header; a good guess saves a second request."""
        self._fetch = fetch
        self._first_read = first_read
        self._size = size
        self._key = key
        self._expect = expect
        self.header: Header | None = None
        self.header_bytes = b""  # the raw header as served (the writer's signed words: evidence if they lie)
        self.bytes_fetched = 0
        self.requests = 0

    async def _get(self, start: int, end: int) -> bytes:
        data = await self._fetch(start, end)
        self.bytes_fetched += len(data)
        self.requests += 1
        if len(data) != end - start:
            raise Truncated(f"asked for bytes [{start}, {end}) and got {len(data)}")
        return data

    async def open(self) -> Header:
        """Fetch and check the header (layout, key, hotkey, signature, expected tensors).

        The size (from a listing or a HEAD: the server's word) is checked against the cap before the first byte is
        read, and the first read never asks for more than the largest header the cap allows.
        """
        if self.header is None:
            if self._size > self._expect.max_bytes:
                raise Oversized(f"object is {self._size} bytes, the cap is {self._expect.max_bytes}")
            if self._size < 8:
                raise Truncated(f"object is {self._size} bytes, shorter than the 8-byte header length")
            first_read = min(self._first_read, 8 + self._expect.max_header_bytes)
            first = await self._get(0, min(self._size, first_read))
            if len(first) >= 8:
                (n,) = struct.unpack_from("<Q", first, 0)
                if 8 + n > len(first) and n <= self._expect.max_header_bytes and 8 + n <= self._size:
                    first += await self._get(len(first), 8 + n)
            self.header = parse_header(first, self._size, self._key, self._expect)
            self.header_bytes = bytes(first[:header_end(first)])
        return self.header

    async def read(self, name: str, start: int, end: int) -> torch.Tensor:
        """Elements ``[start, end)`` of the flattened tensor ``name``, checked against the signed hash tree."""
        values, _, _ = await self.read_chunks(name, start, end)
        return values

    async def read_chunks(self, name: str, start: int, end: int) -> tuple[torch.Tensor, int, bytes]:
        """Like :meth:`read`, also returning the index of the first covering data chunk and the verified bytes of
        the covering chunks that belong to the tensor (for proofs of possession, which are per chunk of the tensor:
        where another tensor follows in the last chunk, as an int8 input's scales do, its bytes are cut off)."""
        header = await self.open()
        entry = header.entries[name]
        numel = (entry.end - entry.start) // entry.itemsize
        if not 0 <= start < end <= numel:
            raise ValueError(f"element range [{start}, {end}) outside tensor {name!r} of {numel} elements")
        byte_start = entry.start + start * entry.itemsize
        byte_end = entry.start + end * entry.itemsize
        first_chunk, last_chunk = hashtree.chunk_span(byte_start, byte_end)

        leaf_lo = hashtree.group_span(first_chunk, last_chunk)[0] * hashtree.GROUP_LEAVES
        leaves = await self._group_leaves(first_chunk, last_chunk)

        # The covering chunks, each checked against its leaf.
        lo = first_chunk * hashtree.CHUNK_BYTES
        hi = min(header.data_len, last_chunk * hashtree.CHUNK_BYTES)
        chunks = await self._get(header.data_start + lo, header.data_start + hi)
        for c in range(first_chunk, last_chunk):
            got = hashlib.sha256(chunks[(c - first_chunk) * hashtree.CHUNK_BYTES:
                                        (c - first_chunk + 1) * hashtree.CHUNK_BYTES]).digest()
            leaf = (c - leaf_lo) * hashtree.DIGEST
            if got != leaves[leaf:leaf + hashtree.DIGEST]:
                raise HashMismatch(f"chunk {c} does not match its leaf hash")

        chunks = chunks[:entry.end - lo]  # the tensor's own bytes (data starts at 0: chunk c is its chunk c)
        piece = bytearray(chunks[byte_start - lo:byte_end - lo])
        values = torch.frombuffer(piece, dtype=DTYPES[entry.dtype]) if piece else torch.empty(0)
        check_values(name, values, entry.dtype, self._expect.max_abs)
        return values, first_chunk, chunks

    async def leaves(self, first_chunk: int, last_chunk: int) -> list[bytes]:
        """The leaf hashes of chunks ``[first_chunk, last_chunk)``, checked against the signed group hashes: where
        two objects with the same layout hold different bytes, without reading those bytes."""
        leaves = await self._group_leaves(first_chunk, last_chunk)
        lo = hashtree.group_span(first_chunk, last_chunk)[0] * hashtree.GROUP_LEAVES
        return [leaves[(c - lo) * hashtree.DIGEST:(c - lo + 1) * hashtree.DIGEST]
                for c in range(first_chunk, last_chunk)]

    async def _group_leaves(self, first_chunk: int, last_chunk: int) -> bytes:
        """The leaves of every group the chunks touch (one ranged read), each group checked against its signed
        hash."""
        header = await self.open()
        first_group, last_group = hashtree.group_span(first_chunk, last_chunk)
        n_leaves = hashtree.leaf_count(header.data_len)
        if not 0 <= first_chunk < last_chunk <= n_leaves:
            raise ValueError(f"chunks [{first_chunk}, {last_chunk}) outside the object's {n_leaves}")
        leaf_lo = first_group * hashtree.GROUP_LEAVES
        leaf_hi = min(n_leaves, last_group * hashtree.GROUP_LEAVES)
        base = header.data_start + header.leaves.start
        leaves = await self._get(base + leaf_lo * hashtree.DIGEST, base + leaf_hi * hashtree.DIGEST)
        span = hashtree.GROUP_LEAVES * hashtree.DIGEST
        for g in range(first_group, last_group):
            part = leaves[(g - first_group) * span:(g - first_group + 1) * span]
            if hashlib.sha256(part).digest() != header.groups[g]:
                raise HashMismatch(f"leaf hashes of group {g} do not match the signed header")
        return leaves
