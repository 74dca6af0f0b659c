"""The local swarm's training task, in this process: scikit-learn's digits split into a test set and per-peer shards."""
from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from mapreduce.swarm.data import FEATURES, Digits
from mapreduce.swarm.model import make_model


def test_digits_load_without_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the digits tried to open a connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    digits = Digits(peers=4)
    assert digits.test[0].shape == (360, FEATURES)  # a fifth of 1,797


def test_test_set_and_shards_are_disjoint_and_cover_every_image() -> None:
    digits = Digits(peers=4)
    parts = [digits.test_indices, *digits.shard_indices]
    together = np.concatenate(parts)
    assert len(together) == len(set(together.tolist())) == 1797
    assert [len(s) for s in digits.shard_indices] == [360, 359, 359, 359]
    assert all(len(np.unique(y)) == 10 for _, y in digits.shards)  # each shard sees every class
    # stratified: each class's share of the test set is within one image of its share of the whole
    every_label = np.concatenate([digits.test[1].numpy(), *(y.numpy() for _, y in digits.shards)])
    assert np.abs(np.bincount(digits.test[1].numpy()) - 0.2 * np.bincount(every_label)).max() <= 1
    for x, _ in [digits.test, *digits.shards]:
        assert x.dtype == torch.float32 and float(x.min()) == 0.0 and float(x.max()) == 1.0


def test_the_split_is_the_same_in_every_process() -> None:
    a, b = Digits(peers=3), Digits(peers=3)
    assert np.array_equal(a.test_indices, b.test_indices)
    assert all(np.array_equal(x, y) for x, y in zip(a.shard_indices, b.shard_indices))


def test_batches_replay_per_peer_and_differ_between_peers() -> None:
    digits = Digits(peers=4)
    first, again, other = digits.batches(1, 64), digits.batches(1, 64), digits.batches(2, 64)
    for _ in range(3):
        (x1, y1), (x2, y2), (x3, _) = next(first), next(again), next(other)
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
        assert not torch.equal(x1, x3)
    # a batch larger than the shard is the whole shard, shuffled
    x, _ = next(digits.batches(0, 10_000))
    assert len(x) == len(digits.shards[0][0])


def test_an_untrained_model_is_at_chance_on_the_test_set() -> None:
    loss, accuracy = Digits(peers=4).evaluate(make_model())
    assert 2.0 < loss < 2.6 and accuracy < 0.25  # ten classes: ln 10 = 2.30, a tenth right
