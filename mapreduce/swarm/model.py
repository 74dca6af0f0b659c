"""The swarm's model and the two halves of a training step, shared by the peers (swarm/trainer.py) and by the
single-process replay of their run (swarm/replay.py), so that both compute with the same code.

A small MLP classifies scikit-learn's 8x8 digits (swarm/data.py): 64 inputs, 10 classes.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

# The peers and the replay both compute with this many torch threads, so that a matrix product's sums are split
# the same way in both, whatever the machine's cores: then both get the same bits (swarm/replay.py).
TORCH_THREADS = 1


def make_model(dim: int = 64, hidden: int = 128, classes: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)  # every peer starts from the same weights
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, classes))


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    # The single-tensor implementation, named rather than left to torch's default: the replay must take the same
    # arithmetic path as the peers, whatever a future default picks.
    return torch.optim.Adam(model.parameters(), lr=lr, foreach=False)


def local_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    """The cross-entropy loss on one batch and its gradient, left in every parameter's ``.grad`` (the dict holds
    those very tensors, by name)."""
    model.zero_grad()  # set to None: backward makes fresh gradients
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    # a plain number: float() of a tensor that requires grad warns
    return loss.item(), {name: p.grad for name, p in model.named_parameters()}


def apply_average(model: nn.Module, optimizer: torch.optim.Optimizer, averaged: dict[str, torch.Tensor]) -> None:
    """Replace every gradient with the average and take the optimizer step."""
    for name, p in model.named_parameters():
        p.grad.copy_(averaged[name])
    optimizer.step()


@contextmanager
def torch_threads(n: int = TORCH_THREADS) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` for the block, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
