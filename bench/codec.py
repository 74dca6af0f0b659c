"""Encode and decode of one 256 MiB fp32 segment by ``mapreduce.wire.codec``, against a plain memory copy of it.

The copy is the floor for any serialiser that must place the tensor's bytes in an object: measured both into an
existing buffer (``copy_``) and with the allocation a new object needs (``clone``). The sha256 tree alone and the
safetensors library's own save/load (no hashing, no signature) are shown for reference: the protocol requires a
sha256 of the data, so its hashing speed, not copying, bounds the codec.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import safetensors.torch
import torch

from mapreduce.wire import hashtree
from mapreduce.wire.codec import Expect, ObjectMeta, decode, encode
from mapreduce.wire.keys import make_tag
from mapreduce.wire.signing import Signer

from .table import Row
from .timing import best_seconds

MiB = 1024 * 1024


def _best_ms(fn: Callable[[], object], reps: int) -> float:
    return best_seconds(fn, reps) * 1000.0


def codec_rows(reps: int, size: int = 256 * MiB) -> list[Row]:
    t = torch.randn(size // 4)
    signer = Signer.from_uri("//bench-codec")
    meta = ObjectMeta("bench", 0, "in", signer.hotkey, 0)
    # An input's key ends in its writer's tag for the bucket's owner (keys.make_tag); a key without it is refused.
    key = str(dataclasses.replace(meta.key, tag=make_tag(signer, "bench", 0, 0, "in", signer.hotkey)))
    expect = Expect({"data": ("F32", (t.numel(),))}, allowed=lambda h: True, max_bytes=size + 64 * MiB)
    dst = torch.empty_like(t)
    copy_into = _best_ms(lambda: dst.copy_(t), reps)
    clone = _best_ms(lambda: t.clone(), reps)
    obj = encode(meta, {"data": t}, signer)
    assert torch.equal(decode(obj.data, key, expect).tensors["data"], t), "codec round trip changed the data"
    enc = _best_ms(lambda: encode(meta, {"data": t}, signer), reps)
    dec = _best_ms(lambda: decode(obj.data, key, expect), reps)
    raw = memoryview(t.numpy()).cast("B")
    tree = _best_ms(lambda: hashtree.compute_leaves(raw), reps)
    st_save = _best_ms(lambda: safetensors.torch.save({"data": t}), reps)
    blob = safetensors.torch.save({"data": t})
    st_load = _best_ms(lambda: safetensors.torch.load(blob), reps)
    mb = size // MiB
    note = "ratio = copy / ours; target: encode+decode <= 2x the copy (ratio >= 0.5)"
    return [
        Row(f"memory copy {mb} MiB (copy_ into a buffer)", copy_into, unit="ms", higher_is_better=False),
        Row(f"memory copy {mb} MiB (clone, allocating)", clone, unit="ms", higher_is_better=False),
        Row(f"encode {mb} MiB fp32", enc, clone, "ms", False, "one copy + sha256 tree + signature; vs clone"),
        Row(f"decode {mb} MiB fp32", dec, clone, "ms", False,
            "checks + sha256 tree + finite, zero-copy view; vs clone"),
        Row(f"encode+decode {mb} MiB fp32", enc + dec, 2 * clone, "ms", False, f"vs 2 x clone; {note}"),
        Row(f"encode+decode {mb} MiB fp32 vs copy_", enc + dec, 2 * copy_into, "ms", False, "vs 2 x copy_"),
        Row(f"sha256 tree alone, {mb} MiB", tree, clone, "ms", False, "the floor: hashing is required"),
        Row(f"safetensors save+load {mb} MiB", st_save + st_load, 2 * clone, "ms", False,
            "the library, no hashing or signature, for reference"),
    ]
