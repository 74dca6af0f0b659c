"""Peers, miners and a validator through whole windows, on an in-memory S3 and a stepped local chain: the test
produces each window's blocks as its work is done (``Cluster.drive``, tests/support/driver.py), so no role races
the wall clock and no test idles until a deadline."""
from __future__ import annotations

import asyncio

import pytest
import torch

from mapreduce.flat import flatten
from mapreduce.miner import Miner
from mapreduce.peer import Peer, PeerConfig
from mapreduce.plan import segment_bounds
from mapreduce.wire.signing import Signer
from mapreduce.validator import Validator, ValidatorConfig
from mapreduce.scoring import ScoringConfig

from tests.support.plant import plant_input
from tests.support.cluster import peer_gradients

def fp32_bound(grads: list[dict[str, torch.Tensor]]) -> float:
    scale = max(float(t.abs().max()) for g in grads for t in g.values())
    return (len(grads) + 1) * 2.0 ** -24 * scale


async def join_all(c, peer_fallback: str = "reduce"):
    peers = [Peer(await c.join("peers", i), c.bucket_of("peers", i), PeerConfig(fallback=peer_fallback))
             for i in range(len(c.signers["peers"]))]
    miners = [Miner(await c.join("miners", i), c.bucket_of("miners", i)) for i in range(len(c.signers["miners"]))]
    return peers, miners


async def test_one_window_end_to_end(cluster_factory, tmp_path) -> None:
    c = await cluster_factory(peers=3, miners=2, numel=400_000, store="memory", stepped=True)
    peers, miners = await join_all(c)
    vnet = await c.join("validators", 0)
    validator = Validator(vnet, c.bucket_of("validators", 0), tmp_path / "v.json",
                          ValidatorConfig(scoring=ScoringConfig(weights_every=1)))
    grads = peer_gradients(c.spec, 3)
    window = await c.next_window()
    results = await asyncio.gather(*(p.allreduce(g, window=window) for p, g in zip(peers, grads)),
                                   *(m.run_window(window) for m in miners), validator.validate_window(window),
                                   c.drive(window, validator=True))
    peer_results, miner_reports, report = results[:3], results[3:5], results[5]

    mean = torch.stack([flatten(c.spec, g).double() for g in grads]).mean(0)
    for r in peer_results:
        assert float((r.flat.double() - mean).abs().max()) <= fp32_bound(grads)
        assert [s.source for s in r.segments] == ["replica"] * c.spec.segments
        assert all(s.included_self and s.count == 3 for s in r.segments)
        assert not r.rejected
    # redundancy 2 over 2 miners: each miner reduces every segment
    for m in miner_reports:
        assert [o.status for o in m.outcomes] == ["written"] * c.spec.segments
        assert all(o.inputs == 3 for o in m.outcomes) and m.on_time and not m.rejected
    assert report.checks and all(ch.status == "ok" and ch.difference == 0.0 for ch in report.checks)
    assert all(ch.expected == ch.included_expected == 3 for ch in report.checks)
    assert set(report.scores) == {s.hotkey for s in c.signers["miners"]}
    assert min(report.scores.values()) > 0.75
    # ranged reads: downloading the outputs and their 3 inputs whole would be 4x the output bytes
    assert 0 < report.bytes_fetched < 0.25 * 4 * report.output_bytes_checked
    assert report.weights_set
    vuid = c.chain.neurons()[[n.hotkey for n in c.chain.neurons()].index(vnet.hotkey)].uid
    assert sum(c.chain.weights()[vuid].values()) == pytest.approx(1.0)
    # the validator's state survived to disk
    again = Validator(vnet, c.bucket_of("validators", 0), tmp_path / "v.json")
    assert again.board.last_window == window and again.board.ema == validator.board.ema


async def test_miner_excludes_bad_inputs_and_counts_them(cluster_factory) -> None:
    c = await cluster_factory(peers=3, miners=1, redundancy=1, extra_registered=1, store="memory", stepped=True)
    peers, miners = await join_all(c)
    outsider = Signer.from_uri("//never-registered")
    registered_outsider = c.signers["outsiders"][0]  # registered on chain but not a committed peer
    grads = peer_gradients(c.spec, 3, seed=5)
    window = await c.next_window()
    driving = c.drive(window)
    await c.nets[0].wait_for_block(c.spec.windows.phases(window).start_block)
    miner_hotkey = miners[0].net.hotkey
    bucket = await miners[0].net.bucket(window, miner_hotkey)
    seg = segment_bounds(c.spec.numel, c.spec.segments)[0]

    async def plant(signer: Signer, values: torch.Tensor) -> None:
        # A tag that sorts before (almost) any other: when a peer wrote twice, its first key in key order counts.
        await plant_input(bucket, c.spec.run_id, window, seg.index, signer, values,
                          tag_filter=lambda t: t.startswith("000"))

    nan = torch.randn(seg.numel)
    nan[3] = float("nan")
    await asyncio.gather(
        plant(peers[2].net.signer, nan),  # a registered peer sending NaN: its honest upload comes later, under a
        plant(outsider, torch.randn(seg.numel)),  # key that sorts after this one
        plant(registered_outsider, torch.randn(seg.numel)),
        plant(peers[1].net.signer, torch.randn(seg.numel + 1)),
    )
    results = await asyncio.gather(peers[0].allreduce(grads[0], window=window),
                                   peers[1].allreduce(grads[1], window=window),
                                   peers[2].allreduce(grads[2], window=window),
                                   miners[0].run_window(window), driving, return_exceptions=True)
    report = results[3]
    assert not isinstance(report, BaseException), report
    assert report.rejected["non_finite"] == 1, report.line()
    assert report.rejected["unknown_hotkey"] == 2
    assert report.rejected["shape_mismatch"] == 1
    by_seg = {o.segment: o for o in report.outcomes}
    assert by_seg[seg.index].inputs == 1  # only peer 0's input of segment 0 was valid
    assert all(by_seg[s].inputs == 3 for s in range(1, c.spec.segments))
    r0 = results[0]
    # segment 0 averages only peer 0's own input; every other segment the three peers
    want = flatten(c.spec, grads[0])[seg.start:seg.end]
    assert torch.allclose(r0.flat[seg.start:seg.end], want)
    mean = torch.stack([flatten(c.spec, g) for g in grads]).mean(0)
    assert torch.allclose(r0.flat[seg.end:], mean[seg.end:], atol=1e-6)


@pytest.mark.parametrize("fallback", ["reduce", "own"])
async def test_peers_finish_the_window_without_miners(cluster_factory, fallback: str) -> None:
    c = await cluster_factory(peers=2, miners=2, store="memory", stepped=True)
    peers, miners = await join_all(c, peer_fallback=fallback)
    grads = peer_gradients(c.spec, 2, seed=9)
    window = await c.next_window()
    # no miner runs this window
    results = await asyncio.gather(*(p.allreduce(g, window=window) for p, g in zip(peers, grads)),
                                   c.drive(window, miners=()))
    mean = torch.stack([flatten(c.spec, g).double() for g in grads]).mean(0)
    for r, g in zip(results, grads):
        if fallback == "reduce":
            assert {s.source for s in r.segments} == {"self-reduced"}
            assert float((r.flat.double() - mean).abs().max()) <= fp32_bound(grads)
        else:
            assert {s.source for s in r.segments} == {"own"}
            assert torch.equal(r.flat, flatten(c.spec, g))


async def test_a_peer_the_run_excludes_is_told_so_clearly(cluster_factory) -> None:
    import dataclasses

    from mapreduce.errors import NotAParticipant
    from mapreduce.network import Network

    c = await cluster_factory(peers=1, miners=1, store="memory", stepped=True)
    await c.join("miners", 0)
    signer = c.signers["peers"][0]
    denied = dataclasses.replace(c.spec, deny_hotkeys=(signer.hotkey,))
    peer = Peer(Network(denied, c.chain, signer, c.pool, chain_poll=0.02), c.bucket_of("peers", 0))
    await peer.setup()
    window = await c.next_window()
    c.drive(window, peers=(), miners=())  # the peer is refused at the window's first block
    with pytest.raises(NotAParticipant, match="deny list"):
        await peer.allreduce(peer_gradients(c.spec, 1)[0], window=window)
