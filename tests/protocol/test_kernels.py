"""A Network initialises torch's math kernels (VML) in its own thread before any work: their first calls race when
threads make them at once (mapreduce/kernels.py; measured by ``python -m bench.kernels``)."""
from __future__ import annotations

import torch

from mapreduce import kernels
from mapreduce.network import Network
from mapreduce.wire.signing import Signer


async def test_a_network_warms_the_math_kernels_before_any_work(cluster_factory, monkeypatch) -> None:
    c = await cluster_factory(peers=1, miners=1, store="memory", stepped=True)
    monkeypatch.setattr(kernels, "_done", False)  # as in a fresh process
    calls: list[str] = []
    real_sqrt = torch.sqrt
    monkeypatch.setattr(torch, "sqrt", lambda x: calls.append(str(x.dtype)) or real_sqrt(x))
    Network(c.spec, c.chain, Signer.from_uri("//kernels"), c.pool)
    # sqrt (the first VML call of Adam's first step) was made, in both float types, on a tensor small enough to
    # run in this thread alone (below the kernels' 2048-element grain), so the warm-up cannot race itself
    assert calls == ["torch.float32", "torch.float64"]
    assert kernels.SERIAL_ELEMENTS < 2048
    assert kernels.warm_math_kernels() is False, "warmed once per process, not per network"
