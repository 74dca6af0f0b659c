"""Test vectors of the protocol (docs/PROTOCOL.md): fixed inputs and the outputs this implementation gives for them.

``python -m mapreduce.vectors --out docs/vectors`` writes, for a second implementation to check itself against:

- ``spec.json``: the run spec every vector uses (``RunSpec.to_json``, byte for byte);
- ``keys.json``: the development keypairs (sr25519, from fixed URIs) that sign the objects;
- ``plan.json``: plans for fixed specs, windows, block hashes and miner sets, with every intermediate value;
- ``hashtree.json``: the sha256 tree and the proof-of-possession rows of a fixed 1 MiB+ byte string;
- ``objects/*.safetensors`` and ``objects.json``: signed objects (inputs, an output, records, evidence, a report),
  each with its header, canonical header, signed message, signature, tree and role-specific values;
- ``commitments.json``: on-chain commitment strings.

Everything is deterministic except signatures (sr25519 signatures are randomised): a rerun gives the same JSON
apart from signatures and key tags, and objects that differ only in their signature fields. ``tests/protocol/
test_vectors.py`` checks the committed files against this implementation.

Lives beside the roles (not in :mod:`mapreduce.wire`) because it also uses the reduction and the commitment format.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import torch

from .directory import BucketLocation
from .plan import Plan, make_plan, plan_seed
from .reduce import Accumulator, reduce_slices
from .spec import RunSpec, TensorSpec
from .wire import codec, hashtree, keys, strictjson
from .wire.broadcast_record import BroadcastRecord, spec_fingerprint
from .wire.proof import proof_rows, proof_salt
from .wire.records import Evidence, SegmentUpload, Served, UploadRecord, encode_report
from .wire.signing import Signer

# -- the fixed inputs -------------------------------------------------------------------------------------------------

RUN = "vectors"
WINDOW = 7
# Stands in for the hash of the window's anchor block (block 67: window 7 starts at block 70, finality_blocks 3): "0x" + 64 hex digits.
BLOCK_HASH = "0x" + hashlib.sha256(b"mapreduce/vectors block 70").hexdigest()
PEERS = tuple(f"//vectors/peer/{i}" for i in range(3))
MINERS = tuple(f"//vectors/miner/{i}" for i in range(3))
VALIDATORS = ("//vectors/validator/0",)
# Input values: peer p, element k of the flat vector: float32 of (((k * (2p + 3)) mod 2001) - 1000) * SCALE[p] / 7,
# computed in float64 and rounded to float32 (round to nearest even). The scales differ by 1e3 so the order of
# the fp32 additions shows in the mean's bits.
SCALES = (1.0, 0.001, 1000.0)
# Broadcast weights: element k is float32 of ((k mod 1000) - 500) / 256 (exact in float32).
HASHTREE_BYTES = 64 * hashtree.CHUNK_BYTES + 5000  # 65 chunks (the last one short), two groups


def spec() -> RunSpec:
    """The run spec of the vectors: 10,001 float32 elements in 2 segments (5,001 and 5,000: two chunks each)."""
    return RunSpec(run_id=RUN, tensors=(TensorSpec("layer.weight", (100, 100)), TensorSpec("layer.bias", (1,))),
                   segments=2, redundancy=2)


def signer(uri: str) -> Signer:
    return Signer.from_uri(uri)


def peer_values(p: int, numel: int) -> torch.Tensor:
    k = torch.arange(numel, dtype=torch.float64)
    return ((((k * (2 * p + 3)) % 2001) - 1000) * SCALES[p] / 7).to(torch.float32)


def broadcast_values(numel: int) -> torch.Tensor:
    k = torch.arange(numel, dtype=torch.float64)
    return (((k % 1000) - 500) / 256).to(torch.float32)


def hashtree_bytes(n: int = HASHTREE_BYTES) -> bytes:
    """sha256(b"mapreduce/vectors|" || i as 4 bytes big-endian) for i = 0, 1, ..., concatenated, cut to n bytes."""
    out = b"".join(hashlib.sha256(b"mapreduce/vectors|" + i.to_bytes(4, "big")).digest() for i in range(-(-n // 32)))
    return out[:n]


# -- helpers ----------------------------------------------------------------------------------------------------------

def header_of(data: bytes) -> tuple[int, bytes, dict]:
    """``(header length, header bytes as stored, parsed header)`` of a safetensors object."""
    (n,) = struct.unpack_from("<Q", data, 0)
    raw = bytes(data[8:8 + n])
    return n, raw, json.loads(raw)


def canonical_header(header: dict) -> bytes:
    """What the signature covers, before hashing: the header without ``signature``, keys sorted, no spaces."""
    unsigned = dict(header)
    unsigned["__metadata__"] = {k: v for k, v in header["__metadata__"].items() if k != "signature"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode()


def signed_message(header: dict) -> bytes:
    return b"mapreduce/v" + codec.VERSION.encode() + b"\n" + hashlib.sha256(canonical_header(header)).digest()


def object_vector(name: str, data: bytes, key: str, public_keys: dict[str, str]) -> dict[str, Any]:
    """Everything a reader computes from one object, for the JSON beside its file."""
    n, raw, header = header_of(data)
    md = header["__metadata__"]
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    leaves_entry = entries[codec.LEAVES]
    data_len = leaves_entry["data_offsets"][0]
    start = 8 + n
    leaves = data[start + data_len:start + leaves_entry["data_offsets"][1]]
    canonical = canonical_header(header)
    return {
        "file": f"objects/{name}.safetensors",
        "key": key,
        "size": len(data),
        "file_sha256": hashlib.sha256(data).hexdigest(),
        "header_length": n,
        "header_padding_spaces": len(raw) - len(raw.rstrip(b" ")),
        "header": raw.rstrip(b" ").decode(),
        "metadata": md,
        "tensors": entries,
        "data_start": start,
        "tree_bytes": data_len,
        "leaves": [leaves[i:i + hashtree.DIGEST].hex() for i in range(0, len(leaves), hashtree.DIGEST)],
        "groups": [md["groups"][i:i + 64] for i in range(0, len(md["groups"]), 64)],
        "root": md["sha256"],
        "canonical_header": canonical.decode(),
        "canonical_header_sha256": hashlib.sha256(canonical).hexdigest(),
        "signed_message": signed_message(header).hex(),
        "signer": md["hotkey"],
        "signer_public_key": public_keys[md["hotkey"]],
        "signature": md["signature"],
    }


def plan_vector(s: RunSpec, window: int, block_hash: str, miners: list[str], note: str) -> dict[str, Any]:
    plan = make_plan(s, window, block_hash, miners)
    seed = plan_seed(s, window, block_hash)
    active = sorted(set(miners))
    ordering = sorted(({"hotkey": m, "sort_key_preimage": f"{seed}|{m}",
                        "sort_key": hashlib.sha256(f"{seed}|{m}".encode()).hexdigest()}
                       for m in active), key=lambda e: e["sort_key"])
    return {
        "note": note,
        "spec": {"run_id": s.run_id, "numel": s.numel, "segments": s.segments, "redundancy": s.redundancy},
        "window": window,
        "block_hash": block_hash,
        "miners": list(miners),
        "seed_preimage": f"plan|{s.run_id}|{window}|{block_hash}",
        "seed": seed,
        "order": ordering,
        "redundancy_used": plan.redundancy,
        "segments": [{"index": g.index, "start": g.start, "end": g.end, "replicas": list(plan.miners_for(g.index))}
                     for g in plan.segments],
    }


def _dump(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")


# -- the vectors ------------------------------------------------------------------------------------------------------

def deterministic(s: RunSpec | None = None) -> dict[str, Any]:
    """The vectors that contain no signature: identical on every run (the test compares them whole)."""
    s = s or spec()
    peers, miners = [signer(u) for u in PEERS], [signer(u) for u in MINERS]
    validators = [signer(u) for u in VALIDATORS]
    key_list = [{"role": role, "uri": uri, "ss58": sg.hotkey, "public_key": sg.keypair.public_key.hex()}
                for role, uris, signers in (("peer", PEERS, peers), ("miner", MINERS, miners),
                                            ("validator", VALIDATORS, validators))
                for uri, sg in zip(uris, signers)]
    m = [x.hotkey for x in miners]
    wide = RunSpec(run_id="vectors-plan", tensors=(TensorSpec("w", (1003,)),), segments=10, redundancy=3)
    five = m + [signer(f"//vectors/miner/{i}").hotkey for i in range(3, 5)]
    plans = [
        plan_vector(s, WINDOW, BLOCK_HASH, m, "the run's plan for the objects below"),
        plan_vector(s, WINDOW, f"broadcast|{peers[0].hotkey}|{BLOCK_HASH}", m,
                    "the broadcast plan of sender peer 0 in the same window: block_hash is "
                    "'broadcast|{sender}|{hash of the window's anchor block}'"),
        plan_vector(wide, 3, "0x" + hashlib.sha256(b"mapreduce/vectors block 30").hexdigest(),
                    [five[4], five[1], five[3], five[0], five[2], five[1]],
                    "5 miners (given unsorted, one twice), 10 segments of 1003 elements (the first 3 have 101), "
                    "r = 3"),
        plan_vector(wide, 3, "0x" + hashlib.sha256(b"mapreduce/vectors block 30").hexdigest(), m[:2],
                    "r = 3 but only 2 active miners: r' = 2"),
        plan_vector(wide, 3, "0x" + hashlib.sha256(b"mapreduce/vectors block 30").hexdigest(), [],
                    "no active miner: every segment has no replica"),
    ]

    data = hashtree_bytes()
    leaves = bytes(hashtree.compute_leaves(memoryview(data)))
    groups = hashtree.group_hashes(leaves)
    salt_args = (RUN, WINDOW, 0, m[0])
    salt = proof_salt(*salt_args)
    rows = proof_rows(memoryview(data), salt).numpy().tobytes()
    tree = {
        "data_rule": "sha256(b'mapreduce/vectors|' || uint32_be(i)) for i = 0, 1, 2, ..., concatenated, "
                     f"cut to {len(data)} bytes",
        "data_length": len(data),
        "data_sha256": hashlib.sha256(data).hexdigest(),
        "chunk_bytes": hashtree.CHUNK_BYTES,
        "group_leaves": hashtree.GROUP_LEAVES,
        "leaves": [leaves[i:i + 32].hex() for i in range(0, len(leaves), 32)],
        "groups": [g.hex() for g in groups],
        "root": hashtree.root_of(groups).hex(),
        "empty": {"data_length": 0, "leaves": [], "groups": [], "root": hashtree.root_of([]).hex()},
        "proof": {
            "salt_preimage": "proof|{}|{}|{}|{}".format(*salt_args),
            "salt": salt.hex(),
            "rows": [rows[i:i + 8].hex() for i in range(0, len(rows), 8)],
        },
    }

    # Encoded (mr2) and decoded alike; the last ones are mr1 strings, still decoded (never written), with what
    # they decode to. Fields of an mr2 entry construct its BucketLocation; "commitment" is its encoding.
    account, r2_key, r2_secret = "0123456789abcdef" * 2, "fedcba9876543210" * 2, "00112233445566778899aabbccddeeff" * 2
    locations = [
        BucketLocation("miner", "vectors-miner-0", "http://203.0.113.7:9000", "mrminerpub0000001",
                       "0123456789abcdef0123456789abcdef"),
        BucketLocation("peer", "vectors-peer-0", region="us-east-1"),
        BucketLocation("validator", "vectors-validator-0", "https://s3.example.org"),
        BucketLocation("miner", "vectors-miner-1", "", "AKIAVECTORSEXAMPLE01", "x" * 40, region="eu-central-1"),
        BucketLocation("miner", "vectors-miner-2", f"https://{account}.r2.cloudflarestorage.com", r2_key, r2_secret),
        BucketLocation("peer", "vectors-peer-1", f"https://{account}.eu.r2.cloudflarestorage.com"),
        BucketLocation("miner", "vectors-miner-3", "http://203.0.113.7:9000", "mrminerpub0000001",
                       "0123456789abcdef0123456789abcdef", path_style=True),
    ]
    legacy = ["mr1|m|vectors-miner-0|http://203.0.113.7:9000|mrminerpub0000001|0123456789abcdef0123456789abcdef",
              "mr1|p|vectors-peer-0|||"]
    commitments = [{"role": loc.role, "bucket": loc.bucket, "endpoint": loc.endpoint,
                    "access_key_id": loc.access_key_id, "secret_access_key": loc.secret_access_key,
                    "provider": loc.provider, "region": loc.region, "path_style": loc.path_style,
                    "commitment": text, "bytes": len(text.encode())}
                   for loc, text in [*((loc, loc.encode()) for loc in locations),
                                     *((BucketLocation.decode(text), text) for text in legacy)]]
    return {"spec.json": s.to_json(), "keys.json": key_list, "plan.json": plans, "hashtree.json": tree,
            "commitments.json": commitments}


def objects(s: RunSpec | None = None) -> tuple[dict[str, bytes], list[dict[str, Any]]]:
    """The signed objects (file name -> bytes) and their vectors."""
    s = s or spec()
    peers, miners = [signer(u) for u in PEERS], [signer(u) for u in MINERS]
    validator = signer(VALIDATORS[0])
    public = {x.hotkey: x.keypair.public_key.hex() for x in [*peers, *miners, validator]}
    plan: Plan = make_plan(s, WINDOW, BLOCK_HASH, [x.hotkey for x in miners])
    seg0, seg1 = plan.segments
    by_hotkey = {x.hotkey: x for x in miners}
    files: dict[str, bytes] = {}
    vectors: list[dict[str, Any]] = []

    def add(name: str, enc: codec.Encoded, key: keys.ObjectKey, **extra: Any) -> bytes:
        data = bytes(enc.data)
        files[f"{name}.safetensors"] = data
        v = object_vector(name, data, str(key), public)
        v["name"] = name
        v.update(extra)
        vectors.append(v)
        return data

    def tagged(writer: Signer, segment: int, role: str, owner: str) -> tuple[str, dict[str, str]]:
        tag = keys.make_tag(writer, RUN, WINDOW, segment, role, owner)
        message = f"mapreduce/v2/key|{RUN}|{WINDOW}|{segment}|{role}|{writer.hotkey}|{owner}"
        return tag, {"owner": owner, "tag_message": message, "tag": tag}

    # Inputs: every peer's segment 0, in the bucket of the segment's first replica; and peer 0's segment 1.
    miner = plan.miners_for(0)[0]
    inputs: list[tuple[str, str, str, torch.Tensor, bytes]] = []  # hotkey, sha256, tag, values, data bytes
    upload_rows: dict[int, SegmentUpload] = {}
    for p, peer in enumerate(peers):
        values = peer_values(p, s.numel)
        for seg in (seg0, seg1) if p == 0 else (seg0,):
            piece = values[seg.start:seg.end].to(s.wire.data_dtype)  # the vectors' run is fp32
            enc = codec.encode(codec.ObjectMeta(RUN, WINDOW, "in", peer.hotkey, seg.index), {"data": piece}, peer)
            owner = plan.miners_for(seg.index)[0]
            tag, tag_vector = tagged(peer, seg.index, "in", owner)
            key = keys.input_key(RUN, WINDOW, seg.index, peer.hotkey, tag)
            data = add(f"in-s{seg.index:05d}-peer{p}", enc, key, role="in", segment=seg.index, peer_index=p,
                       values_rule=f"peer_values(p={p}) of the README, elements [{seg.start}, {seg.end})",
                       **tag_vector)
            if seg.index == 0:
                inputs.append((peer.hotkey, enc.sha256, tag, piece, data))
            if p == 0:
                stored = [(owner, tag)] + [(m, keys.make_tag(peer, RUN, WINDOW, seg.index, "in", m))
                                          for m in plan.miners_for(seg.index)[1:]]
                upload_rows[seg.index] = SegmentUpload(enc.sha256, tuple(stored))

    # The output of segment 0 by its first replica: canonical order (hotkeys sorted), fp32, then the mean.
    me = by_hotkey[miner]
    salt = proof_salt(RUN, WINDOW, 0, miner)
    acc = Accumulator(seg0.numel)
    for hotkey, sha, tag, piece, data in sorted(inputs, key=lambda i: i[0]):
        n, _, header = header_of(data)
        start = 8 + n
        body = memoryview(data)[start:start + header["data"]["data_offsets"][1]]
        acc.add(hotkey, sha, piece, proof_rows(body, salt), tag)
    mean = acc.mean(s.wire.output_dtype)
    listed = [[h, sha, t] for h, sha, t in acc.inputs]
    digest = hashlib.sha256(mean.numpy().tobytes()).hexdigest()
    proof = torch.stack(acc.proofs)  # [inputs, chunks, 8]
    meta = codec.ObjectMeta(RUN, WINDOW, "out", miner, 0, extra={
        "inputs": strictjson.dumps(listed), "count": str(len(listed)), "mean": digest})
    enc = codec.encode(meta, {"data": mean, "proof": proof.transpose(0, 1)}, me)
    wrong = reduce_slices([piece for _, _, _, piece, _ in inputs], s.wire.output_dtype)  # URI order: not canonical
    output = add("out-s00000", enc, keys.output_key(RUN, WINDOW, 0, miner), role="out", segment=0,
                 inputs=listed, count=len(listed), mean_sha256=digest,
                 mean_sha256_if_added_in_another_order=hashlib.sha256(
                     wrong.numpy().tobytes()).hexdigest(),
                 proof_salt_preimage=f"proof|{RUN}|{WINDOW}|0|{miner}", proof_salt=salt.hex(),
                 proof_shape=list(proof.transpose(0, 1).shape),
                 proof_rows=[[proof[i, c].numpy().tobytes().hex() for i in range(proof.shape[0])]
                             for c in range(proof.shape[1])])

    # Peer 0's upload record.
    record = UploadRecord(peers[0].hotkey, WINDOW, upload_rows)
    add("record-peer0", record.encode(s, peers[0]), keys.record_key(RUN, WINDOW, peers[0].hotkey), role="record",
        uploads=[[i, u.sha256, [[m, t] for m, t in u.stored]] for i, u in sorted(upload_rows.items())])

    # Peer 0's broadcast record: fp32 copies of the weights, per the broadcast plan (copies not stored here: their
    # content hashes are the roots of their data, which carry no signature).
    bplan = make_plan(s, WINDOW, f"broadcast|{peers[0].hotkey}|{BLOCK_HASH}", [x.hotkey for x in miners])
    weights = broadcast_values(s.numel)
    hashes, stored_at = [], []
    for seg in bplan.segments:
        copy = codec.encode(codec.ObjectMeta(RUN, WINDOW, "bcast", peers[0].hotkey, seg.index),
                            {"data": weights[seg.start:seg.end].clone()}, peers[0])
        hashes.append(copy.sha256)
        stored_at.append(tuple((m, keys.make_tag(peers[0], RUN, WINDOW, seg.index, "bcast", m))
                               for m in bplan.miners_for(seg.index)))
    brecord = BroadcastRecord(WINDOW, peers[0].hotkey, tuple(hashes), tuple(stored_at))
    add("bcast-record-peer0", brecord.encode(s, peers[0]), keys.broadcast_record_key(RUN, WINDOW, peers[0].hotkey),
        role="bcast-record", spec_fingerprint=spec_fingerprint(s),
        spec_fingerprint_preimage=json.dumps([[t.name, list(t.shape)] for t in s.tensors], separators=(",", ":")),
        segments=[[i, h, [[m, t] for m, t in st]] for i, (h, st) in enumerate(zip(hashes, stored_at))],
        copies_rule="copy i holds broadcast_values of the README, elements of segment i, as F32")

    # Peer 1's evidence: the output's header as the miner served it (its first 8 + header length bytes).
    n_out = header_of(output)[0]
    served = Served(miner, 0, len(output), output[:8 + n_out])
    add("evidence-peer1", Evidence(peers[1].hotkey, WINDOW, (served,)).encode(s, peers[1]),
        keys.evidence_key(RUN, WINDOW, peers[1].hotkey), role="evidence",
        served=[[served.miner, served.segment, served.size, len(served.header)]])

    # The validator's report: a small body of the shape validators write (WindowReport, mapreduce/validator.py).
    body = {"checks": [], "ema": {x.hotkey: round(0.3 * (i + 1) / 3, 6) for i, x in enumerate(miners)},
            "rejected": {}, "scores": {x.hotkey: round((i + 1) / 3, 6) for i, x in enumerate(miners)},
            "validator": validator.hotkey, "window": WINDOW}
    add("report-validator0", encode_report(RUN, WINDOW, validator, body),
        keys.report_key(RUN, WINDOW, validator.hotkey), role="report", report=body,
        report_json=strictjson.dumps(body))
    return files, vectors


def write(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "objects").mkdir(exist_ok=True)
    for name, value in deterministic().items():
        if isinstance(value, str):
            (out / name).write_text(value)
        else:
            _dump(out / name, value)
    files, vectors = objects()
    for old in (out / "objects").glob("*.safetensors"):
        if old.name not in files:
            old.unlink()
    for name, data in files.items():
        (out / "objects" / name).write_bytes(data)
    _dump(out / "objects.json", vectors)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mapreduce.vectors", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/vectors", help="directory to write (default: docs/vectors)")
    args = parser.parse_args(argv)
    write(Path(args.out))
    print(f"wrote test vectors to {args.out}")


if __name__ == "__main__":
    main()
