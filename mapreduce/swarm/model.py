"""The swarm's model and the two halves of a training step (swarm/trainer.py): the local gradient, then the
averaged gradient's optimizer step.

A small MLP classifies scikit-learn's 8x8 digits (swarm/data.py): 64 inputs, 10 classes.
"""
from __future__ import annotations

import torch
from torch import nn


def make_model(dim: int = 64, hidden: int = 128, classes: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)  # every peer starts from the same weights
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, classes))


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    # The single-tensor implementation, named rather than left to torch's default: every peer takes the same
    # arithmetic path, whatever a future default picks.
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
