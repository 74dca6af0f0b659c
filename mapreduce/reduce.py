"""The deterministic reduction: mean of the inputs, added in a fixed order in fp32.

The order is the peers' hotkeys sorted as strings. Addition is elementwise, so the result for any element depends
only on that element's inputs and their order: a validator that recomputes a slice from the same inputs in the same
order gets the same bits as the miner did for the whole segment, and so does a peer that has to reduce a segment
itself. Division by the count happens once, in fp32, then the result is cast to the wire dtype.
"""
from __future__ import annotations

import torch


class Accumulator:
    """Adds inputs one by one in the canonical order; memory is one fp32 buffer of the segment."""

    def __init__(self, numel: int):
        self._sum = torch.zeros(numel, dtype=torch.float32)
        self._last: str | None = None
        self.hotkeys: list[str] = []
        self.hashes: list[str] = []
        self.proofs: list[torch.Tensor] = []

    def add(self, hotkey: str, sha256: str, values: torch.Tensor, proof: torch.Tensor | None = None) -> None:
        if self._last is not None and hotkey <= self._last:
            raise ValueError(f"inputs must be added in sorted hotkey order: {hotkey} after {self._last}")
        if values.numel() != self._sum.numel():
            raise ValueError(f"input has {values.numel()} elements, the segment {self._sum.numel()}")
        self._sum.add_(values.reshape(-1))  # bf16 inputs are promoted exactly to fp32 by add_
        self._last = hotkey
        self.hotkeys.append(hotkey)
        self.hashes.append(sha256)
        if proof is not None:
            self.proofs.append(proof)

    @property
    def count(self) -> int:
        return len(self.hotkeys)

    def mean(self, wire_dtype: torch.dtype) -> torch.Tensor:
        if not self.count:
            raise ValueError("no inputs to reduce")
        return self._sum.div_(self.count).to(wire_dtype)


def reduce_slices(slices: list[torch.Tensor], wire_dtype: torch.dtype) -> torch.Tensor:
    """The same reduction over slices already in canonical order (validators, on sampled ranges)."""
    if not slices:
        raise ValueError("no inputs to reduce")
    acc = torch.zeros(slices[0].numel(), dtype=torch.float32)
    for s in slices:
        acc.add_(s.reshape(-1))
    return acc.div_(len(slices)).to(wire_dtype)
