"""Class 10: no party's clock decides for another.

A miner's own S3 front can stamp any ``Last-Modified``. Here it stamps one peer's inputs an hour in the future and
leaves them out of its outputs, as late. The validator's own evidence (the inputs it saw in the bucket before the
deadline, by its own clock) and the peer's (its uploads had landed before the deadline, by its own clock) must
outweigh the miner's server: the validator scores the miner down, the victim refuses its outputs, and an impossible
stamp (one from the future) condemns the server that made it and makes nothing late.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time

import torch

from mapreduce.directory import BucketLocation
from mapreduce.flat import flatten
from mapreduce.miner import Miner
from mapreduce.network import StorePool
from mapreduce.peer import Peer, PeerConfig
from mapreduce.scoring import ScoringConfig
from mapreduce.validator import Validator, ValidatorConfig
from tests.faults.adversaries import AdversarialMiner
from tests.support.cluster import PUBLIC_KEYS, peer_gradients
from tests.support.hostile_front import HostileFront

from .test_framing import fp32_bound


async def test_a_miners_clock_decides_nothing_for_others(cluster_factory, embedded_s3, tmp_path, hostile) -> None:
    # One replica per segment: each miner holds one of the two segments, so nobody can route around the liar.
    c = await cluster_factory(peers=3, miners=2, redundancy=1, numel=20_000, segments=2, stepped=True)
    with HostileFront(embedded_s3.endpoint_url) as front:
        peers = [Peer(await c.join("peers", i), c.bucket_of("peers", i), PeerConfig(fetch_timeout=3.0))
                 for i in range(3)]
        honest = Miner(await c.join("miners", 0), c.bucket_of("miners", 0))
        # The liar reaches its own bucket through its own front too: it sees (and believes) the stamps it makes.
        behind = dataclasses.replace(c.pool.default, endpoint_url=front.endpoint_url)
        net = c.network(c.signers["miners"][1], StorePool(behind, c.pool.transfer, c.pool.retry))
        bucket = c.bucket_of("miners", 1)
        await (await net.pool.own_store()).create_bucket(bucket)
        await net.commit(BucketLocation("miner", bucket, front.endpoint_url, *PUBLIC_KEYS))
        victim = peers[0].hotkey
        liar = AdversarialMiner(net, bucket, behaviour="omits_victims", victim_hotkeys=[victim])
        front.last_modified(time.time() + 3600, where=victim)
        validator = Validator(await c.join("validators", 0), c.bucket_of("validators", 0), tmp_path / "v.json",
                              ValidatorConfig(segments_per_miner=2, scoring=ScoringConfig(weights_every=1)))
        grads = peer_gradients(c.spec, 3, seed=31)
        window = await c.next_window()
        results = await asyncio.gather(*(p.allreduce(g, window=window) for p, g in zip(peers, grads)),
                                       honest.run_window(window), liar.run_window(window),
                                       validator.validate_window(window), c.drive(window, validator=True))
    peer_results, liar_report, report = results[:3], results[4], results[-2]
    assert not results[-1], f"the work of phases {results[-1]} never finished"
    assert [o.inputs for o in liar_report.outcomes] == [2], liar_report.line()  # the victim left out
    mean = torch.stack([flatten(c.spec, g).double() for g in grads]).mean(0)
    for r in peer_results:
        # the liar's segment: refused by everyone, so every peer reduced it itself, with all three inputs
        assert sorted((s.source, s.count) for s in r.segments) == [("replica", 3), ("self-reduced", 3)], r.segments
        assert float((r.flat.double() - mean).abs().max()) <= fp32_bound(grads)
    assert all(s.included_self for s in peer_results[0].segments)
    assert peer_results[0].rejected["omits_own_input"] == 1  # the victim, on its own evidence
    assert all(r.rejected["wrong_output"] >= 1 for r in peer_results[1:])  # the others: a stamp from the future
    assert report.scores[liar.net.hotkey] < 0.5 * report.scores[honest.net.hotkey], report.table()
    reasons = sorted({ch.reason for ch in report.checks if ch.miner == liar.net.hotkey})
    hostile("lying clock", "a miner's own front stamped one peer's inputs an hour in the future and left them out as "
            "late", "the validator (which saw them before the deadline) scores it down; the victim refuses its "
            "outputs (its uploads had landed before the deadline), the other peers too (a stamp from the future); "
            "each reduces that segment itself, with every input",
            reasons[0])
