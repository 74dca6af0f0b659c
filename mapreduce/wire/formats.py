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
| ``topk`` | ``data`` F32 ``[K]``, ``index`` I16 ``[K]`` (below) | ``data[j]`` if entry ``j`` of ``i``'s block selects ``i``, else 0 | BF16 |

int8 (a scale per block of :data:`SCALE_BLOCK` elements): a peer sends ``scale = max|x| / 127`` of each block and
``round(x / scale)``; it sends about a quarter of fp32's bytes (plus 1.6% of scales). The rounding is the peer's own
business (nothing else recomputes it, so it need not be deterministic); only the decoding above is the protocol.
Outputs are bf16: the mean of int8 inputs carries no more precision than bf16 holds, and peers download half of
fp32's bytes. The value bound (``RunSpec.max_abs_value``) applies to decoded values: int8 values lie within
[-127, 127] (readers refuse -128) and a scale within ``max_abs_value / 127``.

topk (sparse, :data:`TOPK_BLOCK` = 4096 elements per block counted from the segment's first element, the last
block shorter): block ``b`` sends exactly ``k_b = min(TOPK_K, its length)`` entries, 64 (1.5625%) but for a last
block shorter than 64 elements, so its entries are ``[64 b, 64 b + k_b)`` of both tensors and ``K`` is the sum of
every ``k_b``: a reader of a few thousand elements reads the entries of the blocks they touch and nothing else.
``index`` holds in-block positions, strictly ascending within each block and each below the block's length;
``data`` the values (F32, finite and within the run's bound). Every other element decodes to 0. Readers check the
index rule (:func:`check_index`) on every block they decode, a miner's whole decode and an audit's ranged one alike.
Which entries a peer sends (its largest |values|) is its own business; a peer keeps what it did not send and adds
it to its next window's gradient (error feedback, :attr:`WireFormat.error_feedback`: mapreduce/peer.py). ``data``
comes first so that an output's proof of possession (one row per 16 KiB chunk of ``data``) covers the values;
``index`` is not proven, as int8's ``scale`` is not.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..errors import OutOfBounds, ShapeMismatch
from .codec import DTYPES

__all__ = ["FORMATS", "SCALE_BLOCK", "TOPK_BLOCK", "TOPK_K", "WireFormat", "check_index"]

SCALE_BLOCK = 256  # elements per int8 scale
TOPK_BLOCK = 4096  # elements per top-k block (a 64x64 block of a matrix, or 4096 consecutive elements)
TOPK_K = 64  # entries per top-k block: 1.5625%
_INT8_MAX = 127  # int8 values are symmetric: readers refuse -128 (codec.check_values)


@dataclass(frozen=True)
class WireFormat:
    name: str  # the run spec's wire_dtype
    data_code: str  # safetensors dtype code of an input's ``data``
    output_code: str  # and of an output's ``data``
    scale_block: int | None = None  # elements per fp32 ``scale``; None: ``data`` is the values themselves
    topk: bool = False  # sparse: ``data`` and ``index`` hold TOPK_K entries per TOPK_BLOCK elements
    # The peer adds what its last input did not carry to its next gradient (topk: the unsent elements, whole).
    error_feedback: bool = False

    @property
    def output_dtype(self) -> torch.dtype:
        return DTYPES[self.output_code]

    @property
    def data_dtype(self) -> torch.dtype:
        return DTYPES[self.data_code]

    @property
    def range_itemsize(self) -> int:
        """Bytes per element that checks align their ranges to (audit.sample_ranges): the wider of inputs' and
        outputs' ``data``, so a range of whole output chunks lies inside whole input chunks."""
        if self.topk:  # an input's data is 1.5% of the elements: the output's chunks are what a range reads most
            return self.output_dtype.itemsize
        return max(self.data_dtype.itemsize, self.output_dtype.itemsize)

    def blocks(self, numel: int) -> int:
        return -(-numel // self.scale_block) if self.scale_block else 0

    def data_numel(self, numel: int) -> int:
        """Elements of an input's ``data`` for a segment of ``numel`` elements (topk: its entries)."""
        return _entries_before(-(-numel // TOPK_BLOCK), numel) if self.topk else numel

    def input_tensors(self, numel: int) -> dict[str, tuple[str, tuple[int, ...]]]:
        """An input's tensors (dtype code, shape) for a segment of ``numel`` elements."""
        tensors = {"data": (self.data_code, (self.data_numel(numel),))}
        if self.scale_block:
            tensors["scale"] = ("F32", (self.blocks(numel),))
        if self.topk:
            tensors["index"] = ("I16", (self.data_numel(numel),))
        return tensors

    def spans(self, numel: int, start: int, end: int) -> dict[str, tuple[int, int]]:
        """For elements ``[start, end)`` of a segment of ``numel``: the element span of each input tensor that
        :meth:`decode_range` needs (a verified ranged read of each)."""
        if self.topk:
            entries = (_entries_before(start // TOPK_BLOCK, numel), _entries_before(-(-end // TOPK_BLOCK), numel))
            return {"data": entries, "index": entries}
        if self.scale_block:
            return {"data": (start, end), "scale": self.scale_span(start, end)}
        return {"data": (start, end)}

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
        if self.topk:
            return _topk_encode(values.reshape(-1).float())
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

    def decode(self, tensors: Mapping[str, torch.Tensor], numel: int) -> torch.Tensor:
        """The values a whole input of a segment of ``numel`` elements contributes to the mean (float: its
        ``data``; int8 and topk: fp32). Raises :class:`~mapreduce.errors.InvalidObject` for a topk input whose
        index breaks the rule (:func:`check_index`)."""
        if not self.scale_block and not self.topk:
            return tensors["data"]
        return self.decode_range(tensors, numel, 0, numel)

    def decode_range(self, tensors: Mapping[str, torch.Tensor], numel: int, start: int, end: int) -> torch.Tensor:
        """Elements ``[start, end)`` of an input of a segment of ``numel`` elements, from each tensor's span that
        :meth:`spans` names (``tensors[name][0]`` is element ``spans(...)[name][0]`` of that tensor)."""
        data = tensors["data"]
        if self.topk:
            return _topk_decode(data, tensors["index"], numel, start, end)
        if not self.scale_block:
            return data
        scale = tensors["scale"]
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

    def with_residual(self, flat: torch.Tensor, residual: torch.Tensor | None, bound: float,
                      segments: Sequence[tuple[int, int]]
                      ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]], torch.Tensor]:
        """Error feedback, the one statement of it (the peer's and the single-process replay's): encode each
        segment ``[start, end)`` of ``flat + residual`` (``flat`` itself when ``residual`` is None, so a -0.0
        stays -0.0), clamped to ``bound`` (inputs beyond the run's bound are refused; the excess waits), and keep
        what the inputs leave out. Returns ``(decoded values sent, each segment's input tensors, next residual)``."""
        carried = flat if residual is None else flat + residual
        to_send = carried.clamp(-bound, bound)
        sent = torch.empty_like(carried)
        encoded = []
        for start, end in segments:
            encoded.append(self.encode(to_send[start:end]))
            sent[start:end] = self.decode(encoded[-1], end - start)
        return sent, encoded, carried - sent

    def scale_span(self, start: int, end: int) -> tuple[int, int]:
        """The scale blocks ``[first, last)`` elements ``[start, end)`` need."""
        if not self.scale_block:
            return 0, 0
        return start // self.scale_block, -(-end // self.scale_block)

    def rounding(self) -> tuple[float, float]:
        """(input, output) rounding, each relative to the largest |value| of the segment: how far a decoded input
        may be from the peer's fp32 value, and the output's cast from the fp32 mean. bf16 keeps 8 significant bits
        (2^-8); an int8 value is within half a step, max|x| / 254, of the value (plus one fp32 multiply). A topk
        input is far from the gradient by design (98.4% of it waits in the peer's residual): its input rounding is
        relative to the values it sends, which are exact (:attr:`error_feedback`: the swarm's reference check
        compares with the mean of what the peers sent)."""
        if self.topk:
            return 0.0, 2.0 ** -8
        inputs = 1 / 254 + 2.0 ** -24 if self.scale_block else (2.0 ** -8 if self.data_code == "BF16" else 0.0)
        return inputs, 2.0 ** -8 if self.output_code == "BF16" else 0.0

    def bytes_per_element(self) -> tuple[float, float]:
        """(input, output) bytes per element on the wire, headers and hash leaves aside."""
        if self.topk:
            return TOPK_K * (self.data_dtype.itemsize + 2) / TOPK_BLOCK, self.output_dtype.itemsize
        scales = 4 / self.scale_block if self.scale_block else 0.0
        return self.data_dtype.itemsize + scales, self.output_dtype.itemsize


FORMATS: dict[str, WireFormat] = {
    "float32": WireFormat("float32", "F32", "F32"),
    "bfloat16": WireFormat("bfloat16", "BF16", "BF16"),
    "int8": WireFormat("int8", "I8", "BF16", scale_block=SCALE_BLOCK),
    "topk": WireFormat("topk", "F32", "BF16", topk=True, error_feedback=True),
}


def _entries_before(block: int, numel: int) -> int:
    """Top-k entries of the blocks before ``block`` (at most every block of the segment): every block but the
    last is whole, so TOPK_K each, and the last has min(TOPK_K, its length)."""
    blocks = -(-numel // TOPK_BLOCK)
    if block < blocks:
        return TOPK_K * block
    return TOPK_K * (blocks - 1) + min(TOPK_K, numel - (blocks - 1) * TOPK_BLOCK)


def check_index(index: torch.Tensor, numel: int, first_block: int, last_block: int) -> torch.Tensor:
    """The topk index rule, for the entries of blocks ``[first_block, last_block)`` of a segment of ``numel``:
    exactly ``k_b`` entries per block, each below its block's length and above the entry before it in the block
    (strictly ascending: no duplicate, no disorder; the first at least 0). Returns each entry's position in the
    segment. The one check of the rule: a whole decode and every ranged one go through it."""
    want = _entries_before(last_block, numel) - _entries_before(first_block, numel)
    if index.dim() != 1 or index.numel() != want:
        raise ShapeMismatch(f"topk index of blocks [{first_block}, {last_block}) has {index.numel()} entries, "
                            f"expected {want}")
    idx = index.to(torch.int64)
    # Only the segment's last block may hold fewer than TOPK_K entries, and it comes last: entry j is in block
    # first_block + j // TOPK_K.
    block = torch.arange(want, dtype=torch.int64) // TOPK_K + first_block
    length = (numel - block * TOPK_BLOCK).clamp_(max=TOPK_BLOCK)
    if want and not bool(((idx >= 0) & (idx < length)).all()):
        raise OutOfBounds("topk index holds a position outside its block (negative, or past the block's length)")
    if want > 1 and not bool(((block[1:] != block[:-1]) | (idx[1:] > idx[:-1])).all()):
        raise OutOfBounds("topk index is not strictly ascending within a block (a duplicate or out of order): "
                          "each position is bounded below by the one before it")
    return block * TOPK_BLOCK + idx


def _topk_decode(data: torch.Tensor, index: torch.Tensor, numel: int, start: int, end: int) -> torch.Tensor:
    """Elements ``[start, end)`` from the entries of every block they touch: the sent values at their positions,
    zeros elsewhere. Copies only, no arithmetic, so a range has the bits of the whole."""
    first, last = start // TOPK_BLOCK, -(-end // TOPK_BLOCK)
    positions = check_index(index, numel, first, last)
    if data.shape != index.shape:
        raise ShapeMismatch(f"topk data has {data.numel()} entries, its index {index.numel()}")
    base = first * TOPK_BLOCK
    out = torch.zeros(min(numel, last * TOPK_BLOCK) - base, dtype=torch.float32)
    out[positions - base] = data.to(torch.float32)
    return out[start - base:end - base]


def _topk_encode(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The TOPK_K largest |values| of each block, ties to the lower position (a stable sort: the same values always
    give the same entries, so the peer's residual and the replay's agree), positions ascending."""
    n = x.numel()
    whole = n // TOPK_BLOCK
    parts = [(x[:whole * TOPK_BLOCK].view(whole, TOPK_BLOCK), TOPK_K)] if whole else []
    if n > whole * TOPK_BLOCK:
        rest = x[whole * TOPK_BLOCK:].view(1, -1)
        parts.append((rest, min(TOPK_K, rest.shape[1])))
    data, index = [], []
    for rows, k in parts:
        chosen = torch.sort(torch.argsort(rows.abs(), dim=1, descending=True, stable=True)[:, :k], dim=1).values
        data.append(rows.gather(1, chosen).reshape(-1))
        index.append(chosen.reshape(-1).to(torch.int16))
    if not data:
        return {"data": torch.zeros(0), "index": torch.zeros(0, dtype=torch.int16)}
    return {"data": torch.cat(data).contiguous(), "index": torch.cat(index).contiguous()}
