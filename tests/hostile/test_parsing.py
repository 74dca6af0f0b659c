"""Class 1: parsing never throws anything untyped, and a role's window survives a bad object.

Each hostile object here is a few KiB of JSON nested thousands deep, the parser's recursion limit; it is placed
where each role will read it: an input's header, an output's input list, an upload record, a broadcast record, a
validator's report. Every role must finish its window with the object refused under a reason, the honest
parties unharmed.
"""
from __future__ import annotations

import asyncio

import pytest
import torch

from mapreduce.broadcast import Broadcaster
from mapreduce.wire.broadcast_record import spec_fingerprint
from mapreduce.errors import BroadcastFailed
from mapreduce.flat import flatten
from mapreduce.miner import Miner, Produced
from mapreduce.peer import Peer
from mapreduce.scoring import ScoringConfig
from mapreduce.trust import trusted_scores
from mapreduce.validator import Validator, ValidatorConfig
from tests.support.cluster import peer_gradients

from . import attacks


def fp32_bound(grads) -> float:
    return (len(grads) + 1) * 2.0 ** -24 * max(float(t.abs().max()) for g in grads for t in g.values())


def exact_mean(spec, grads) -> torch.Tensor:
    return torch.stack([flatten(spec, g).double() for g in grads]).mean(0)


def drive_honest(c, window: int, peers: list[Peer]):
    """Produce ``window``'s blocks as the honest peers' and every miner's work is done (tests/support/driver.py):
    the hostile peer uploads nothing the chain should wait for."""
    return c.drive(window, validator=True, peers=[p.net.hotkey for p in peers])


async def setup(c, tmp_path, peers: int = 2, miners: int = 2, miner_cls=Miner, **miner_kw):
    honest = [Peer(await c.join("peers", i), c.bucket_of("peers", i)) for i in range(peers)]
    hostile_net = await c.join("peers", peers)  # a registered, committed peer that attacks
    ms = [Miner(await c.join("miners", i), c.bucket_of("miners", i)) for i in range(miners - 1)]
    ms.append(miner_cls(await c.join("miners", miners - 1), c.bucket_of("miners", miners - 1), **miner_kw))
    validator = Validator(await c.join("validators", 0), c.bucket_of("validators", 0), tmp_path / "v.json",
                          ValidatorConfig(segments_per_miner=4, scoring=ScoringConfig(weights_every=1)))
    return honest, hostile_net, ms, validator


async def test_a_nested_input_header_stops_no_role(cluster_factory, tmp_path, hostile) -> None:
    c = await cluster_factory(peers=3, miners=2, stepped=True, numel=40_000, segments=2)
    peers, bad, miners, validator = await setup(c, tmp_path)
    grads = peer_gradients(c.spec, 2, seed=3)
    window = await c.next_window()
    drive = drive_honest(c, window, peers)
    await bad.wait_for_block(c.spec.windows.phases(window).start_block)
    plan = await bad.plan(window)
    for seg in plan.segments:
        for miner in plan.miners_for(seg.index):
            await attacks.put_raw(bad, miner, window,
                                  attacks.input_key(bad.signer, c.spec.run_id, window, seg.index, miner),
                                  attacks.nested_header_object())
    results = await asyncio.gather(*(p.allreduce(g, window=window) for p, g in zip(peers, grads)),
                                   *(m.run_window(window) for m in miners), validator.validate_window(window),
                                   drive, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    *peer_results, m0, m1, report, timed_out = results
    assert not timed_out, timed_out
    for r in peer_results:
        assert float((r.flat.double() - exact_mean(c.spec, grads)).abs().max()) <= fp32_bound(grads)
        assert not r.fallbacks
    for m in (m0, m1):
        assert m.rejected["malformed_header"] == len(m.outcomes), m.rejected
        assert all(o.status == "written" and o.inputs == 2 for o in m.outcomes)
    assert report.checks and all(ch.status == "ok" for ch in report.checks), [ch.reason for ch in report.checks]
    assert report.rejected.get("malformed_header", 0) >= 1
    hostile("parse: input header", "a registered peer wrote inputs whose header nests JSON 5,000 deep",
            "miners drop them and reduce the rest; the validator scores the miners as usual; peers get the exact "
            "mean", "malformed_header")


class NestedListMiner(Miner):
    """Signs outputs whose ``inputs`` list is JSON nested 5,000 deep."""

    async def publish(self, window, seg, bucket, produced: Produced, write_once: bool = True, is_ours=None) -> str:
        body = attacks.signed(self.net.signer, self.net.spec.run_id, window, "out", seg.index,
                              {"data": produced.mean, "proof": produced.proof.transpose(0, 1).contiguous()},
                              inputs=attacks.nested_json(), count=str(len(produced.inputs)))
        key = attacks.output_key(self.net.spec.run_id, window, seg.index, self.net.hotkey)
        await bucket.store.put(bucket.name, key, body)
        return "written"


async def test_a_nested_output_input_list_stops_no_role(cluster_factory, tmp_path, hostile) -> None:
    c = await cluster_factory(peers=3, miners=3, redundancy=3, stepped=True, numel=40_000, segments=2)
    peers, _, miners, validator = await setup(c, tmp_path, miners=3, miner_cls=NestedListMiner)
    cheat = miners[-1].net.hotkey
    grads = peer_gradients(c.spec, 2, seed=4)
    window = await c.next_window()
    results = await asyncio.gather(*(p.allreduce(g, window=window) for p, g in zip(peers, grads)),
                                   *(m.run_window(window) for m in miners), validator.validate_window(window),
                                   drive_honest(c, window, peers), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    peer_results, report = results[:2], results[-2]
    assert not results[-1], results[-1]
    for r in peer_results:
        assert float((r.flat.double() - exact_mean(c.spec, grads)).abs().max()) <= fp32_bound(grads)
        assert all(s.miner != cheat for s in r.segments)
    assert report.scores[cheat] == 0.0
    assert all("input list nests too deeply" in ch.reason for ch in report.checks if ch.miner == cheat), \
        [ch.reason for ch in report.checks if ch.miner == cheat]
    # (a peer reads the cheater's output only when the plan lists it before an honest replica: no count asserted)
    assert min(v for k, v in report.scores.items() if k != cheat) > 0.5
    hostile("parse: output input list", "a miner signed outputs whose input list nests JSON 5,000 deep",
            "peers refuse them and take another replica; the validator scores that miner 0", "wrong_output")


async def test_a_nested_upload_record_stops_no_peer(cluster_factory, tmp_path, hostile) -> None:
    c = await cluster_factory(peers=3, miners=2, stepped=True, numel=40_000, segments=2)
    peers, bad, miners, validator = await setup(c, tmp_path)
    grads = peer_gradients(c.spec, 2, seed=5)
    window = await c.next_window()
    record = attacks.signed(bad.signer, c.spec.run_id, window, "record", uploads=attacks.nested_json())
    await attacks.put_raw(bad, bad.hotkey, window, attacks.record_key(c.spec.run_id, window, bad.hotkey), record)
    results = await asyncio.gather(*(p.allreduce(g, window=window) for p, g in zip(peers, grads)),
                                   *(m.run_window(window) for m in miners), validator.validate_window(window),
                                   drive_honest(c, window, peers), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    assert not results[-1], results[-1]
    for r in results[:2]:
        assert float((r.flat.double() - exact_mean(c.spec, grads)).abs().max()) <= fp32_bound(grads)
        assert not r.fallbacks
    hostile("parse: upload record", "a registered peer signed an upload record nesting JSON 5,000 deep",
            "other peers skip the record and finish with the exact mean", "malformed_header")


async def test_a_nested_broadcast_record_is_a_typed_failure(cluster_factory, tmp_path, hostile) -> None:
    c = await cluster_factory(peers=2, miners=2, validators=0, stepped=True, numel=40_000, segments=2)
    receiver_net = await c.join("peers", 0)
    bad = await c.join("peers", 1)
    for i in range(2):
        await c.join("miners", i)
    window = await c.next_window()
    c.chain.advance_to(c.spec.windows.phases(window).start_block)
    record = attacks.signed(bad.signer, c.spec.run_id, window, "bcast-record", segments=attacks.nested_json(),
                            spec=spec_fingerprint(c.spec), numel=str(c.spec.numel), dtype="F32")
    from mapreduce.wire import keys
    await attacks.put_raw(bad, bad.hotkey, window, str(keys.broadcast_record_key(c.spec.run_id, window, bad.hotkey)),
                          record)
    receiver = Broadcaster(receiver_net, c.bucket_of("peers", 0))
    with pytest.raises(BroadcastFailed) as caught:
        await receiver.receive(window, bad.hotkey)
    assert sum(caught.value.rejected.values()) == 1
    hostile("parse: broadcast record", "a sender signed a broadcast record nesting JSON 5,000 deep",
            "receivers fail that broadcast with a typed BroadcastFailed", ", ".join(caught.value.rejected))


async def test_a_nested_report_stops_no_reader(cluster_factory, tmp_path, hostile) -> None:
    c = await cluster_factory(peers=1, miners=1, validators=1, stepped=True, numel=40_000, segments=2)
    miner_net = await c.join("miners", 0)
    vnet = await c.join("validators", 0)
    window = await c.next_window()
    c.chain.advance_to(c.spec.windows.phases(window).start_block)
    body = '{"validator": "%s", "window": %d, "ema": %s}' % (vnet.hotkey, window - 1, attacks.nested_json())
    await attacks.put_raw(vnet, vnet.hotkey, window, attacks.report_key(c.spec.run_id, window - 1, vnet.hotkey),
                          attacks.report_bytes(vnet.signer, c.spec.run_id, window - 1, body))
    seen = await trusted_scores(miner_net, window)
    assert not seen.validators and sum(seen.excluded.values()) == 1, seen
    hostile("parse: validator report", "a validator published a report nesting JSON 5,000 deep",
            "miners and peers leave that validator out of the trusted scores", ", ".join(seen.excluded))
