"""Proof of possession: an output shows its miner read every byte of every input it lists.

Deterministic reduction makes an honest output bit-identical to any other honest output of the same segment, so
without this a miner could copy a faster miner's result and never download its inputs, the work the subnet pays
for. So each output carries a ``proof`` tensor: for input ``p`` (in listed order) and data chunk ``c``,
``sha256(salt || chunk c of input p)[:8]``, with a salt made from the miner's own hotkey. Another miner's proof is
useless (other salt); computing one takes every chunk; and a validator or peer checks the rows of exactly the chunks
it already fetched for its sampled ranges, so checking costs no extra reads of inputs.
"""
from __future__ import annotations


import torch

from ..seeds import proof_salt
from . import hashtree

__all__ = ["proof_salt", "proof_rows", "chunk_rows"]  # proof_salt: the salt the rows are made with (seeds.py)


def proof_rows(data: memoryview, salt: bytes) -> torch.Tensor:
    """The ``[chunks, 8]`` U8 rows of one input's data bytes."""
    raw = hashtree.salted_digests(data, salt)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(-1, hashtree.PROOF_BYTES)


def chunk_rows(chunks: bytes, salt: bytes) -> bytes:
    """Rows for whole chunks a verifier fetched (the last one may be short)."""
    return hashtree.salted_digests(memoryview(chunks), salt)
