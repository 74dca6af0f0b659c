"""Wire formats: how a peer's segment travels as an input, what every party reduces from it, and what outputs hold.

The run spec's ``wire_dtype`` names one of :data:`FORMATS`. For each format this module is the one place that says:

- the tensors of an input (:meth:`WireFormat.input_tensors`), made from the peer's fp32 segment by
  :meth:`WireFormat.encode`;
- the values every party reduces from an input (:meth:`WireFormat.decode`, or :meth:`WireFormat.decode_range` for a
  verified ranged read). Decoding is exact and elementwise: element ``i`` decodes to the same bits whether the
  miner decodes the whole segment or a validator a few thousand elements around it, so a recomputed range equals
  the miner's output bit for bit (mapreduce/reduce.py adds the decoded values in fp32, in canonical order);
- the dtype of an output's reduced ``data``.

| ``wire_dtype`` | input tensors (in this order) | element ``i`` decodes to | output ``data`` |
| --- | --- | --- | --- |
| ``float32`` | ``data`` F32 ``[n]`` | ``data[i]`` | F32 |
| ``bfloat16`` | ``data`` BF16 ``[n]`` | ``data[i]`` (exact in fp32) | BF16 |
| ``int8`` | ``data`` I8 ``[n]``, ``scale`` F32 ``[ceil(n / 256)]`` | ``fp32(data[i]) * scale[i // 256]``, one fp32 multiply | BF16 |

int8 (a scale per block of :data:`SCALE_BLOCK` elements): a peer sends ``scale = max|x| / 127`` of each block and
``round(x / scale)``; it sends about a quarter of fp32's bytes (plus 1.6% of scales). The rounding is the peer's own
business (nothing else recomputes it, so it need not be deterministic); only the decoding above is the protocol.
Outputs are bf16: the mean of int8 inputs carries no more precision than bf16 holds, and peers download half of
fp32's bytes. The value bound (``RunSpec.max_abs_value``) applies to decoded values: int8 values lie within
[-127, 127] (readers refuse -128) and a scale within ``max_abs_value / 127``.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

__all__ = ["FORMATS", "SCALE_BLOCK", "WireFormat", "wire_format"]

SCALE_BLOCK = 256  # elements per int8 scale
_CODES = {"F32": torch.float32, "BF16": torch.bfloat16, "I8": torch.int8}
_INT8_MAX = 127  # int8 values are symmetric: readers refuse -128 (codec.check_values)


@dataclass(frozen=True)
class WireFormat:
    name: str  # the run spec's wire_dtype
    data_code: str  # safetensors dtype code of an input's ``data``
    output_code: str  # and of an output's ``data``
    scale_block: int | None = None  # elements per fp32 ``scale``; None: ``data`` is the values themselves

    @property
    def output_dtype(self) -> torch.dtype:
        return _CODES[self.output_code]

    @property
    def data_dtype(self) -> torch.dtype:
        return _CODES[self.data_code]

    @property
    def range_itemsize(self) -> int:
        """Bytes per element that checks align their ranges to (audit.sample_ranges): the wider of inputs' and
        outputs' ``data``, so a range of whole output chunks lies inside whole input chunks."""
        return max(self.data_dtype.itemsize, self.output_dtype.itemsize)

    def blocks(self, numel: int) -> int:
        return -(-numel // self.scale_block) if self.scale_block else 0

    def input_tensors(self, numel: int) -> dict[str, tuple[str, tuple[int, ...]]]:
        """An input's tensors (dtype code, shape) for a segment of ``numel`` elements."""
        tensors = {"data": (self.data_code, (numel,))}
        if self.scale_block:
            tensors["scale"] = ("F32", (self.blocks(numel),))
        return tensors

    def scale_bound(self, max_abs: float) -> float:
        """The bound on an input's float tensors that keeps every decoded value within ``max_abs`` (to fp32
        rounding): an int8 value is at most 127 in magnitude, so a scale at most ``max_abs / 127``, divided in fp32
        as a peer divides its block's largest |value|: division is monotonic, so a gradient within the bound always
        gives scales within this one."""
        if not self.scale_block:
            return max_abs
        return float(torch.tensor(max_abs, dtype=torch.float32) / _INT8_MAX)

    def encode(self, values: torch.Tensor) -> dict[str, torch.Tensor]:
        """A peer's input tensors for its segment ``values`` (any float dtype; fp32 is what peers hold)."""
        if not self.scale_block:
            return {"data": values.to(self.data_dtype)}
        x = values.reshape(-1).float()
        n, blocks = x.numel(), self.blocks(x.numel())
        padded = torch.zeros(blocks * self.scale_block, dtype=torch.float32)
        padded[:n] = x
        padded = padded.view(blocks, self.scale_block)
        scale = padded.abs().amax(dim=1) / _INT8_MAX
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero block: scale 0, values 0
        q = torch.round(padded / safe[:, None]).clamp_(-_INT8_MAX, _INT8_MAX).to(torch.int8)
        return {"data": q.reshape(-1)[:n].clone(), "scale": scale}

    def decode(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The values a whole input contributes to the mean (float: its ``data``; int8: fp32)."""
        if not self.scale_block:
            return tensors["data"]
        return self.decode_range(tensors["data"], tensors["scale"], 0)

    def decode_range(self, data: torch.Tensor, scale: torch.Tensor, start: int) -> torch.Tensor:
        """Elements ``[start, start + len(data))`` of an input from their ``data`` and the scales of every block
        they touch (``scale[0]`` is block ``start // scale_block``)."""
        if not self.scale_block:
            return data
        out, block_size = data.to(torch.float32), self.scale_block  # int8 -> fp32 is exact
        n, first, pos = out.numel(), start // block_size, 0
        while pos < n:  # a partial first block, then whole blocks at once, then a partial last block
            block, offset = divmod(start + pos, block_size)
            if offset == 0 and n - pos >= block_size:
                whole = (n - pos) // block_size
                rows = out[pos:pos + whole * block_size].view(whole, block_size)
                rows.mul_(scale[block - first:block - first + whole].to(torch.float32)[:, None])
                pos += whole * block_size
            else:
                end = min(n, pos + block_size - offset)
                out[pos:end].mul_(scale[block - first].to(torch.float32))
                pos = end
        return out

    def scale_span(self, start: int, end: int) -> tuple[int, int]:
        """The scale blocks ``[first, last)`` elements ``[start, end)`` need."""
        if not self.scale_block:
            return 0, 0
        return start // self.scale_block, -(-end // self.scale_block)

    def rounding(self) -> tuple[float, float]:
        """(input, output) rounding, each relative to the largest |value| of the segment: how far a decoded input
        may be from the peer's fp32 value, and the output's cast from the fp32 mean. bf16 keeps 8 significant bits
        (2^-8); an int8 value is within half a step, max|x| / 254, of the value (plus one fp32 multiply)."""
        inputs = 1 / 254 + 2.0 ** -24 if self.scale_block else (2.0 ** -8 if self.data_code == "BF16" else 0.0)
        return inputs, 2.0 ** -8 if self.output_code == "BF16" else 0.0

    def bytes_per_element(self) -> tuple[float, float]:
        """(input, output) bytes per element on the wire, headers and hash leaves aside."""
        scales = 4 / self.scale_block if self.scale_block else 0.0
        return self.data_dtype.itemsize + scales, self.output_dtype.itemsize


FORMATS: dict[str, WireFormat] = {
    "float32": WireFormat("float32", "F32", "F32"),
    "bfloat16": WireFormat("bfloat16", "BF16", "BF16"),
    "int8": WireFormat("int8", "I8", "BF16", scale_block=SCALE_BLOCK),
}


def wire_format(name: str) -> WireFormat:
    """The format the run spec's ``wire_dtype`` names (the spec refuses any other name)."""
    return FORMATS[name]
