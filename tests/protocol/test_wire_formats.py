"""Wire formats (mapreduce/wire/formats.py): what each decodes to, that a range decodes to the same bits as the whole,
and a whole window with int8 inputs through every role, checked by the validator and the peers' audits."""
from __future__ import annotations

import asyncio
import dataclasses

import pytest
import torch

from mapreduce.errors import OutOfBounds
from mapreduce.flat import flatten
from mapreduce.plan import segment_bounds
from mapreduce.reduce import Accumulator
from mapreduce.scoring import ScoringConfig
from mapreduce.validator import Validator, ValidatorConfig
from mapreduce.wire.codec import ObjectMeta, decode, encode
from mapreduce.wire.expect import input_expect
from mapreduce.wire.formats import FORMATS, SCALE_BLOCK
from mapreduce.wire.keys import make_tag
from mapreduce.wire.signing import Signer
from mapreduce.spec import RunSpec, TensorSpec
from mapreduce.swarm.orchestrator import tolerance
from tests.protocol.test_roles import join_all
from tests.support.cluster import peer_gradients

INT8 = FORMATS["int8"]


def test_int8_values_are_within_half_a_step_of_the_gradient() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(10 * SCALE_BLOCK + 77, generator=g) * torch.logspace(-6, 2, 10 * SCALE_BLOCK + 77)
    x[SCALE_BLOCK:2 * SCALE_BLOCK] = 0.0  # an all-zero block: scale 0, every value 0
    tensors = INT8.encode(x)
    assert tensors["data"].dtype == torch.int8 and tensors["data"].shape == x.shape
    assert tensors["scale"].shape == (11,) and float(tensors["scale"][1]) == 0.0
    decoded = INT8.decode(tensors)
    assert decoded.dtype == torch.float32 and torch.all(decoded[SCALE_BLOCK:2 * SCALE_BLOCK] == 0)
    step = tensors["scale"].repeat_interleave(SCALE_BLOCK)[:x.numel()]
    assert torch.all((decoded - x).abs() <= step / 2 * (1 + 1e-6) + 1e-30)
    assert float((decoded - x).abs().max()) <= INT8.rounding()[0] * float(x.abs().max())


@pytest.mark.parametrize("start,end", [(0, 1), (3, 17), (255, 257), (256, 512), (100, 2000), (2000, 2637),
                                       (0, 2637)])
def test_a_range_decodes_to_the_bits_of_the_whole(start: int, end: int) -> None:
    x = torch.randn(2637, generator=torch.Generator().manual_seed(4)) * 5
    tensors = INT8.encode(x)
    whole = INT8.decode(tensors)
    first, last = INT8.scale_span(start, end)
    part = INT8.decode_range(tensors["data"][start:end], tensors["scale"][first:last], start)
    assert torch.equal(part, whole[start:end])
    # and as one multiply per element, which is what the format says
    assert torch.equal(whole, tensors["data"].float() * tensors["scale"].repeat_interleave(SCALE_BLOCK)[:2637])


@pytest.mark.parametrize("name", ["float32", "bfloat16"])
def test_float_formats_send_the_values_themselves(name: str) -> None:
    fmt = FORMATS[name]
    x = torch.randn(1000)
    tensors = fmt.encode(x)
    assert list(tensors) == ["data"] and tensors["data"].dtype == fmt.data_dtype
    assert torch.equal(fmt.decode(tensors), x.to(fmt.data_dtype))
    assert fmt.output_dtype == fmt.data_dtype and fmt.range_itemsize == fmt.data_dtype.itemsize


def test_an_int8_input_is_a_signed_object_with_a_bounded_scale() -> None:
    # segments of 2501 elements: the scales start at an odd byte offset
    spec = RunSpec("fmt-run", (TensorSpec("w", (5002,)),), segments=2, wire_dtype="int8", max_abs_value=1000.0)
    seg = segment_bounds(spec.numel, spec.segments)[1]
    peer = Signer.from_uri("//fmt/peer")
    meta = ObjectMeta(spec.run_id, 3, "in", peer.hotkey, seg.index)
    expect = input_expect(spec, seg, allowed=lambda h: h == peer.hotkey)
    key = str(dataclasses.replace(meta.key, tag=make_tag(peer, spec.run_id, 3, seg.index, "in", peer.hotkey)))
    x = torch.randn(seg.numel)
    obj = encode(meta, INT8.encode(x), peer)
    decoded = decode(obj.data, key, expect)
    assert decoded.tensors["data"].numel() == 2501
    assert torch.equal(INT8.decode(decoded.tensors), INT8.decode(INT8.encode(x)))
    # a gradient at the bound makes a valid input (its scale is max_abs / 127 exactly)
    at_bound = torch.zeros(seg.numel)
    at_bound[7] = -1000.0
    assert decode(encode(meta, INT8.encode(at_bound), peer).data, key, expect).tensors["data"][7] == -127
    # a scale beyond max_abs / 127, or a -128, could decode past the run's bound: refused like any out-of-bounds value
    big_scale = {"data": torch.full((seg.numel,), 127, dtype=torch.int8),
                 "scale": torch.full((INT8.blocks(seg.numel),), 1000.0 / 120)}
    minus_128 = {"data": torch.full((seg.numel,), -128, dtype=torch.int8),
                 "scale": torch.full((INT8.blocks(seg.numel),), 1.0)}
    for forged in (big_scale, minus_128):
        with pytest.raises(OutOfBounds):
            decode(encode(meta, forged, peer).data, key, expect)


def test_int8_bytes_per_element() -> None:
    assert FORMATS["float32"].bytes_per_element() == (4, 4)
    assert FORMATS["bfloat16"].bytes_per_element() == (2, 2)
    assert INT8.bytes_per_element() == (1 + 4 / SCALE_BLOCK, 2)


async def one_window(c, peers, miners, grads, tmp_path):
    """One window of every role, a validator checking every output of every miner: (peers' results, miners'
    reports, the validator's report)."""
    validator = Validator(await c.join("validators", 0), c.bucket_of("validators", 0), tmp_path / "v.json",
                          ValidatorConfig(segments_per_miner=c.spec.segments,
                                          scoring=ScoringConfig(weights_every=1)))
    window = await c.next_window()
    results = await asyncio.gather(*(p.allreduce(g, window=window) for p, g in zip(peers, grads)),
                                   *(m.run_window(window) for m in miners), validator.validate_window(window),
                                   c.drive(window, validator=True))
    return results[:len(peers)], results[len(peers):len(peers) + len(miners)], results[len(peers) + len(miners)]


async def test_an_int8_window_through_every_role(cluster_factory, tmp_path) -> None:
    """Peers upload int8 inputs, miners reduce their decoded values, the validator recomputes sampled chunks from
    the inputs' ranged reads (data and scales) and finds every output exact; every peer's average is the exact mean
    of the decoded inputs, bit for bit, and within the stated bound of the mean of the fp32 gradients."""
    c = await cluster_factory(peers=3, miners=2, numel=400_000, store="memory", stepped=True, wire_dtype="int8")
    peers, miners = await join_all(c)
    grads = peer_gradients(c.spec, 3)
    peer_results, miner_reports, report = await one_window(c, peers, miners, grads, tmp_path)

    flats = [flatten(c.spec, g) for g in grads]
    order = sorted(range(3), key=lambda i: peers[i].net.hotkey)
    exact = torch.empty(c.spec.numel)
    for seg in segment_bounds(c.spec.numel, c.spec.segments):
        acc = Accumulator(seg.numel)
        for i in order:
            acc.add(peers[i].net.hotkey, "", INT8.decode(INT8.encode(flats[i][seg.start:seg.end])))
        exact[seg.start:seg.end] = acc.mean(INT8.output_dtype).float()
    bound = tolerance(torch.stack(flats), "int8")
    for r in peer_results:
        assert [s.source for s in r.segments] == ["replica"] * c.spec.segments and not r.rejected
        assert torch.equal(r.flat, exact)  # the miners' reduction of the decoded inputs, bit for bit
        assert float((r.flat.double() - torch.stack(flats).double().mean(0)).abs().max()) <= bound
    for m in miner_reports:
        assert [o.status for o in m.outcomes] == ["written"] * c.spec.segments and not m.rejected
    assert len(report.checks) == 2 * c.spec.segments  # every output of both miners
    assert all(ch.status == "ok" and ch.difference == 0.0 for ch in report.checks), report.checks


async def test_an_int8_output_with_one_wrong_element_is_caught(cluster_factory, tmp_path) -> None:
    """A miner that changes one element of each int8 run's output: where its output and the honest replica's
    differ, the validator recomputes that range from the inputs' int8 values and scales, and refuses it."""
    from tests.faults.adversaries import AdversarialMiner

    c = await cluster_factory(peers=3, miners=2, numel=200_000, store="memory", stepped=True, wire_dtype="int8")
    peers, (honest, _) = await join_all(c)
    liar = AdversarialMiner(await c.join("miners", 1), c.bucket_of("miners", 1), behaviour="one_element")
    _, _, report = await one_window(c, peers, [honest, liar], peer_gradients(c.spec, 3), tmp_path)
    by_miner = {}
    for ch in report.checks:
        by_miner.setdefault(ch.miner, []).append(ch.status)
    assert set(by_miner[honest.net.hotkey]) == {"ok"}
    assert "ok" not in by_miner[liar.net.hotkey]
