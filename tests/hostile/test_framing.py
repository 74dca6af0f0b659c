"""Class 5: nobody frames an honest party.

A registered peer can sign whatever it likes under its own name. Here one signs inputs whose header is valid but
whose body is NaN, or has one flipped byte, or writes an upload record naming other hashes than the inputs it
signed. Honest miners rightly leave the bad inputs out (or include the valid ones); the validator must not mark them
incomplete and peers must not refuse their outputs: the peer that lied is the one at fault.
"""
from __future__ import annotations

import asyncio

import pytest
import torch

from mapreduce.flat import flatten
from mapreduce.miner import Miner
from mapreduce.peer import Peer
from mapreduce.scoring import ScoringConfig
from mapreduce.validator import Validator, ValidatorConfig
from tests.support.cluster import peer_gradients

from . import attacks


def fp32_bound(grads) -> float:
    return (len(grads) + 1) * 2.0 ** -24 * max(float(t.abs().max()) for g in grads for t in g.values())


async def write_inputs(bad, window: int, body) -> tuple[dict[int, str], list[list]]:
    """The hostile peer's uploads: ``body(segment) -> (bytes, sha256)`` written to each replica under keys it
    makes; returns the hashes and the rows of the upload record that describes them."""
    plan = await bad.plan(window)
    hashes, rows = {}, []
    for seg in plan.segments:
        data, sha = body(seg)
        hashes[seg.index] = sha
        stored = []
        for miner in plan.miners_for(seg.index):
            key = attacks.input_key(bad.signer, bad.spec.run_id, window, seg.index, miner)
            await attacks.put_raw(bad, miner, window, key, data)
            stored.append([miner, key.rsplit("/", 1)[1]])
        rows.append([seg.index, sha, stored])
    return hashes, rows


@pytest.mark.parametrize("case", ["nan_body", "flipped_byte", "record_contradicts_inputs"])
async def test_a_lying_peer_frames_no_miner(cluster_factory, tmp_path, hostile, case: str) -> None:
    c = await cluster_factory(peers=3, miners=2, numel=40_000, segments=2, stepped=True)
    peers = [Peer(await c.join("peers", i), c.bucket_of("peers", i)) for i in range(2)]
    bad = await c.join("peers", 2)
    miners = [Miner(await c.join("miners", i), c.bucket_of("miners", i)) for i in range(2)]
    validator = Validator(await c.join("validators", 0), c.bucket_of("validators", 0), tmp_path / "v.json",
                          ValidatorConfig(segments_per_miner=4, scoring=ScoringConfig(weights_every=1)))
    grads = peer_gradients(c.spec, 3, seed=8)
    bad_flat = flatten(c.spec, grads[2])
    window = await c.next_window()
    # Blocks come as the work is done (tests/support/driver.py), the lying peer's inputs and record included.
    drive = c.drive(window, validator=True)
    await bad.wait_for_block(c.spec.windows.phases(window).start_block)
    run = c.spec.run_id

    def body(seg):
        values = bad_flat[seg.start:seg.end].clone()
        if case == "nan_body":
            values[7] = float("nan")
        data, sha = attacks.input_object(bad.signer, run, window, seg.index, values)
        return (attacks.flip_data_byte(data) if case == "flipped_byte" else data), sha

    _, rows = await write_inputs(bad, window, body)
    if case == "record_contradicts_inputs":
        rows = [[s, "ab" * 32, stored] for s, _, stored in rows]
    await attacks.put_raw(bad, bad.hotkey, window, attacks.record_key(run, window, bad.hotkey),
                          attacks.upload_record(bad.signer, run, window, rows))

    results = await asyncio.gather(*(p.allreduce(g, window=window) for p, g in zip(peers, grads)),
                                   *(m.run_window(window) for m in miners), validator.validate_window(window), drive)
    peer_results, report = results[:2], results[-2]
    assert not results[-1], f"the work of phases {results[-1]} never finished"
    included = grads if case == "record_contradicts_inputs" else grads[:2]  # the lying peer's valid inputs count
    mean = torch.stack([flatten(c.spec, g).double() for g in included]).mean(0)
    for r in peer_results:
        assert not r.fallbacks, [(s.segment, s.source) for s in r.segments]
        assert float((r.flat.double() - mean).abs().max()) <= fp32_bound(included)
    assert report.checks and all(ch.status == "ok" and ch.included_expected == ch.expected
                                 for ch in report.checks), [(ch.status, ch.reason) for ch in report.checks]
    assert min(report.scores.values()) > 0.75, report.scores
    hostile(f"framing: {case.replace('_', ' ')}",
            {"nan_body": "a registered peer signed inputs with a valid header and a NaN in the body",
             "flipped_byte": "a registered peer signed inputs, then changed one byte of their data",
             "record_contradicts_inputs": "a registered peer's signed record names other hashes than its inputs"}[case],
            "miners keep their full scores; peers accept the honest outputs, no fallback",
            {"nan_body": "non_finite", "flipped_byte": "hash_mismatch",
             "record_contradicts_inputs": "none: peers read only the records of peers an output leaves out"}[case])
