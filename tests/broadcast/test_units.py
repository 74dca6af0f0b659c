"""The pieces of broadcast and hosting that need no network: keys, record rules, replica order, scoring."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from mapreduce.wire.broadcast_record import BroadcastRecord, spec_fingerprint
from mapreduce.wire.codec import Expect, ObjectMeta, decode, encode
from mapreduce.errors import KeyMismatch, MalformedHeader, MetadataMismatch
from mapreduce.wire.keys import ObjectKey, broadcast_key, broadcast_record_key
from mapreduce.plan import make_plan
from mapreduce.scoring import HostingCheck, ScoringConfig, SegmentCheck, hosting_score, window_scores
from mapreduce.wire.signing import Signer
from mapreduce.spec import RunSpec, TensorSpec
from mapreduce.trust import order_replicas

SENDER = Signer.from_uri("//bcast-sender")
MINERS = [Signer.from_uri(f"//bcast-miner-{i}").hotkey for i in range(4)]
SPEC = RunSpec("run-b", (TensorSpec("w", (100, 10)),), segments=4, redundancy=2)


TAG = "1e" * 64


def test_broadcast_keys_round_trip_and_are_checked() -> None:
    for key in (broadcast_key("run", 3, 7, SENDER.hotkey, TAG), broadcast_record_key("run", 3, SENDER.hotkey)):
        assert ObjectKey.parse(str(key)) == key
    assert str(broadcast_key("run", 3, 7, SENDER.hotkey, TAG)) == f"run/w00000003/bcast/s00007/{SENDER.hotkey}/{TAG}"
    assert str(broadcast_record_key("run", 3, SENDER.hotkey)) == f"run/w00000003/bcast-record/{SENDER.hotkey}"
    with pytest.raises(ValueError):
        ObjectKey("run", 3, "bcast", SENDER.hotkey, tag=TAG)  # a copy belongs to a segment
    with pytest.raises(KeyMismatch):
        ObjectKey.parse(f"run/w00000003/bcast-record/s00001/{SENDER.hotkey}")  # a record does not


def test_a_copy_is_a_signed_object_at_its_key() -> None:
    obj = encode(ObjectMeta("run", 3, "bcast", SENDER.hotkey, 1), {"data": torch.ones(10)}, SENDER)
    expect = Expect({"data": ("F32", (10,))}, lambda h: h == SENDER.hotkey, 1 << 20)
    assert decode(obj.data, str(broadcast_key("run", 3, 1, SENDER.hotkey, TAG)), expect).meta.role == "bcast"
    with pytest.raises(KeyMismatch):  # the same object found under another segment's key
        decode(obj.data, str(broadcast_key("run", 3, 2, SENDER.hotkey, TAG)), expect)


def _record_bytes(rows: list, signer: Signer = SENDER, spec: RunSpec = SPEC) -> memoryview:
    import json
    meta = ObjectMeta(SPEC.run_id, 5, "bcast-record", signer.hotkey, extra={
        "segments": json.dumps(rows), "spec": spec_fingerprint(spec), "numel": str(spec.numel), "dtype": "F32"})
    return encode(meta, {}, signer).data


def test_the_record_must_agree_with_the_plan() -> None:
    plan = make_plan(SPEC, 5, f"broadcast|{SENDER.hotkey}|0xabc", MINERS)
    good = [[i, "ab" * 32, [[m, TAG] for m in plan.miners_for(i)]] for i in range(4)]
    record = BroadcastRecord.decode(_record_bytes(good), SPEC, plan, SENDER.hotkey)
    assert record.stored_at == tuple(tuple((m, TAG) for m in plan.miners_for(i)) for i in range(4))
    assert record.miners_for(2) == plan.miners_for(2)
    outsider = next(m for m in MINERS if m not in plan.miners_for(0))
    for rows, error in (
            (good[:3], MetadataMismatch),  # a segment left out
            ([[0, "ab" * 32, [[outsider, TAG]]]] + good[1:], MetadataMismatch),  # a miner the plan does not give it
            ([[0, "ab" * 32, []]] + good[1:], MetadataMismatch),  # stored nowhere
            ([[0, "xyz", good[0][2]]] + good[1:], MalformedHeader),  # not a hash
            ([[0, "ab" * 32, [[m, "x"] for m in plan.miners_for(0)]]] + good[1:], MalformedHeader),  # not a tag
            ([[0, "ab" * 32, "[" * 3000 + "]" * 3000]] + good[1:], MalformedHeader),  # not a list
            ([good[1], good[0]] + good[2:], MalformedHeader)):  # out of order
        with pytest.raises(error):
            BroadcastRecord.decode(_record_bytes(rows), SPEC, plan, SENDER.hotkey)


def test_replica_order_spreads_readers_and_demotes_poor_miners() -> None:
    replicas = MINERS[:3]
    firsts = Counter(order_replicas(replicas, {}, Signer.from_uri(f"//r{i}").hotkey, s)[0]
                     for i in range(20) for s in range(10))
    assert set(firsts) == set(replicas) and min(firsts.values()) > 30  # 200 picks spread over three miners
    scores = {MINERS[0]: 0.9, MINERS[1]: 0.1, MINERS[2]: 0.3}
    for i in range(10):
        order = order_replicas(replicas, scores, f"reader{i}", 0)
        assert set(order[:1]) == {MINERS[0]} and order[1:] == [MINERS[2], MINERS[1]]
    # an unscored (new) miner is not demoted: some readers start with it; a miner scored 0 always comes last
    firsts = {order_replicas([MINERS[1], MINERS[3]], {MINERS[1]: 0.9}, f"r{i}", 0)[0] for i in range(20)}
    assert firsts == {MINERS[1], MINERS[3]}
    assert all(order_replicas([MINERS[1], MINERS[3]], {MINERS[1]: 0.9, MINERS[3]: 0.0}, f"r{i}", 0)[-1] == MINERS[3]
               for i in range(20))


def test_hosting_score_and_blend() -> None:
    cfg = ScoringConfig(hosting_weight=0.2, hosting_latency_weight=0.5, hosting_request_seconds=1.0)
    fast = HostingCheck("m", "s", 0, "ok", latency=0.0)
    slow = HostingCheck("m", "s", 1, "ok", latency=5.0)
    half = HostingCheck("m", "s", 2, "ok", latency=0.5)
    assert hosting_score(fast, cfg) == 1.0 and hosting_score(slow, cfg) == 0.5 and hosting_score(half, cfg) == 0.75
    for status in ("missing", "invalid", "wrong"):
        assert hosting_score(HostingCheck("m", "s", 0, status, latency=0.0), cfg) == 0.0
    a = SegmentCheck("a", 0, "ok", score=1.0)
    b = SegmentCheck("b", 0, "ok", score=0.5)
    hosting = [HostingCheck("a", "s", 0, "missing", score=0.0), HostingCheck("c", "s", 0, "ok", score=0.8)]
    scores = window_scores([a, b], hosting, cfg)
    assert scores == pytest.approx({"a": 0.8, "b": 0.5, "c": 0.8})  # a: 0.8 * 1 + 0.2 * 0; b, c: one duty each
