"""What a broadcast is on the wire: its plan, the shape of its segment copies, and the sender's signed record.

Shared by the sender and its receivers (:mod:`mapreduce.broadcast`) and by validators checking that miners host
the copies (:mod:`mapreduce.hosting`), so all three agree on every rule.

- **Plan.** The run's plan function (:meth:`mapreduce.network.Network.broadcast_plan`) over the same segments and miners, seeded
  with ``"broadcast|{sender}|{hash of the window's first block}"``: a pure function of public facts that anyone can
  recompute, and different per sender, so two peers broadcasting in one window load different miners.
- **Copies.** Segment ``i`` is a signed object at ``{run}/w…/bcast/s…/{sender}/{tag}`` in the bucket of each miner
  the plan gives it (the tag made by the sender for that miner's bucket: mapreduce/wire/keys.py), holding one ``F32``
  tensor ``data`` of the segment's length. Always fp32, whatever the run's wire
  dtype: a broadcast carries weights, which must arrive bit for bit, and fp32 holds any fp32, bf16 or fp16 value
  exactly.
- **Record.** ``{run}/w…/bcast-record/{sender}`` in the sender's own bucket, written after the copies: for each
  segment its content hash and the miners that accepted a copy with the key tag of the copy there, plus a
  fingerprint of the run spec's tensors.
  Receivers accept a copy only if its hash is the recorded one; validators score miners against it.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from ..errors import MalformedHeader, MetadataMismatch, ShapeMismatch
from ..plan import Plan
from ..spec import RunSpec
from . import strictjson
from .codec import Encoded, ObjectMeta, decode, encode
from .expect import BROADCAST_DTYPE, record_expect
from .keys import ObjectKey, broadcast_key, broadcast_record_key
from .signing import Signer

_SHA = re.compile(r"[0-9a-f]{64}")
_TAG = re.compile(r"[0-9a-f]{128}")


def spec_fingerprint(spec: RunSpec) -> str:
    """sha256 of the run's tensor names and shapes, in order: a receiver with another spec is told so plainly."""
    tensors = [[t.name, list(t.shape)] for t in spec.tensors]
    return hashlib.sha256(json.dumps(tensors, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class BroadcastRecord:
    """The sender's signed account of one broadcast: per segment, its content hash and where copies are."""

    window: int
    sender: str
    sha256: tuple[str, ...]  # segment -> content hash (root of the copy's sha256 tree)
    stored_at: tuple[tuple[tuple[str, str], ...], ...]  # segment -> (miner, key tag) of each copy, in plan order

    def miners_for(self, segment: int) -> tuple[str, ...]:
        return tuple(m for m, _ in self.stored_at[segment])

    def copy_key(self, run: str, segment: int, miner: str) -> ObjectKey:
        tag = dict(self.stored_at[segment])[miner]
        return broadcast_key(run, self.window, segment, self.sender, tag)

    def encode(self, spec: RunSpec, signer: Signer) -> Encoded:
        rows = [[i, h, [[m, t] for m, t in stored]] for i, (h, stored) in enumerate(zip(self.sha256, self.stored_at))]
        meta = ObjectMeta(spec.run_id, self.window, "bcast-record", self.sender, extra={
            "segments": strictjson.dumps(rows), "spec": spec_fingerprint(spec),
            "numel": str(spec.numel), "dtype": BROADCAST_DTYPE})
        return encode(meta, {}, signer)

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview, spec: RunSpec, plan: Plan, sender: str) -> "BroadcastRecord":
        """Check a downloaded record against the spec and the broadcast plan; raises an ``InvalidObject``."""
        key = str(broadcast_record_key(spec.run_id, plan.window, sender))
        expect = record_expect(spec, sender)
        extra = decode(data, key, expect).meta.extra
        if extra.get("spec") != spec_fingerprint(spec) or extra.get("numel") != str(spec.numel):
            raise ShapeMismatch("the broadcast is for other tensors than this run spec's (fingerprint differs)")
        if extra.get("dtype") != BROADCAST_DTYPE:
            raise MetadataMismatch(f"broadcast dtype {extra.get('dtype')!r:.20}, expected {BROADCAST_DTYPE}")
        rows = strictjson.loads(extra.get("segments", "null"), "the record's segment list")
        if not isinstance(rows, list) or len(rows) != len(plan.segments):
            raise MetadataMismatch(f"the record must list {len(plan.segments)} segments")
        hashes, stored = [], []
        for i, row in enumerate(rows):
            if not (isinstance(row, list) and len(row) == 3 and row[0] == i and type(row[0]) is int
                    and isinstance(row[1], str) and _SHA.fullmatch(row[1]) and isinstance(row[2], list)
                    and all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p)
                            and _TAG.fullmatch(p[1]) for p in row[2])):
                raise MalformedHeader(f"record row {i} is not [segment, sha256, [[miner, tag], ...]]")
            replicas = plan.miners_for(i)
            miners = [p[0] for p in row[2]]
            if not miners or len(set(miners)) != len(miners) or not set(miners) <= set(replicas):
                raise MetadataMismatch(f"record stores segment {i} at {len(miners)} miner(s) outside its plan "
                                       "replicas, repeated, or nowhere")
            hashes.append(row[1])
            tags = {m: t for m, t in row[2]}
            stored.append(tuple((m, tags[m]) for m in replicas if m in tags))
        return cls(plan.window, sender, tuple(hashes), tuple(stored))
