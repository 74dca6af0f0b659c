"""Wire formats (mapreduce/wire/formats.py): what each decodes to, that a range decodes to the same bits as the whole,
and a whole window with int8 and topk inputs through every role, checked by the validator and the peers' audits."""
from __future__ import annotations

import asyncio
import dataclasses

import pytest
import torch

from mapreduce.audit import recompute_difference
from mapreduce.errors import InvalidObject, NonFinite, OutOfBounds, ShapeMismatch
from mapreduce.flat import flatten
from mapreduce.peer import Peer
from mapreduce.plan import segment_bounds
from mapreduce.reduce import Accumulator
from mapreduce.scoring import ScoringConfig
from mapreduce.validator import Validator, ValidatorConfig
from mapreduce.wire.codec import ObjectMeta, decode, encode
from mapreduce.wire.expect import input_expect
from mapreduce.wire.formats import FORMATS, SCALE_BLOCK, TOPK_BLOCK, TOPK_K
from mapreduce.wire.keys import make_tag
from mapreduce.wire.partial import RangeReader
from mapreduce.wire.signing import Signer
from mapreduce.spec import RunSpec, TensorSpec
from mapreduce.swarm.orchestrator import tolerance
from tests.protocol.test_roles import join_all
from tests.support.cluster import peer_gradients

INT8 = FORMATS["int8"]
TOPK = FORMATS["topk"]


def test_int8_values_are_within_half_a_step_of_the_gradient() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(10 * SCALE_BLOCK + 77, generator=g) * torch.logspace(-6, 2, 10 * SCALE_BLOCK + 77)
    x[SCALE_BLOCK:2 * SCALE_BLOCK] = 0.0  # an all-zero block: scale 0, every value 0
    tensors = INT8.encode(x)
    assert tensors["data"].dtype == torch.int8 and tensors["data"].shape == x.shape
    assert tensors["scale"].shape == (11,) and float(tensors["scale"][1]) == 0.0
    decoded = INT8.decode(tensors, x.numel())
    assert decoded.dtype == torch.float32 and torch.all(decoded[SCALE_BLOCK:2 * SCALE_BLOCK] == 0)
    step = tensors["scale"].repeat_interleave(SCALE_BLOCK)[:x.numel()]
    assert torch.all((decoded - x).abs() <= step / 2 * (1 + 1e-6) + 1e-30)
    assert float((decoded - x).abs().max()) <= INT8.rounding()[0] * float(x.abs().max())


@pytest.mark.parametrize("start,end", [(0, 1), (3, 17), (255, 257), (256, 512), (100, 2000), (2000, 2637),
                                       (0, 2637)])
def test_a_range_decodes_to_the_bits_of_the_whole(start: int, end: int) -> None:
    x = torch.randn(2637, generator=torch.Generator().manual_seed(4)) * 5
    tensors = INT8.encode(x)
    whole = INT8.decode(tensors, 2637)
    first, last = INT8.scale_span(start, end)
    assert INT8.spans(2637, start, end) == {"data": (start, end), "scale": (first, last)}
    part = INT8.decode_range({"data": tensors["data"][start:end], "scale": tensors["scale"][first:last]}, 2637,
                             start, end)
    assert torch.equal(part, whole[start:end])
    # and as one multiply per element, which is what the format says
    assert torch.equal(whole, tensors["data"].float() * tensors["scale"].repeat_interleave(SCALE_BLOCK)[:2637])


@pytest.mark.parametrize("name", ["float32", "bfloat16"])
def test_float_formats_send_the_values_themselves(name: str) -> None:
    fmt = FORMATS[name]
    x = torch.randn(1000)
    tensors = fmt.encode(x)
    assert list(tensors) == ["data"] and tensors["data"].dtype == fmt.data_dtype
    assert torch.equal(fmt.decode(tensors, 1000), x.to(fmt.data_dtype))
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
    assert torch.equal(INT8.decode(decoded.tensors, seg.numel), INT8.decode(INT8.encode(x), seg.numel))
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


async def honest_window(cluster_factory, tmp_path, wire_dtype: str):
    """One window of 3 honest peers and 2 honest miners on ``wire_dtype``: the cluster, the peers, their flat
    gradients, and :func:`one_window`'s results."""
    c = await cluster_factory(peers=3, miners=2, numel=400_000, store="memory", stepped=True, wire_dtype=wire_dtype)
    peers, miners = await join_all(c)
    grads = peer_gradients(c.spec, 3)
    results = await one_window(c, peers, miners, grads, tmp_path)
    return c, peers, [flatten(c.spec, g) for g in grads], results


def reduced_as_miners_do(c, peers, flats: list[torch.Tensor], fmt) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """What every peer's average must be, bit for bit: each peer's segments as the format decodes what it sends,
    reduced in canonical (hotkey) order; and each peer's decoded values."""
    order = sorted(range(len(peers)), key=lambda i: peers[i].net.hotkey)
    exact = torch.empty(c.spec.numel)
    sent = [torch.empty(c.spec.numel) for _ in peers]
    for seg in segment_bounds(c.spec.numel, c.spec.segments):
        acc = Accumulator(seg.numel)
        for i in order:
            sent[i][seg.start:seg.end] = fmt.decode(fmt.encode(flats[i][seg.start:seg.end]), seg.numel)
            acc.add(peers[i].net.hotkey, "", sent[i][seg.start:seg.end])
        exact[seg.start:seg.end] = acc.mean(fmt.output_dtype).float()
    return exact, sent


def assert_every_output_written_and_exact(c, miner_reports, report) -> None:
    for m in miner_reports:
        assert [o.status for o in m.outcomes] == ["written"] * c.spec.segments and not m.rejected
    assert len(report.checks) == 2 * c.spec.segments  # every output of both miners
    assert all(ch.status == "ok" and ch.difference == 0.0 for ch in report.checks), report.checks


async def test_an_int8_window_through_every_role(cluster_factory, tmp_path) -> None:
    """Peers upload int8 inputs, miners reduce their decoded values, the validator recomputes sampled chunks from
    the inputs' ranged reads (data and scales) and finds every output exact; every peer's average is the exact mean
    of the decoded inputs, bit for bit, and within the stated bound of the mean of the fp32 gradients."""
    c, peers, flats, (peer_results, miner_reports, report) = await honest_window(cluster_factory, tmp_path, "int8")
    exact, _ = reduced_as_miners_do(c, peers, flats, INT8)
    bound = tolerance(torch.stack(flats), "int8")
    for r in peer_results:
        assert [s.source for s in r.segments] == ["replica"] * c.spec.segments and not r.rejected
        assert torch.equal(r.flat, exact)  # the miners' reduction of the decoded inputs, bit for bit
        assert float((r.flat.double() - torch.stack(flats).double().mean(0)).abs().max()) <= bound
    assert_every_output_written_and_exact(c, miner_reports, report)


@pytest.mark.parametrize("wire_dtype", ["int8", "topk"])
async def test_an_output_with_one_wrong_element_is_caught(cluster_factory, tmp_path, wire_dtype: str) -> None:
    """A miner that changes one element of each output: where its output and the honest replica's differ, the
    validator recomputes that range from the inputs (int8: their values and scales; topk: their entries of the
    blocks the range touches), and refuses it."""
    from tests.faults.adversaries import AdversarialMiner

    c = await cluster_factory(peers=3, miners=2, numel=200_000, store="memory", stepped=True, wire_dtype=wire_dtype)
    peers, (honest, _) = await join_all(c)
    liar = AdversarialMiner(await c.join("miners", 1), c.bucket_of("miners", 1), behaviour="one_element")
    _, _, report = await one_window(c, peers, [honest, liar], peer_gradients(c.spec, 3), tmp_path)
    by_miner = {}
    for ch in report.checks:
        by_miner.setdefault(ch.miner, []).append(ch.status)
    assert set(by_miner[honest.net.hotkey]) == {"ok"}
    assert "ok" not in by_miner[liar.net.hotkey]


# -- topk ----------------------------------------------------------------------------------------------------------

TOPK_N = 3 * TOPK_BLOCK + 40  # three whole blocks and a last one of 40 elements: 40 entries, not 64


def test_topk_sends_the_largest_values_of_each_block_and_zeros_the_rest() -> None:
    x = torch.randn(TOPK_N, generator=torch.Generator().manual_seed(5))
    tensors = TOPK.encode(x)
    assert list(tensors) == ["data", "index"]  # data first: the proof of possession covers its chunks
    assert tensors["data"].dtype == torch.float32 and tensors["index"].dtype == torch.int16
    assert tensors["data"].shape == tensors["index"].shape == (3 * TOPK_K + 40,)
    assert TOPK.input_tensors(TOPK_N) == {"data": ("F32", (232,)), "index": ("I16", (232,))}
    decoded = TOPK.decode(tensors, TOPK_N)
    assert decoded.dtype == torch.float32 and decoded.shape == (TOPK_N,)
    for b in range(4):
        block, got = x[b * TOPK_BLOCK:(b + 1) * TOPK_BLOCK], decoded[b * TOPK_BLOCK:(b + 1) * TOPK_BLOCK]
        k = min(TOPK_K, block.numel())
        kept = got != 0
        assert int(kept.sum()) == k and torch.equal(got[kept], block[kept])  # the values themselves, exactly
        unsent = torch.cat([block[~kept].abs(), torch.zeros(1)])  # the last block sends all of its 40
        assert float(unsent.max()) <= float(block[kept].abs().min())  # the largest |x|
    assert TOPK.bytes_per_element() == (TOPK_K * 6 / TOPK_BLOCK, 2) and TOPK.range_itemsize == 2


@pytest.mark.parametrize("start,end", [(0, 1), (5, 17), (4095, 4097), (4096, 8192), (100, 9000), (8191, 12288),
                                       (12288, TOPK_N), (12300, 12301), (TOPK_N - 1, TOPK_N), (0, TOPK_N)])
def test_a_topk_range_decodes_to_the_bits_of_the_whole(start: int, end: int) -> None:
    x = torch.randn(TOPK_N, generator=torch.Generator().manual_seed(6))
    x[4000] = -0.0  # a sent -0.0 keeps its sign in a range too
    tensors = TOPK.encode(x)
    whole = TOPK.decode(tensors, TOPK_N)
    spans = TOPK.spans(TOPK_N, start, end)
    first, last = start // TOPK_BLOCK, -(-end // TOPK_BLOCK)
    assert spans["data"] == spans["index"] == (TOPK_K * first, min(TOPK_K * last, 3 * TOPK_K + 40))
    part = TOPK.decode_range({n: tensors[n][a:b] for n, (a, b) in spans.items()}, TOPK_N, start, end)
    assert torch.equal(part.view(torch.int32), whole[start:end].view(torch.int32))  # bits, -0.0 included


def _hostile(kind: str) -> dict[str, torch.Tensor]:
    """A topk input of TOPK_N elements broken one way (block 1, or the short last block, 3)."""
    t = TOPK.encode(torch.randn(TOPK_N, generator=torch.Generator().manual_seed(7)))
    data, index = t["data"].clone(), t["index"].clone()
    b1, last = TOPK_K, 3 * TOPK_K  # first entry of block 1, of block 3
    if kind == "duplicate":
        index[b1 + 1] = index[b1]
    elif kind == "unsorted":
        index[b1], index[b1 + 1] = index[b1 + 1].clone(), index[b1].clone()
    elif kind == "past_block":
        index[b1 + TOPK_K - 1] = TOPK_BLOCK
    elif kind == "negative":
        index[b1] = -1
    elif kind == "past_short_block":
        index[last + 39] = 40  # the last block holds 40 elements: 40 is past it
    elif kind == "short_k":  # 63 entries in block 1 would shift every later block's entries
        data, index = torch.cat([data[:b1], data[b1 + 1:]]), torch.cat([index[:b1], index[b1 + 1:]])
    elif kind == "non_finite":
        data[b1 + 3] = float("nan")
    elif kind == "beyond_bound":
        data[b1 + 3] = 1e6
    return {"data": data, "index": index}


HOSTILE = {"duplicate": OutOfBounds, "unsorted": OutOfBounds, "past_block": OutOfBounds, "negative": OutOfBounds,
           "past_short_block": OutOfBounds, "short_k": ShapeMismatch, "non_finite": NonFinite,
           "beyond_bound": OutOfBounds}


def _topk_object(tensors: dict[str, torch.Tensor]):
    spec = RunSpec("topk-run", (TensorSpec("w", (TOPK_N,)),), segments=1, wire_dtype="topk", max_abs_value=1000.0)
    seg = segment_bounds(spec.numel, spec.segments)[0]
    peer = Signer.from_uri("//topk/peer")
    meta = ObjectMeta(spec.run_id, 3, "in", peer.hotkey, seg.index)
    expect = input_expect(spec, seg, allowed=lambda h: h == peer.hotkey)
    key = str(dataclasses.replace(meta.key, tag=make_tag(peer, spec.run_id, 3, seg.index, "in", peer.hotkey)))
    return bytes(encode(meta, tensors, peer).data), key, expect


def _honest() -> torch.Tensor:
    """The whole decode of the unbroken input :func:`_hostile` starts from, as a one-input output holds it."""
    t = TOPK.encode(torch.randn(TOPK_N, generator=torch.Generator().manual_seed(7)))
    return TOPK.decode(t, TOPK_N).to(TOPK.output_dtype)


async def _audit_range(obj: bytes, key: str, expect, start: int, end: int) -> float:
    """What a validator does with one input over ``[start, end)`` (ranged reads of the entries of the blocks the
    range touches, decoded, reduced), against an output holding :func:`_honest`: the relative difference."""
    async def fetch(a: int, b: int) -> bytes:
        return obj[a:b]

    async def output(a: int, b: int) -> torch.Tensor:
        return _honest()[a:b]

    reader = RangeReader(fetch, len(obj), key, expect)
    return await recompute_difference(output, [reader], [(start, end)], TOPK, TOPK_N)


def test_a_topk_input_is_a_signed_object_read_whole_or_by_range() -> None:
    x = torch.randn(TOPK_N, generator=torch.Generator().manual_seed(7))
    obj, key, expect = _topk_object(TOPK.encode(x))
    decoded = decode(obj, key, expect)
    assert torch.equal(TOPK.decode(decoded.tensors, TOPK_N), TOPK.decode(TOPK.encode(x), TOPK_N))
    # a range that touches blocks 0 to 2 reads their entries and decodes what the whole does
    for start, end in [(4000, 9000), (8192, TOPK_N), (0, TOPK_N)]:
        assert asyncio.run(_audit_range(obj, key, expect, start, end)) == 0.0
    forged = TOPK.encode(x)
    forged["data"][TOPK_K + 5] += 1.0  # one sent value of block 1 changed: a range over block 1 sees it
    obj, key, expect = _topk_object(forged)
    assert asyncio.run(_audit_range(obj, key, expect, 4096, 8192)) > 0
    assert asyncio.run(_audit_range(obj, key, expect, 8192, TOPK_N)) == 0.0


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_topk_input_is_refused_whole_and_by_range(kind: str) -> None:
    obj, key, expect = _topk_object(_hostile(kind))
    with pytest.raises(HOSTILE[kind]):  # the miner: the codec's checks, then the format's index rule
        TOPK.decode(decode(obj, key, expect).tensors, TOPK_N)
    broken = (3 * TOPK_BLOCK, TOPK_N) if kind == "past_short_block" else (TOPK_BLOCK, 2 * TOPK_BLOCK)
    with pytest.raises(HOSTILE[kind]):  # a validator's range through the broken block
        asyncio.run(_audit_range(obj, key, expect, *broken))
    with pytest.raises(HOSTILE[kind]):  # or a range ending in it
        asyncio.run(_audit_range(obj, key, expect, broken[0] - 100, broken[0] + 1))
    # block 0 is intact (short_k: the header's shapes are wrong, so nothing of it is read)
    if kind != "short_k":
        assert asyncio.run(_audit_range(obj, key, expect, 0, 4096)) == 0.0
    else:
        with pytest.raises(InvalidObject):
            asyncio.run(_audit_range(obj, key, expect, 0, 4096))


async def test_a_topk_window_through_every_role(cluster_factory, tmp_path) -> None:
    """Peers upload topk inputs of their gradient (their residual is zero in the first window), miners reduce the
    decoded inputs, the validator recomputes sampled chunks from the inputs' entries and finds every output exact;
    every peer's average is the exact mean of the sent values, and each peer keeps what it did not send."""
    c, peers, flats, (peer_results, miner_reports, report) = await honest_window(cluster_factory, tmp_path, "topk")
    exact, sent = reduced_as_miners_do(c, peers, flats, TOPK)
    bound = tolerance(torch.stack(sent), "topk")
    for i, r in enumerate(peer_results):
        assert [s.source for s in r.segments] == ["replica"] * c.spec.segments and not r.rejected
        assert torch.equal(r.flat, exact)  # the miners' reduction of the decoded inputs, bit for bit
        assert float((r.flat.double() - torch.stack(sent).double().mean(0)).abs().max()) <= bound
        assert torch.equal(r.receipt.sent, sent[i])
        assert torch.equal(peers[i]._residual, flats[i] - sent[i])  # what the next window's inputs will carry
    entries = sum(TOPK.data_numel(s.numel) for s in segment_bounds(c.spec.numel, c.spec.segments))
    assert entries < c.spec.numel / 60 and entries < int((exact != 0).sum()) <= 3 * entries  # sparse: 3 peers' entries
    assert_every_output_written_and_exact(c, miner_reports, report)


async def test_topk_keeps_in_its_residual_what_no_miner_stored(cluster_factory) -> None:
    """Error feedback must not lose a segment whose input reached no miner: what it carried goes back into the
    peer's residual (to one fp32 add's rounding), while a delivered segment keeps only what topk left out."""
    c = await cluster_factory(peers=1, miners=4, numel=40_960, store="memory", segments=2, wire_dtype="topk")
    peer = Peer(await c.join("peers", 0), c.bucket_of("peers", 0))
    for i in range(4):
        await c.join("miners", i)
    window = await c.next_window()
    plan = await peer.net.plan(window)
    lost, kept = plan.segments
    for miner in plan.miners_for(lost.index):  # their buckets vanish: every copy of segment 0 fails
        assert miner not in plan.miners_for(kept.index)
        i = [c.signers["miners"][j].hotkey for j in range(4)].index(miner)
        del c.memory._buckets[c.bucket_of("miners", i)]
    flat = flatten(c.spec, {"w": torch.randn(4_096, 10, generator=torch.Generator().manual_seed(3))})
    receipt = await peer.upload(window, flat)
    assert set(receipt.stored_at) == {kept.index} and len(receipt.failed[lost.index]) == 2
    sent = receipt.sent
    assert torch.equal(peer._residual[kept.start:kept.end], flat[kept.start:kept.end] - sent[kept.start:kept.end])
    back = peer._residual[lost.start:lost.end]
    assert float((back - flat[lost.start:lost.end]).abs().max()) <= float(flat.abs().max()) * 2 ** -23
    assert float(sent[lost.start:lost.end].abs().max()) > 0  # there was something to lose
