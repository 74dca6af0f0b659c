"""Named tensors to the run's flat vector and back: the one place that fixes the order."""
from __future__ import annotations

from typing import Mapping

import torch

from .spec import RunSpec


def flatten(spec: RunSpec, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Concatenate ``tensors`` in spec order into one fp32 vector; names and shapes must match the spec."""
    names = [t.name for t in spec.tensors]
    if set(tensors) != set(names):
        missing, extra = set(names) - set(tensors), set(tensors) - set(names)
        raise ValueError(f"tensors do not match the run spec: missing {sorted(missing)[:5]}, extra {sorted(extra)[:5]}")
    out = torch.empty(spec.numel, dtype=torch.float32)
    pos = 0
    for t in spec.tensors:
        value = tensors[t.name]
        if tuple(value.shape) != t.shape:
            raise ValueError(f"tensor {t.name!r} has shape {tuple(value.shape)}, the spec says {t.shape}")
        out[pos:pos + t.numel].copy_(value.detach().reshape(-1))
        pos += t.numel
    return out


def unflatten(spec: RunSpec, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Views of ``flat`` shaped as the spec's tensors."""
    if flat.numel() != spec.numel:
        raise ValueError(f"flat vector has {flat.numel()} elements, the spec {spec.numel}")
    out, pos = {}, 0
    for t in spec.tensors:
        out[t.name] = flat[pos:pos + t.numel].view(t.shape)
        pos += t.numel
    return out
