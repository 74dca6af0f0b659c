"""Class 7: a miner that stops loses its weight.

A miner works two windows, then stops and makes its bucket unlistable (its own front answers every listing with
403) while peers keep uploading to it, as their signed records show. Scores of miners the validator cannot check
must not stand still: a plan miner that produces nothing checkable scores 0, and its weight falls below 5% within a
stated number of windows (five, with the default EMA: 0.3 * score + 0.7 * ema).
"""
from __future__ import annotations

import asyncio

from mapreduce.hosting import HostingConfig
from mapreduce.miner import Miner
from mapreduce.peer import Peer, PeerConfig
from mapreduce.scoring import ScoringConfig
from mapreduce.validator import Validator, ValidatorConfig
from tests.support.cluster import peer_gradients
from tests.support.hostile_front import HostileFront

from .test_endpoints import join_behind

WORKING, STOPPED = 2, 5


async def test_a_miner_that_stops_loses_its_weight(cluster_factory, embedded_s3, tmp_path, hostile) -> None:
    c = await cluster_factory(peers=3, miners=3, redundancy=3, numel=20_000, segments=2, stepped=True)
    with HostileFront(embedded_s3.endpoint_url) as front:
        peers = [Peer(await c.join("peers", i), c.bucket_of("peers", i), PeerConfig(fetch_timeout=2.0))
                 for i in range(3)]
        miners = [Miner(await c.join("miners", i), c.bucket_of("miners", i)) for i in range(2)]
        quitter = Miner(await join_behind(c, 2, front.endpoint_url), c.bucket_of("miners", 2))
        validator = Validator(await c.join("validators", 0), c.bucket_of("validators", 0), tmp_path / "v.json",
                              ValidatorConfig(list_timeout=2.0, check_timeout=4.0,
                                              scoring=ScoringConfig(weights_every=1),
                                              hosting=HostingConfig(list_timeout=2.0, check_timeout=4.0)))
        uids = {n.hotkey: n.uid for n in c.chain.neurons()}
        miner_uids = {h: uids[h] for h in (m.net.hotkey for m in miners + [quitter])}
        share, scores, uploaded = [], [], []
        window = await c.next_window()
        for n in range(WORKING + STOPPED):
            working = n < WORKING
            if not working:
                front.refuse_listing(where=c.bucket_of("miners", 2))
            roles = [m.run_window(window) for m in (miners + [quitter] if working else miners)]
            # The chain moves on as the work is done (tests/support/driver.py); it waits for the quitter's outputs
            # only while it works.
            drive = c.drive(window, validator=True, miners=[m.net.hotkey for m in (miners + [quitter] if working
                                                                                  else miners)])
            results = await asyncio.gather(*(p.allreduce(g, window=window)
                                             for p, g in zip(peers, peer_gradients(c.spec, 3, seed=n))),
                                           *roles, validator.validate_window(window), drive)
            assert not results[-1], f"window {n}: the work of phases {results[-1]} never finished"
            report = results[-2]
            uploaded.append(all(quitter.net.hotkey in r.receipt.stored_at.get(0, []) for r in results[:3]))
            u, w = validator.board.weights(miner_uids)
            share.append(dict(zip(u, w)).get(miner_uids[quitter.net.hotkey], 0.0))
            scores.append(report.scores.get(quitter.net.hotkey))
            window += 2  # every other window: one window's validation never overlaps the next one's uploads
    assert all(uploaded), "peers kept uploading to the quitter: their records show it"
    assert all(s > 0.5 for s in scores[:WORKING]), scores
    assert scores[WORKING:] == [0.0] * STOPPED, scores
    assert share[-1] < 0.05, share
    hostile("a miner stops", f"a miner worked {WORKING} windows, then stopped and made its bucket unlistable while "
            "peers kept uploading to it", f"it scores 0 each window it cannot be checked; its weight "
            f"{share[WORKING - 1]:.2f} -> {share[-1]:.3f} after {STOPPED} windows",
            "missing (bucket unreadable)")
