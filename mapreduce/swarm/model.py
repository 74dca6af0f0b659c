"""The swarm's training task: a small MLP classifying points of a generated Gaussian mixture.

The data is generated from a fixed seed (nothing is downloaded): ``classes`` clusters in ``dim`` dimensions. Each
peer draws its own shard (its own seed), so peers' gradients differ and averaging them matters.
"""
from __future__ import annotations

import torch
from torch import nn


def make_model(dim: int = 32, hidden: int = 128, classes: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)  # every peer starts from the same weights
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, classes))


class Mixture:
    """Labelled points around fixed class centres; the same centres for every peer."""

    def __init__(self, dim: int = 32, classes: int = 10, spread: float = 1.5, seed: int = 1234):
        g = torch.Generator().manual_seed(seed)
        self.centres = torch.randn(classes, dim, generator=g) * 2.0
        self.dim, self.classes, self.spread = dim, classes, spread

    def batch(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, self.classes, (n,), generator=generator)
        x = self.centres[y] + self.spread * torch.randn(n, self.dim, generator=generator)
        return x, y
