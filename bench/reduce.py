"""The miner's per-input work without the network, on one segment: what its CPU allows.

- ``accumulate``: `Accumulator.add` alone (the fp32 ``add_``), for fp32 and bf16 inputs.
- ``verify+prove+add``: what the miner does to each input once its bytes are in memory (`mapreduce.inputs`):
  check the object (header, signature, sha256 tree, finite values), compute its proof-of-possession rows, add.

Throughput is bytes of input reduced per second (10^9 B = 1 GB), best of ``reps`` passes over ``inputs`` inputs.
The whole path including the download from S3 is measured by `bench.miner_proc` in a miner process.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from mapreduce.wire.codec import Expect, ObjectMeta, decode, encode
from mapreduce.inputs import _decode_and_prove
from mapreduce.wire.formats import FORMATS
from mapreduce.wire.keys import make_tag
from mapreduce.wire.proof import proof_salt
from mapreduce.reduce import Accumulator
from mapreduce.wire.signing import Signer

from .timing import best_seconds

__all__ = ["ReduceRates", "reduce_rates"]


@dataclass(frozen=True)
class ReduceRates:
    """GB/s of input: the add alone (fp32, bf16 inputs) and the whole in-memory per-input path (fp32)."""

    copy: float  # the baseline: torch ``dst.copy_(src)`` of one segment, timed in the same loop as the adds
    add_fp32: float
    add_bf16: float
    verify_prove_add: float
    stages: dict[str, float]  # seconds per input of each stage of the in-memory path


def reduce_rates(segment_bytes: int, inputs: int = 4, reps: int = 3) -> ReduceRates:
    numel = segment_bytes // 4
    g = torch.Generator().manual_seed(0)
    values = [torch.randn(numel, generator=g) for _ in range(inputs)]
    bf16 = [v.to(torch.bfloat16) for v in values]

    def add_all(vs: list[torch.Tensor]) -> None:
        acc = Accumulator(numel)
        for i, v in enumerate(vs):
            acc.add(f"p{i:03d}", "", v)

    # Copy and adds alternate, so that both see the same machine (it is shared, and its memory bandwidth moves
    # with the load). The accumulator's allocation counts: a miner makes one per segment, as here.
    dst = torch.empty_like(values[0]).copy_(values[0])
    copy_s, fp32_s, bf16_s = float("inf"), float("inf"), float("inf")
    for _ in range(reps):
        copy_s = min(copy_s, best_seconds(lambda: dst.copy_(values[0]), 1))
        fp32_s = min(fp32_s, best_seconds(lambda: add_all(values), 1))
        bf16_s = min(bf16_s, best_seconds(lambda: add_all(bf16), 1))
    del dst

    signers = [Signer.from_uri(f"//bench-reduce/{i}") for i in range(inputs)]
    objects = []
    for s, v in zip(signers, values):
        meta = ObjectMeta("bench-reduce", 1, "in", s.hotkey, 0)
        key = dataclasses.replace(meta.key, tag=make_tag(s, "bench-reduce", 1, 0, "in", s.hotkey))
        objects.append((str(key), bytearray(encode(meta, {"data": v}, s).data)))
    del values, bf16
    hotkeys = {s.hotkey for s in signers}
    expect = Expect({"data": ("F32", (numel,))}, allowed=hotkeys.__contains__, max_bytes=2 * segment_bytes)
    salt = proof_salt("bench-reduce", 1, 0, "miner")
    stages = {"decode (verify)": 0.0, "prove": 0.0, "add": 0.0}

    def whole() -> None:
        acc = Accumulator(numel)
        for i, (key, buf) in enumerate(objects):
            decoded, values, proof = _decode_and_prove(buf, key, expect, salt, FORMATS["float32"], numel)
            acc.add(f"p{i:03d}", decoded.sha256, values, proof)

    seconds = best_seconds(whole, reps)
    key, buf = objects[0]
    stages["decode (verify)"] = best_seconds(lambda: decode(buf, key, expect), reps)
    prove = best_seconds(lambda: _decode_and_prove(buf, key, expect, salt, FORMATS["float32"], numel), reps)
    stages["prove"] = prove - stages["decode (verify)"]
    acc = Accumulator(numel)
    t = decode(buf, key, expect).tensors["data"]
    stages["add"] = best_seconds(lambda: acc.add(f"p{len(acc.hotkeys):05d}", "", t), reps)
    return ReduceRates(segment_bytes / copy_s / 1e9, inputs * numel * 4 / fp32_s / 1e9,
                       inputs * numel * 2 / bf16_s / 1e9, inputs * segment_bytes / seconds / 1e9, stages)
