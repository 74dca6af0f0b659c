"""The published test vectors (docs/vectors/) against this implementation.

Everything deterministic is recomputed with the project's own code and compared; every signature and key tag is
verified; every object is decoded by the project's decoder, and re-encoded with the same metadata and tensors to
the same bytes apart from the signature. So a change to the plan's ordering, the hash tree, the header's form, the
signed message, the reduction or a record format fails here until the vectors are regenerated
(``python -m mapreduce.vectors --out docs/vectors``) and the change is owned up to in docs/PROTOCOL.md.
"""
from __future__ import annotations

import hashlib
import json
import re
import struct
from pathlib import Path

import pytest
import torch

from mapreduce import vectors
from mapreduce.audit import listed_inputs, listed_mean, mean_digest
from mapreduce.directory import BucketLocation
from mapreduce.plan import make_plan, segment_bounds
from mapreduce.reduce import Accumulator
from mapreduce.errors import BadSignature, HashMismatch
from mapreduce.spec import RunSpec, TensorSpec
from mapreduce.wire import codec, expect, hashtree, keys
from mapreduce.wire.broadcast_record import BroadcastRecord, spec_fingerprint
from mapreduce.wire.proof import proof_rows, proof_salt
from mapreduce.wire.records import Evidence, UploadRecord, decode_report
from mapreduce.wire.signing import verify

DIR = Path(__file__).resolve().parents[2] / "docs" / "vectors"
SIGNATURE = re.compile(rb'"signature":"[0-9a-f]{128}"')


def load(name: str):
    return json.loads((DIR / name).read_text())


@pytest.fixture(scope="module")
def spec() -> RunSpec:
    return RunSpec.load(DIR / "spec.json")


@pytest.fixture(scope="module")
def objs() -> dict[str, dict]:
    return {o["name"]: o for o in load("objects.json")}


def raw(o: dict) -> bytes:
    return (DIR / o["file"]).read_bytes()


# -- deterministic files: identical to what the generator makes now ---------------------------------------------

def test_deterministic_files_are_current() -> None:
    for name, value in vectors.deterministic().items():
        committed = (DIR / name).read_text()
        if isinstance(value, str):
            assert committed == value, name
        else:
            assert json.loads(committed) == value, f"{name} is stale: python -m mapreduce.vectors --out docs/vectors"


def test_spec_round_trips(spec: RunSpec) -> None:
    assert spec == vectors.spec()
    assert spec.to_json() == (DIR / "spec.json").read_text()


def test_keys_come_from_their_uris() -> None:
    for k in load("keys.json"):
        signer = vectors.signer(k["uri"])
        assert (signer.hotkey, signer.keypair.public_key.hex()) == (k["ss58"], k["public_key"])


# -- the plan ---------------------------------------------------------------------------------------------------

def test_plans(spec: RunSpec) -> None:
    for case in load("plan.json"):
        s = case["spec"]
        run_spec = RunSpec(run_id=s["run_id"], tensors=(TensorSpec("w", (s["numel"],)),),
                           segments=s["segments"], redundancy=s["redundancy"])
        plan = make_plan(run_spec, case["window"], case["block_hash"], case["miners"])
        assert case["seed_preimage"] == f"plan|{s['run_id']}|{case['window']}|{case['block_hash']}"
        assert plan.seed == case["seed"] == hashlib.sha256(case["seed_preimage"].encode()).hexdigest()
        # the ordering hash, by hand: sha256 of the UTF-8 text "{seed hex}|{hotkey}", compared as bytes
        by_hand = sorted(set(case["miners"]), key=lambda m: hashlib.sha256(f"{plan.seed}|{m}".encode()).digest())
        assert [e["hotkey"] for e in case["order"]] == by_hand
        for e in case["order"]:
            assert e["sort_key"] == hashlib.sha256(e["sort_key_preimage"].encode()).hexdigest()
        assert plan.redundancy == case["redundancy_used"]
        assert [(g.index, g.start, g.end) for g in plan.segments] == \
               [(g["index"], g["start"], g["end"]) for g in case["segments"]]
        assert [list(r) for r in plan.replicas] == [g["replicas"] for g in case["segments"]]
    main = load("plan.json")[0]
    assert main["spec"]["numel"] == spec.numel and main["spec"]["segments"] == spec.segments


# -- the hash tree and proof rows ---------------------------------------------------------------------------------

def test_hashtree() -> None:
    tree = load("hashtree.json")
    data = vectors.hashtree_bytes(tree["data_length"])
    assert hashlib.sha256(data).hexdigest() == tree["data_sha256"]
    assert (tree["chunk_bytes"], tree["group_leaves"]) == (hashtree.CHUNK_BYTES, hashtree.GROUP_LEAVES)
    leaves = bytes(hashtree.compute_leaves(memoryview(data)))
    by_hand = [hashlib.sha256(data[i:i + 16384]).digest() for i in range(0, len(data), 16384)]
    assert leaves == b"".join(by_hand)
    assert [leaves[i:i + 32].hex() for i in range(0, len(leaves), 32)] == tree["leaves"]
    groups = hashtree.group_hashes(leaves)
    assert [g.hex() for g in groups] == tree["groups"]
    assert len(tree["groups"]) == 2 and len(tree["leaves"]) == 65
    assert hashtree.root_of(groups).hex() == tree["root"]
    assert hashtree.root_of([]).hex() == tree["empty"]["root"] == hashlib.sha256(b"").hexdigest()
    p = tree["proof"]
    run, window, segment, miner = p["salt_preimage"].split("|")[1:]
    salt = proof_salt(run, int(window), int(segment), miner)
    assert salt.hex() == p["salt"] == hashlib.sha256(p["salt_preimage"].encode()).hexdigest()
    rows = proof_rows(memoryview(data), salt).numpy().tobytes()
    assert [rows[i:i + 8].hex() for i in range(0, len(rows), 8)] == p["rows"]
    assert p["rows"][1] == hashlib.sha256(salt + data[16384:32768]).digest()[:8].hex()


# -- every object -------------------------------------------------------------------------------------------------

def test_object_headers_and_signatures(objs: dict[str, dict]) -> None:
    for o in objs.values():
        data = raw(o)
        assert len(data) == o["size"] and hashlib.sha256(data).hexdigest() == o["file_sha256"], o["name"]
        (n,) = struct.unpack_from("<Q", data, 0)
        assert n == o["header_length"] and (8 + n) % 8 == 0
        text = data[8:8 + n]
        assert text == o["header"].encode() + b" " * o["header_padding_spaces"]
        header = json.loads(text)
        # the header as written is the canonical JSON form (keys sorted, no spaces), padded with spaces
        assert o["header"] == json.dumps(header, sort_keys=True, separators=(",", ":"))
        assert header["__metadata__"] == o["metadata"]
        assert all(isinstance(v, str) for v in o["metadata"].values())
        canonical = json.dumps({**header, "__metadata__": {k: v for k, v in header["__metadata__"].items()
                                                           if k != "signature"}},
                               sort_keys=True, separators=(",", ":")).encode()
        assert canonical == o["canonical_header"].encode()
        assert hashlib.sha256(canonical).hexdigest() == o["canonical_header_sha256"]
        message = codec._signed_message(header)
        assert message == b"mapreduce/v5\n" + hashlib.sha256(canonical).digest()
        assert message.hex() == o["signed_message"]
        assert verify(o["signer"], message, bytes.fromhex(o["signature"])), o["name"]
        assert o["signer"] == o["metadata"]["hotkey"]
        # the tree over the data bytes (the leaves tensor excluded), and the leaves stored at the end
        start, tree_bytes = o["data_start"], o["tree_bytes"]
        body = data[start:start + tree_bytes]
        leaves = bytes(hashtree.compute_leaves(memoryview(body)))
        assert [leaves[i:i + 32].hex() for i in range(0, len(leaves), 32)] == o["leaves"]
        assert data[start + tree_bytes:] == leaves
        groups = hashtree.group_hashes(leaves)
        assert [g.hex() for g in groups] == o["groups"] and "".join(o["groups"]) == o["metadata"]["groups"]
        assert hashtree.root_of(groups).hex() == o["root"] == o["metadata"]["sha256"]
        assert keys.ObjectKey.parse(o["key"]).untagged == codec.ObjectMeta(
            o["metadata"]["run"], int(o["metadata"]["window"]), o["metadata"]["role"], o["metadata"]["hotkey"],
            int(o["metadata"]["segment"]) if "segment" in o["metadata"] else None).key


def _expect(spec: RunSpec, o: dict, n_inputs: int = 3) -> codec.Expect:
    seg = segment_bounds(spec.numel, spec.segments)[o["segment"]]
    if o["role"] == "in":
        return expect.input_expect(spec, seg, lambda h: h == o["signer"])
    return expect.output_expect(spec, seg, o["signer"], n_inputs)


def _reencode(o: dict, decoded: codec.Decoded) -> bytes:
    """The same metadata and tensors, signed again: every byte but the signature's must come out the same."""
    signer = next(vectors.signer(k["uri"]) for k in load("keys.json") if k["ss58"] == o["signer"])
    return bytes(codec.encode(decoded.meta, decoded.tensors, signer).data)


def _same_but_signature(a: bytes, b: bytes) -> bool:
    return SIGNATURE.sub(b"SIG", a) == SIGNATURE.sub(b"SIG", b) and len(a) == len(b)


def test_inputs_decode_and_reencode(spec: RunSpec, objs: dict[str, dict]) -> None:
    for o in (o for o in objs.values() if o["role"] == "in"):
        data = raw(o)
        decoded = codec.decode(data, o["key"], _expect(spec, o))
        assert decoded.sha256 == o["root"]
        seg = segment_bounds(spec.numel, spec.segments)[o["segment"]]
        values = vectors.peer_values(o["peer_index"], spec.numel)[seg.start:seg.end]
        assert torch.equal(decoded.tensors["data"], values)
        assert _same_but_signature(_reencode(o, decoded), data)
        key = keys.ObjectKey.parse(o["key"])
        assert key.tag == o["tag"]
        assert o["tag_message"].encode() == keys._tag_message(key.run, key.window, key.segment, key.role,
                                                              key.hotkey, o["owner"])
        assert keys.tag_valid(key, o["owner"]) and not keys.tag_valid(key, o["signer"])


def test_output_is_the_canonical_mean(spec: RunSpec, objs: dict[str, dict]) -> None:
    o = objs["out-s00000"]
    data = raw(o)
    decoded = codec.decode(data, o["key"], _expect(spec, o))
    assert _same_but_signature(_reencode(o, decoded), data)
    assert [list(i) for i in listed_inputs(decoded.meta)] == o["inputs"]
    assert listed_mean(decoded.meta) == o["mean_sha256"] == mean_digest(decoded.tensors["data"])
    assert decoded.meta.extra["count"] == str(o["count"]) == "3"
    inputs = {objs[n]["metadata"]["hotkey"]: objs[n] for n in objs if n.startswith("in-s00000-")}
    salt = proof_salt(spec.run_id, vectors.WINDOW, 0, o["signer"])
    assert salt.hex() == o["proof_salt"]
    acc = Accumulator(decoded.tensors["data"].numel())
    for hotkey, sha, tag in o["inputs"]:  # listed order = hotkeys sorted
        i = inputs[hotkey]
        assert (i["root"], keys.ObjectKey.parse(i["key"]).tag) == (sha, tag)
        got = codec.decode(raw(i), i["key"], _expect(spec, i))
        body = memoryview(raw(i))[i["data_start"]:i["data_start"] + i["tree_bytes"]]
        acc.add(hotkey, sha, got.tensors["data"], proof_rows(body, salt), tag)
    mean = acc.mean(spec.wire.output_dtype)
    assert torch.equal(mean, decoded.tensors["data"]) and mean_digest(mean) == o["mean_sha256"]
    assert mean_digest(mean) != o["mean_sha256_if_added_in_another_order"]
    proof = torch.stack(acc.proofs).transpose(0, 1)
    assert list(proof.shape) == o["proof_shape"] == list(decoded.tensors["proof"].shape)
    assert torch.equal(proof, decoded.tensors["proof"])
    assert [[bytes(decoded.tensors["proof"][c, i].tolist()).hex() for i in range(proof.shape[1])]
            for c in range(proof.shape[0])] == o["proof_rows"]


def test_upload_record(spec: RunSpec, objs: dict[str, dict]) -> None:
    o = objs["record-peer0"]
    data = raw(o)
    record = UploadRecord.decode(data, spec, vectors.WINDOW, o["signer"])
    assert [[s, u.sha256, [list(p) for p in u.stored]] for s, u in sorted(record.uploads.items())] == o["uploads"]
    assert json.loads(o["metadata"]["uploads"]) == o["uploads"]
    ins = {(x["segment"], x["signer"]): x for x in objs.values() if x["role"] == "in"}
    for segment, sha, stored in o["uploads"]:
        assert ins[(segment, o["signer"])]["root"] == sha
        for miner, tag in stored:
            assert keys.tag_valid(keys.input_key(spec.run_id, vectors.WINDOW, segment, o["signer"], tag), miner)
    assert o["root"] == hashlib.sha256(b"").hexdigest() and o["leaves"] == [] and o["metadata"]["groups"] == ""
    decoded = codec.decode(data, o["key"], codec.Expect({}, lambda h: True, expect.record_max_bytes(spec)))
    assert _same_but_signature(_reencode(o, decoded), data)


def test_broadcast_record(spec: RunSpec, objs: dict[str, dict]) -> None:
    o = objs["bcast-record-peer0"]
    data = raw(o)
    sender = o["signer"]
    miners = [k["ss58"] for k in load("keys.json") if k["role"] == "miner"]
    plan = make_plan(spec, vectors.WINDOW, f"broadcast|{sender}|{vectors.BLOCK_HASH}", miners)
    record = BroadcastRecord.decode(data, spec, plan, sender)
    assert o["spec_fingerprint"] == spec_fingerprint(spec) == o["metadata"]["spec"]
    assert hashlib.sha256(o["spec_fingerprint_preimage"].encode()).hexdigest() == o["spec_fingerprint"]
    assert (o["metadata"]["numel"], o["metadata"]["dtype"]) == (str(spec.numel), "F32")
    weights = vectors.broadcast_values(spec.numel)
    for (i, sha, stored), seg in zip(o["segments"], plan.segments):
        body = weights[seg.start:seg.end].numpy().tobytes()
        assert sha == record.sha256[i] == hashtree.root_of(hashtree.group_hashes(
            bytes(hashtree.compute_leaves(memoryview(body))))).hex()
        assert [m for m, _ in stored] == list(plan.miners_for(i))
        for miner, tag in stored:
            assert keys.tag_valid(keys.broadcast_key(spec.run_id, vectors.WINDOW, i, sender, tag), miner)
    decoded = codec.decode(data, o["key"], codec.Expect({}, lambda h: True, expect.record_max_bytes(spec)))
    assert _same_but_signature(_reencode(o, decoded), data)


def test_evidence(spec: RunSpec, objs: dict[str, dict]) -> None:
    o, out = objs["evidence-peer1"], objs["out-s00000"]
    data = raw(o)
    evidence = Evidence.decode(data, spec, vectors.WINDOW, o["signer"])
    (served,) = evidence.served
    assert [[served.miner, served.segment, served.size, len(served.header)]] == o["served"]
    assert served.header == raw(out)[:8 + out["header_length"]] and served.size == out["size"]
    header = codec.parse_header(served.header, served.size, out["key"], _expect(spec, out))
    assert header.sha256 == out["root"]
    decoded = codec.decode(data, o["key"], codec.Expect({"headers": ("U8", (None,))}, lambda h: True,
                                                         expect.evidence_max_bytes(spec), max_header_bytes=64 * 1024))
    assert _same_but_signature(_reencode(o, decoded), data)


def test_report(objs: dict[str, dict]) -> None:
    o = objs["report-validator0"]
    data = raw(o)
    body = decode_report(data, vectors.RUN, vectors.WINDOW, o["signer"])
    # Fields the report leaves out read as empty; every field it has comes back as signed.
    assert {k: body[k] for k in o["report"]} == o["report"] == json.loads(o["report_json"])
    assert all(body[k] in ([], {}) for k in set(body) - set(o["report"]))
    decoded = codec.decode(data, o["key"], codec.Expect({"report": ("U8", (None,))}, lambda h: True, 1 << 20))
    assert bytes(decoded.tensors["report"].tolist()) == o["report_json"].encode()
    assert _same_but_signature(_reencode(o, decoded), data)


def test_a_changed_byte_is_refused(spec: RunSpec, objs: dict[str, dict]) -> None:
    """The vectors are not accepted by accident: one flipped bit in the data or the header is refused."""
    o = objs["in-s00000-peer0"]
    data = bytearray(raw(o))
    data[o["data_start"] + 20000] ^= 1
    with pytest.raises(HashMismatch):
        codec.decode(bytes(data), o["key"], _expect(spec, o))
    data = bytearray(raw(o))
    at = data.index(b'"sha256":"') + len(b'"sha256":"')
    data[at] = ord("0") if data[at] != ord("0") else ord("1")
    with pytest.raises(BadSignature):
        codec.decode(bytes(data), o["key"], _expect(spec, o))


# -- commitments --------------------------------------------------------------------------------------------------

def test_commitments() -> None:
    vectors = load("commitments.json")
    for c in vectors:
        loc = BucketLocation(c["role"], c["bucket"], c["endpoint"], c["access_key_id"], c["secret_access_key"],
                             c["provider"], c["region"], c["path_style"])
        assert len(c["commitment"].encode()) == c["bytes"] <= 128
        assert BucketLocation.decode(c["commitment"]) == loc
        if c["provider"] != "mr1":  # mr1 is decoded only
            assert loc.encode() == c["commitment"]
    # One of each provider, and mr1, so that every reader of the format has a case to check.
    assert {c["provider"] for c in vectors} == {"aws", "r2", "s3", "mr1"}
