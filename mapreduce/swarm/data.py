"""The swarm's dataset: scikit-learn's handwritten digits, a held-out test set and one training shard per peer.

``sklearn.datasets.load_digits`` reads 1,797 8x8 images (10 classes, pixels 0..16) from a file inside the
scikit-learn wheel: nothing is downloaded at run time. A fixed, stratified fifth is held out for
testing; the rest is shuffled with a fixed seed and cut into one disjoint shard per peer, so peers' gradients
differ and averaging them matters. Every process that builds ``Digits(peers)`` gets the same split: the peers, and
the swarm's orchestrator when it replays the run on one machine (swarm/replay.py).
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

FEATURES = 64  # 8x8 pixels: the model's input dimension
CLASSES = 10
TEST_SHARE = 0.2
SPLIT_SEED = 0  # the test/train split and the cut into shards
BATCH_SEED = 1000  # peer i draws its batches from a generator seeded 1000 + i


class Digits:
    """The test set and ``peers`` disjoint training shards, as float32 tensors with pixels scaled to 0..1;
    ``test_indices`` and ``shard_indices`` say which of ``load_digits``' images each holds."""

    def __init__(self, peers: int):
        if peers < 1:
            raise ValueError(f"the digits need at least one peer to shard the training set for, not {peers}")
        images, labels = load_digits(return_X_y=True)
        x = (images / 16.0).astype(np.float32)  # pixels are 0..16
        train, self.test_indices = train_test_split(np.arange(len(labels)), test_size=TEST_SHARE, stratify=labels,
                                                    random_state=SPLIT_SEED)
        if len(train) < peers:
            raise ValueError(f"{len(train)} training images cannot make {peers} non-empty shards")
        order = np.random.default_rng(SPLIT_SEED).permutation(len(train))
        self.shard_indices = [train[part] for part in np.array_split(order, peers)]
        self.test = (torch.from_numpy(x[self.test_indices]), torch.from_numpy(labels[self.test_indices]).long())
        self.shards = [(torch.from_numpy(x[i]), torch.from_numpy(labels[i]).long()) for i in self.shard_indices]

    def batches(self, peer: int, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Peer ``peer``'s batches, one per window: ``size`` distinct examples of its shard (all of it when the shard
        is smaller). A generator seeded by the peer's index alone, so a replay draws the same batches in the same
        order."""
        x, y = self.shards[peer]
        generator = torch.Generator().manual_seed(BATCH_SEED + peer)
        while True:
            chosen = torch.randperm(len(x), generator=generator)[:size]
            yield x[chosen], y[chosen]

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> tuple[float, float]:
        """(cross-entropy loss, accuracy) of ``model`` on the held-out test set."""
        x, y = self.test
        logits = model(x)
        return float(nn.functional.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())
