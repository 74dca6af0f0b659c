"""The deterministic reduction: mean of the inputs, added in a fixed order in fp32.

The order is the peers' hotkeys sorted as strings. Addition is elementwise, so the result for any element depends
only on that element's inputs and their order: a validator that recomputes a slice from the same inputs in the same
order gets the same bits as the miner did for the whole segment, and so does a peer that has to reduce a segment
itself. Division by the count happens once, in fp32, then the result is cast to the wire dtype.
"""
from __future__ import annotations

import torch


# Elements converted at a time when inputs are not fp32: a 4 MiB fp32 scratch that stays in cache. Adding a bf16
# tensor to an fp32 one directly goes through torch's slow mixed-dtype path (~3x slower on this kind of machine).
_CONVERT_CHUNK = 1 << 20


class Accumulator:
    """Adds inputs one by one in the canonical order; memory is one fp32 buffer of the segment."""

    def __init__(self, numel: int):
        self._numel = numel
        self._sum: torch.Tensor | None = None  # made by the first add (see _accumulate)
        self._scratch: torch.Tensor | None = None
        self._last: str | None = None
        self.hotkeys: list[str] = []
        self.hashes: list[str] = []
        self.tags: list[str] = []  # the key tag each input was read under (mapreduce/wire/keys.py)
        self.proofs: list[torch.Tensor] = []

    def add(self, hotkey: str, sha256: str, values: torch.Tensor, proof: torch.Tensor | None = None,
            tag: str = "") -> None:
        if self._last is not None and hotkey <= self._last:
            raise ValueError(f"inputs must be added in sorted hotkey order: {hotkey} after {self._last}")
        if values.numel() != self._numel:
            raise ValueError(f"input has {values.numel()} elements, the segment {self._numel}")
        self._sum, self._scratch = _accumulate(self._sum, values.reshape(-1), self._scratch)
        self._last = hotkey
        self.hotkeys.append(hotkey)
        self.hashes.append(sha256)
        self.tags.append(tag)
        if proof is not None:
            self.proofs.append(proof)

    @property
    def count(self) -> int:
        return len(self.hotkeys)

    @property
    def inputs(self) -> list[tuple[str, str, str]]:
        """``(hotkey, sha256, key tag)`` of every input added, in order: what an output lists."""
        return list(zip(self.hotkeys, self.hashes, self.tags))

    def mean(self, wire_dtype: torch.dtype) -> torch.Tensor:
        if not self.count or self._sum is None:
            raise ValueError("no inputs to reduce")
        return self._sum.div_(self.count).to(wire_dtype)


def _accumulate(total: torch.Tensor | None, values: torch.Tensor,
                scratch: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``total + values`` in fp32, in place; the first input is copied rather than added to zeros.

    A copy is one pass over memory less than zero-fill then add, and gives the same sums: ``0.0 + x == x`` except
    for ``-0.0``, which the copy keeps and the addition would turn into ``+0.0`` (they compare equal). Every party
    reduces through here, so all of them get the same bits. bf16 inputs are promoted exactly to fp32.
    """
    if total is None:
        return torch.empty(values.numel(), dtype=torch.float32).copy_(values), scratch
    if values.dtype == torch.float32:
        total.add_(values)
        return total, scratch
    if scratch is None:
        scratch = torch.empty(min(_CONVERT_CHUNK, values.numel()), dtype=torch.float32)
    for i in range(0, values.numel(), _CONVERT_CHUNK):
        part = values[i:i + _CONVERT_CHUNK]
        converted = scratch[:part.numel()].copy_(part)
        total[i:i + part.numel()].add_(converted)
    return total, scratch


def reduce_slices(slices: list[torch.Tensor], wire_dtype: torch.dtype) -> torch.Tensor:
    """The same reduction over slices already in canonical order (validators, on sampled ranges)."""
    if not slices:
        raise ValueError("no inputs to reduce")
    total, scratch = None, None
    for s in slices:
        total, scratch = _accumulate(total, s.reshape(-1), scratch)
    return total.div_(len(slices)).to(wire_dtype)
