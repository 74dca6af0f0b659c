"""The chain behind one small interface: blocks, hashes, registered neurons, commitments and weights.

``LocalChain`` is an embedded chain in one SQLite file for development and the local swarm; ``SubtensorChain`` is
a real Bittensor chain through the SDK. ``SubtensorChain`` is imported on first use, so processes on the local
chain never pay for importing ``bittensor``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .base import MAX_COMMITMENT_BYTES, Chain, ChainError, ChainTimeout, Neuron, Signer
from .local import LocalChain, SignedCall

if TYPE_CHECKING:
    from .subtensor import SubtensorChain

__all__ = [
    "MAX_COMMITMENT_BYTES",
    "Chain",
    "ChainError",
    "ChainTimeout",
    "LocalChain",
    "Neuron",
    "SignedCall",
    "Signer",
    "SubtensorChain",
]


def __getattr__(name: str):
    if name == "SubtensorChain":
        from .subtensor import SubtensorChain

        return SubtensorChain
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
