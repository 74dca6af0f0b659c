"""A two-level sha256 tree over an object's data bytes.

Why a tree and not one sha256 over the bytes: a validator reads a few thousand elements of an object with ranged
GETs and must still know they are the bytes the writer signed. The data is cut into ``CHUNK_BYTES`` chunks; each
chunk's sha256 is a *leaf*; every ``GROUP_LEAVES`` leaves hash to a *group*; the groups hash to the *root*. The
signed header carries the root and the group hashes; the leaves travel in the object itself (a small ``U8``
tensor). To verify one chunk a reader fetches that chunk and its group's leaves (2 KiB), nothing else. Leaves also
hash in parallel (hashlib releases the GIL), which a single sequential sha256 cannot.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

CHUNK_BYTES = 16 * 1024
GROUP_LEAVES = 64
DIGEST = 32

_pool: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="hashtree")
    return _pool


def leaf_count(data_len: int) -> int:
    return -(-data_len // CHUNK_BYTES)


def group_count(leaves: int) -> int:
    return -(-leaves // GROUP_LEAVES)


def _hash_chunks(data: memoryview, out: memoryview, first: int, last: int) -> None:
    sha = hashlib.sha256
    digests = [sha(data[i * CHUNK_BYTES:(i + 1) * CHUNK_BYTES]).digest() for i in range(first, last)]
    out[first * DIGEST:last * DIGEST] = b"".join(digests)


def compute_leaves(data: memoryview, out: memoryview | None = None) -> memoryview:
    """sha256 of every chunk of ``data``, concatenated, written into ``out`` (allocated if None)."""
    data = data.cast("B") if data.format != "B" or data.ndim != 1 else data
    n = leaf_count(len(data))
    if out is None:
        out = memoryview(bytearray(n * DIGEST))
    if len(out) != n * DIGEST:
        raise ValueError("leaf buffer has the wrong size")
    _over_chunks(n, lambda first, last: _hash_chunks(data, out, first, last))
    return out


def _over_chunks(n: int, work) -> None:
    """``work(first, last)`` over chunks ``[0, n)``: small objects inline (not worth a thread hop), large ones as
    one contiguous run per worker (hashlib releases the GIL, so the runs hash in parallel)."""
    if n < 64:
        work(0, n)
        return
    step = -(-n // _executor()._max_workers)
    for f in [_executor().submit(work, i, min(n, i + step)) for i in range(0, n, step)]:
        f.result()


PROOF_BYTES = 8


def _salted_chunks(data: memoryview, salt: bytes, out: memoryview, first: int, last: int) -> None:
    base = hashlib.sha256(salt)
    digests = []
    for i in range(first, last):
        h = base.copy()
        h.update(data[i * CHUNK_BYTES:(i + 1) * CHUNK_BYTES])
        digests.append(h.digest()[:PROOF_BYTES])
    out[first * PROOF_BYTES:last * PROOF_BYTES] = b"".join(digests)


def salted_digests(data: memoryview, salt: bytes) -> bytes:
    """``sha256(salt || chunk)[:8]`` for every chunk: a proof that whoever computed it held all of ``data``.

    The salt is the prover's own (miners salt with their hotkey), so the proof cannot be copied from another
    prover, and a verifier holding any one chunk can check its row.
    """
    data = data.cast("B") if data.format != "B" or data.ndim != 1 else data
    n = leaf_count(len(data))
    out = memoryview(bytearray(n * PROOF_BYTES))
    _over_chunks(n, lambda first, last: _salted_chunks(data, salt, out, first, last))
    return bytes(out)


def group_hashes(leaves: bytes | memoryview) -> list[bytes]:
    span = GROUP_LEAVES * DIGEST
    return [hashlib.sha256(leaves[i:i + span]).digest() for i in range(0, len(leaves), span)]


def root_of(groups: list[bytes]) -> bytes:
    return hashlib.sha256(b"".join(groups)).digest()


def chunk_span(byte_start: int, byte_end: int) -> tuple[int, int]:
    """The chunks ``[first, last)`` that cover data bytes ``[byte_start, byte_end)``."""
    return byte_start // CHUNK_BYTES, -(-byte_end // CHUNK_BYTES)


def group_span(first_chunk: int, last_chunk: int) -> tuple[int, int]:
    return first_chunk // GROUP_LEAVES, -(-last_chunk // GROUP_LEAVES)
