"""Class 2: a hostile endpoint is bounded.

A miner commits its own S3 endpoint on chain, so every other party talks to a server the miner runs. Here that
server is a real HTTP front on 127.0.0.1 (tests/support/hostile_front.py) in front of the embedded S3 server, and it
lies: a listing that never ends, a Content-Length of 10^12, an object listed at 5 TB, answers that never come. Or
the miner commits an endpoint no client can use. Every other role must finish its window on time, with bounded
memory and bytes, and the hostile miner is the only one who pays.
"""
from __future__ import annotations

import asyncio
import time

import pytest
import torch

from mapreduce.directory import BucketLocation
from mapreduce.flat import flatten
from mapreduce.hosting import HostingConfig
from mapreduce.miner import Miner
from mapreduce.peer import Peer, PeerConfig
from mapreduce.scoring import ScoringConfig
from mapreduce.validator import Validator, ValidatorConfig
from tests.support.cluster import PUBLIC_KEYS, peer_gradients
from tests.support.hostile_front import HostileFront

from .test_framing import fp32_bound

CASES = {
    # case: what the front does (or what the miner commits), the reason the validator gives
    "malformed_endpoint": "a commitment whose endpoint no client can use ('http://[::1')",
    "endless_listing": "listings answered IsTruncated=true forever",
    "lying_length": "object GETs answered with Content-Length: 10^12",
    "huge_listed_size": "every object listed at 5 TB",
    "stall": "every answer held back for 60 s",
}


async def join_behind(c, i: int, endpoint: str):
    """Miner ``i`` publishes ``endpoint`` (its own front) as where others reach its bucket."""
    net = c.network(c.signers["miners"][i])
    loc = BucketLocation("miner", c.bucket_of("miners", i), endpoint, *PUBLIC_KEYS)
    await (await net.pool.own_store()).create_bucket(loc.bucket)
    await net.commit(loc)
    return net


@pytest.mark.parametrize("case", sorted(CASES))
async def test_a_hostile_endpoint_costs_only_its_owner(cluster_factory, embedded_s3, tmp_path, hostile,
                                                        case: str) -> None:
    c = await cluster_factory(peers=3, miners=3, redundancy=3, numel=40_000, segments=2, stepped=True)
    with HostileFront(embedded_s3.endpoint_url) as front:
        fast = PeerConfig(fetch_timeout=4.0)
        peers = [Peer(await c.join("peers", i), c.bucket_of("peers", i), fast) for i in range(3)]
        honest = [Miner(await c.join("miners", i), c.bucket_of("miners", i)) for i in range(2)]
        bucket = c.bucket_of("miners", 2)
        if case == "malformed_endpoint":
            signer = c.signers["miners"][2]
            c.chain.commit(signer.keypair, f"mr1|m|{bucket}|http://[::1|{PUBLIC_KEYS[0]}|{PUBLIC_KEYS[1]}")
            hostile_miner = None
        else:
            hostile_miner = Miner(await join_behind(c, 2, front.endpoint_url), bucket)
            {"endless_listing": lambda: front.endless_listing(where=bucket, junk_keys=1000),
             "lying_length": lambda: front.lie_content_length(where=bucket),
             "huge_listed_size": lambda: front.listing_size(5 * 10**12, where=bucket),
             "stall": lambda: front.stall(60, where=bucket)}[case]()
        vnet = await c.join("validators", 0, own_pool=True)
        validator = Validator(vnet, c.bucket_of("validators", 0), tmp_path / "v.json", ValidatorConfig(
            segments_per_miner=4, list_timeout=2.0, check_timeout=4.0, scoring=ScoringConfig(weights_every=1),
            hosting=HostingConfig(list_timeout=2.0, check_timeout=4.0)))
        grads = peer_gradients(c.spec, 3, seed=21)
        window = await c.next_window()
        started = time.monotonic()
        miners = honest + ([hostile_miner] if hostile_miner else [])
        # The chain waits for the honest miners' outputs; for inputs to the hostile bucket only if peers can write
        # there (a stalling front holds their uploads too).
        drive = c.drive(window, validator=True, miners=[m.net.hotkey for m in honest],
                        unreachable=[c.signers["miners"][2].hotkey] if case == "stall" else ())
        results = await asyncio.gather(*(p.allreduce(g, window=window) for p, g in zip(peers, grads)),
                                       *(m.run_window(window) for m in miners), validator.validate_window(window),
                                       drive, return_exceptions=True)
        seconds = time.monotonic() - started
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    assert not results[-1], f"the work of phases {results[-1]} never finished"
    peer_results, report = results[:3], results[-2]
    # The window's work, then the checks with their time bounds (a few seconds each here): far below the 60 s the
    # stalling front holds each answer.
    assert seconds < 40, f"the window took {seconds:.1f}s"
    mean = torch.stack([flatten(c.spec, g).double() for g in grads]).mean(0)
    for r in peer_results:
        assert not r.fallbacks
        assert float((r.flat.double() - mean).abs().max()) <= fp32_bound(grads)
    bad = c.signers["miners"][2].hotkey
    if hostile_miner is None:
        assert bad not in report.scores, "a miner with an unusable endpoint is no participant"
        outcome = "it is no participant (its commitment is invalid): not in any plan"
        reason = "commitment refused when the directory is read"
    else:
        assert report.scores.get(bad) == 0.0, report.table()
        reasons = sorted({ch.reason for ch in report.checks if ch.miner == bad})
        outcome = "peers use the other replicas; the validator scores the miner 0 within its time bounds"
        reason = reasons[0]
    assert all(report.scores[m.net.hotkey] > 0.5 for m in honest), report.table()
    received = vnet.pool.stats.snapshot().bytes_received
    assert received < 4 << 20, f"the validator downloaded {received} bytes"
    hostile(f"endpoint: {case.replace('_', ' ')}", f"a miner's own S3 front: {CASES[case]}",
            f"{outcome}; window done in {seconds:.1f}s, validator read {received / 1024:.0f} KiB", reason)
