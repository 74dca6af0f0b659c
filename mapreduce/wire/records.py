"""Signed records: the upload record a peer writes each window, and a validator's per-window report.

Each kind has one codec here, ``encode`` and ``decode``, so writer and readers cannot drift apart. Both are signed
protocol objects (:mod:`mapreduce.wire.codec`) in their writer's own bucket; decoding checks the signature, then parses
the JSON inside with :mod:`mapreduce.wire.strictjson` against a fixed shape, so a record or report that anyone could
have written, or that its hostile writer signed, ends as an :class:`~mapreduce.errors.InvalidObject` with a reason,
never as an exception of another type.

- **Upload record** ``{run}/w…/record/{peer}``: per segment, the content hash of the peer's input and, for each
  miner that accepted it, the key tag under which it lies there (:mod:`mapreduce.wire.keys`). It says what the peer
  uploaded where, so a miner that drops the input leaves a trace; and if the record contradicts the peer's own
  signed inputs, the peer is the one at fault.
- **Report** ``{run}/w…/report/{validator}``: the validator's window report (checks, scores, EMAs) as UTF-8 JSON
  in a ``U8`` tensor ``report``, covered by the hash tree and the validator's signature. Readers trust it only
  when that signature verifies, so a writable report bucket cannot forge standing.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from ..errors import MalformedHeader, MalformedReport, MetadataMismatch
from ..spec import RunSpec
from . import strictjson
from .codec import Encoded, ObjectMeta, decode, encode
from .expect import EVIDENCE_TENSOR, MAX_SERVED, REPORT_TENSOR, evidence_expect, record_expect, report_expect
from .keys import ObjectKey, input_key, record_key, report_key
from .names import check_hotkey
from .signing import Signer

SHA256 = re.compile(r"[0-9a-f]{64}")
_TAG = re.compile(r"[0-9a-f]{128}")


def _hotkey(value: Any) -> bool:
    try:
        check_hotkey(value)
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class SegmentUpload:
    """One segment of an upload record: the input's content hash and ``(miner, key tag)`` where it was stored."""

    sha256: str
    stored: tuple[tuple[str, str], ...]

    def tag_at(self, miner: str) -> str | None:
        return next((t for m, t in self.stored if m == miner), None)


@dataclass(frozen=True)
class UploadRecord:
    """A peer's signed account of one window: segment -> what it uploaded, and where."""

    peer: str
    window: int
    uploads: Mapping[int, SegmentUpload]

    def key_at(self, run: str, segment: int, miner: str) -> ObjectKey | None:
        """Where the record says the peer's input of ``segment`` lies in ``miner``'s bucket (None: not there)."""
        upload = self.uploads.get(segment)
        tag = upload.tag_at(miner) if upload else None
        return input_key(run, self.window, segment, self.peer, tag) if tag else None

    def encode(self, spec: RunSpec, signer: Signer) -> Encoded:
        rows = [[s, u.sha256, [[m, t] for m, t in u.stored]] for s, u in sorted(self.uploads.items())]
        meta = ObjectMeta(spec.run_id, self.window, "record", self.peer, extra={"uploads": strictjson.dumps(rows)})
        return encode(meta, {}, signer)

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview, spec: RunSpec, window: int, peer: str) -> "UploadRecord":
        """Check a downloaded record: the peer's signature at its key, then every row; raises InvalidObject."""
        key = str(record_key(spec.run_id, window, peer))
        expect = record_expect(spec, peer)
        rows = strictjson.loads(decode(data, key, expect).meta.extra.get("uploads", "null"), "the record's uploads")
        if not isinstance(rows, list) or len(rows) > spec.segments:
            raise MalformedHeader(f"the record's uploads are not a list of at most {spec.segments} rows")
        uploads: dict[int, SegmentUpload] = {}
        for row in rows:
            if not (isinstance(row, list) and len(row) == 3 and type(row[0]) is int and isinstance(row[1], str)
                    and SHA256.fullmatch(row[1]) and isinstance(row[2], list)):
                raise MalformedHeader("a record row is not [segment, sha256, [[miner, tag], ...]]")
            segment, sha, stored = row
            if not 0 <= segment < spec.segments or segment in uploads:
                raise MetadataMismatch(f"record names segment {segment} twice or out of range")
            if len(stored) > spec.redundancy or not all(
                    isinstance(p, list) and len(p) == 2 and isinstance(p[1], str) and _TAG.fullmatch(p[1])
                    and _hotkey(p[0]) for p in stored) or len({p[0] for p in stored}) != len(stored):
                raise MalformedHeader(f"record row {segment}: stored-at must be at most {spec.redundancy} distinct "
                                      "[miner, tag] pairs")
            uploads[segment] = SegmentUpload(sha, tuple((m, t) for m, t in stored))
        return cls(peer, window, uploads)


# -- peers' evidence --------------------------------------------------------------------------------------------------



@dataclass(frozen=True)
class Served:
    """One output header a miner served a peer (its signed words, as served) and the size of that object."""

    miner: str
    segment: int
    size: int
    header: bytes


@dataclass(frozen=True)
class Evidence:
    """A peer's signed evidence of one window ``{run}/w…/evidence/{peer}``: output headers miners served it that
    it refused. A miner's signature on a header cannot be forged, so two headers of one miner for one segment
    with different roots prove it signed two outputs; one header whose root differs from the one a validator read
    before the deadline proves it served peers other bytes than the validator."""

    peer: str
    window: int
    served: tuple[Served, ...]

    def encode(self, spec: RunSpec, signer: Signer) -> Encoded:
        if not 0 < len(self.served) <= MAX_SERVED:
            raise ValueError(f"evidence holds 1 to {MAX_SERVED} headers")
        items = [[s.miner, s.segment, s.size, len(s.header)] for s in self.served]
        meta = ObjectMeta(spec.run_id, self.window, "evidence", self.peer, extra={"served": strictjson.dumps(items)})
        blob = bytearray(b"".join(s.header for s in self.served))
        return encode(meta, {EVIDENCE_TENSOR: torch.frombuffer(blob, dtype=torch.uint8)}, signer)

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview, spec: RunSpec, window: int, peer: str) -> "Evidence":
        """Check downloaded evidence: the peer's signature at its key, then every item; raises InvalidObject. The
        headers inside are only bytes here: whoever uses them checks each miner's signature itself."""
        key = str(ObjectKey(spec.run_id, window, "evidence", peer))
        expect = evidence_expect(spec, peer)
        decoded = decode(data, key, expect)
        items = strictjson.loads(decoded.meta.extra.get("served", "null"), "the evidence's items")
        blob = decoded.tensors[EVIDENCE_TENSOR].numpy().tobytes()
        if not (isinstance(items, list) and 0 < len(items) <= MAX_SERVED and all(
                isinstance(i, list) and len(i) == 4 and _hotkey(i[0]) and all(type(x) is int for x in i[1:])
                and 0 <= i[1] < spec.segments and i[2] > 0 and 8 <= i[3] <= 8 + spec.max_header_bytes
                for i in items) and sum(i[3] for i in items) == len(blob)):
            raise MalformedHeader(f"the evidence's items are not 1 to {MAX_SERVED} [miner, segment, size, length] "
                                  "rows covering its headers")
        served, pos = [], 0
        for miner, segment, size, length in items:
            served.append(Served(miner, segment, size, blob[pos:pos + length]))
            pos += length
        return cls(peer, window, tuple(served))


# -- validator reports -----------------------------------------------------------------------------------------------

def encode_report(run: str, window: int, signer: Signer, body: Mapping[str, Any]) -> Encoded:
    """A report as a signed object: ``body`` (which must name ``validator`` and ``window``) as JSON."""
    raw = strictjson.dumps(dict(body)).encode()
    meta = ObjectMeta(run, window, "report", signer.hotkey)
    return encode(meta, {REPORT_TENSOR: torch.frombuffer(bytearray(raw), dtype=torch.uint8)}, signer)


def decode_report(data: bytes | bytearray | memoryview, run: str, window: int, validator: str) -> dict[str, Any]:
    """A report's JSON after every check its readers rely on (the validator's signature, the hash tree, a JSON
    object naming this validator and window, and the form of each field below); raises InvalidObject.

    Miners weigh ``ema`` (mapreduce/trust.py); the report command plots ``scores``, ``ema``, ``checks`` and
    ``rejected`` (mapreduce/ops/plots.py); the broadcast example reads ``hosting``. A validator signs whatever it
    likes, so each is checked here, once: a missing field reads as empty, a malformed one refuses the report.
    """
    key = str(report_key(run, window, validator))
    decoded = decode(data, key, report_expect(validator))
    body = strictjson.loads(decoded.tensors[REPORT_TENSOR].numpy().tobytes(), "the report", error=MalformedReport)
    if not isinstance(body, dict) or body.get("validator") != validator or body.get("window") != window:
        raise MalformedReport("the report does not name its validator and window")
    for name in ("ema", "scores"):
        body[name] = _score_map(body.get(name, {}), name)
    rejected = body.setdefault("rejected", {})
    if not isinstance(rejected, dict) or not all(isinstance(k, str) and _count(v) for k, v in rejected.items()):
        raise MalformedReport("the report's rejected is not a map of reason -> count")
    for name in ("checks", "hosting"):
        rows = body.setdefault(name, [])
        if not isinstance(rows, list) or not all(_check_row(r) for r in rows):
            raise MalformedReport(f"the report's {name} is not a list of checks (miner, segment, status, latency)")
    return body


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _score_map(value: Any, name: str) -> dict[str, float]:
    if not isinstance(value, dict) or not all(
            _hotkey(k) and _number(v) and 0.0 <= v <= 1.0 for k, v in value.items()):
        raise MalformedReport(f"the report's {name} is not a map of miner -> score in [0, 1]")
    return {k: float(v) for k, v in value.items()}


def _check_row(row: Any) -> bool:
    """One check of a report: a miner, a segment, a status word, and a latency in seconds or null."""
    return (isinstance(row, dict) and _hotkey(row.get("miner")) and _count(row.get("segment"))
            and isinstance(row.get("status"), str) and len(row["status"]) <= 32
            and (row.get("latency") is None or (_number(row["latency"]) and row["latency"] >= 0)))
