"""The averaged gradient equals torch.distributed's all_reduce (gloo, 127.0.0.1) divided by P.

Both sum P fp32 tensors, in different orders, so they may differ by rounding: each is within
(P + 1) * 2^-24 * max|g| of the exact mean (see mapreduce.swarm.orchestrator.tolerance), so they are within twice
that of each other. The test asserts that bound, and that the difference is not zero by accident of equal inputs.
"""
from __future__ import annotations

import asyncio
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mapreduce.flat import flatten
from mapreduce.miner import Miner
from mapreduce.peer import Peer

from tests.support.cluster import peer_gradients

P = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gloo_worker(rank: int, port: int, flats: torch.Tensor, out: torch.Tensor) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=P, init_method=f"tcp://127.0.0.1:{port}")
    t = flats[rank].clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    out[rank].copy_(t / P)
    dist.destroy_process_group()


def gloo_mean(flats: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(flats).share_memory_()
    mp.spawn(_gloo_worker, args=(_free_port(), flats.share_memory_(), out), nprocs=P, join=True)
    assert all(torch.equal(out[0], out[i]) for i in range(P))
    return out[0]


async def test_average_matches_gloo_all_reduce(cluster_factory) -> None:
    c = await cluster_factory(peers=P, miners=2, stepped=True)
    peers = [Peer(await c.join("peers", i), c.bucket_of("peers", i)) for i in range(P)]
    miners = [Miner(await c.join("miners", i), c.bucket_of("miners", i)) for i in range(2)]
    grads = peer_gradients(c.spec, P, seed=3)
    flats = torch.stack([flatten(c.spec, g) for g in grads])
    reference = await asyncio.to_thread(gloo_mean, flats.clone())
    window = await c.next_window()
    results = await asyncio.gather(*(p.allreduce(g, window=window) for p, g in zip(peers, grads)),
                                   *(m.run_window(window) for m in miners), c.drive(window))
    assert not results.pop(), "the driver gave up waiting for the window's work"
    bound = 2 * (P + 1) * 2.0 ** -24 * float(flats.abs().max())
    for r in results[:P]:
        assert not r.fallbacks
        diff = float((r.flat - reference).abs().max())
        assert diff <= bound, f"{diff} > {bound}"
    exact = flats.double().mean(0)
    assert float((results[0].flat.double() - exact).abs().max()) <= bound / 2
