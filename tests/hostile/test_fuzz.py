"""Class 1, fuzzed: any bytes in any object kind end as a typed reason, never another exception.

For each kind a reader decodes (inputs, outputs, upload records, broadcast records, validator reports) a valid
object is mutated 5,000 times, from a fixed seed: bit flips, truncations, lies in the header's length field,
JSON nested thousands deep, duplicate keys, huge and negative shapes, wrong types, non-finite and 5,000-digit
numbers. Mutations of the header are re-signed by the object's writer, as a hostile participant would, so they
reach the checks behind the signature (the JSON inside metadata above all). Every mutant must be refused with an
:class:`~mapreduce.errors.ProtocolError` (or, rarely, accepted when the mutation changed nothing that matters);
any other exception fails the test.
"""
from __future__ import annotations

import json
import random
import struct
import time
from collections import Counter
from typing import Callable

import pytest
import torch

from mapreduce.wire import keys
from mapreduce.audit import Wrong, check_proof_shape, listed_inputs, listed_mean, mean_digest
from mapreduce.wire.broadcast_record import BroadcastRecord, spec_fingerprint
from mapreduce.wire.codec import Expect, ObjectMeta, _signed_message, decode, encode, expected_object_bytes
from mapreduce.errors import ProtocolError
from mapreduce.wire.partial import RangeReader
from mapreduce.plan import make_plan
from mapreduce.wire.records import SegmentUpload, UploadRecord, decode_report, encode_report
from mapreduce.wire.signing import Signer
from mapreduce.spec import RunSpec, TensorSpec

MUTATIONS = 5000
NUMEL = 3000
WRITER = Signer.from_uri("//fuzz/writer")
OTHER = Signer.from_uri("//fuzz/other")
SPEC = RunSpec("fuzz", (TensorSpec("w", (NUMEL,)),), segments=1, redundancy=2)
PLAN = make_plan(SPEC, 3, "0xabc", [OTHER.hotkey, WRITER.hotkey])
TAG = "ab" * 64
NASTY_JSON = [
    "[" * 5000 + "]" * 5000, '{"a":' * 3000 + "1" + "}" * 3000, '{"a": 1, "a": 2}', "[NaN]", "[1e999]",
    "[" + "9" * 5000 + "]", "[Infinity]", '"\\ud800"', "", "nul", "[[[[[[[[[[[[]]]]]]]]]]]]", "{}", "[]", "3",
    '[["x", "y", "z"]]', '[[1, 2, 3]]', '[[0, "' + "f" * 64 + '", [["bad", "tag"]]]]',
]


def _split(obj: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack_from("<Q", obj, 0)
    return json.loads(obj[8:8 + n]), obj[8 + n:]


def _join(header_text: bytes, data: bytes) -> bytes:
    header_text += b" " * (-(8 + len(header_text)) % 8)
    return struct.pack("<Q", len(header_text)) + header_text + data


def _resigned(header: dict, data: bytes, signer: Signer = WRITER) -> bytes:
    md = header.setdefault("__metadata__", {})
    if isinstance(md, dict):
        md.pop("signature", None)
        try:
            md["signature"] = signer.sign(_signed_message(header)).hex()
        except (TypeError, ValueError, AttributeError, RecursionError):
            pass  # a mutation the canonical form cannot even express: leave it unsigned
    return _join(json.dumps(header, separators=(",", ":")).encode(), data)


def _mutate(obj: bytes, rng: random.Random) -> bytes:
    how = rng.randrange(12)
    if how == 0:  # bit flips anywhere
        b = bytearray(obj)
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        return bytes(b)
    if how == 1:  # truncation
        return obj[:rng.randrange(len(obj))]
    if how == 2:  # a lie in the header length
        return struct.pack("<Q", rng.choice([0, 1, 7, len(obj), len(obj) * 4, 2**40, 2**64 - 1,
                                             rng.randrange(len(obj))])) + obj[8:]
    if how == 3:  # trailing or inserted garbage
        at = rng.randrange(len(obj))
        return obj[:at] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))) + obj[at:]
    header, data = _split(obj)
    if how == 4:  # the whole header nested deep, or duplicated keys in the text itself
        text = json.dumps(header, separators=(",", ":"))
        if rng.random() < 0.5:
            return _join(("[" * 4000 + text + "]" * 4000).encode(), data)
        return _join((text[:-1] + "," + text[1:]).encode(), data)
    md = header.get("__metadata__", {})
    if how == 5:  # JSON inside metadata replaced by something nasty, re-signed
        fields = [k for k in md if k in ("inputs", "uploads", "segments")] or ["extra"]
        md[rng.choice(fields)] = rng.choice(NASTY_JSON)
        return _resigned(header, data)
    if how == 6:  # huge, negative, deep or mistyped shapes, re-signed
        name = rng.choice([k for k in header if k != "__metadata__"])
        header[name]["shape"] = rng.choice([[10**12], [-1], [2**63, 2**63], [[1]], ["3"], [1.5], [], [1] * 50,
                                            [NUMEL + 1], None])
        return _resigned(header, data)
    if how == 7:  # offsets that overlap, run past the end, or are not numbers
        name = rng.choice([k for k in header if k != "__metadata__"])
        header[name]["data_offsets"] = rng.choice([[0, 2**70], [5, 3], [0], ["0", "4"], [-8, 0], [0, 1]])
        return _resigned(header, data)
    if how == 8:  # metadata fields of the wrong type or value, re-signed
        field = rng.choice(["mr", "run", "window", "segment", "role", "hotkey", "sha256", "groups", "count"])
        md[field] = rng.choice([["x"], 3, None, "٣", "0003", "-1", "9" * 40, "../x", "", "\x00", "1e3",
                                OTHER.hotkey, "out", "report", "f" * 64])
        return _resigned(header, data)
    if how == 9:  # extra keys in a tensor entry, or extra tensors, re-signed
        if rng.random() < 0.5:
            name = rng.choice([k for k in header if k != "__metadata__"])
            header[name]["extra"] = [[[[[[[[[[1]]]]]]]]]]
        else:
            header[f"t{rng.randrange(100)}"] = {"dtype": rng.choice(["F32", "U8", "I64", "F64"]), "shape": [0],
                                                "data_offsets": [0, 0]}
        return _resigned(header, data)
    if how == 10:  # a valid-looking object signed by someone else
        return _resigned(header, data, OTHER)
    # data bytes changed under a valid header: NaN, huge values, zeros
    b = bytearray(obj)
    start = len(obj) - len(data)
    for _ in range(rng.randint(1, 4)):
        i = start + 4 * rng.randrange(max(1, len(data) // 4 - 1))
        b[i:i + 4] = struct.pack("<f", rng.choice([float("nan"), float("inf"), 3e38, -1e30, 0.0]))
    return bytes(b)


# -- one valid object and its reader per kind --------------------------------------------------------------------

def _input():
    meta = ObjectMeta("fuzz", 3, "in", WRITER.hotkey, 0)
    obj = bytes(encode(meta, {"data": torch.randn(NUMEL)}, WRITER).data)
    tensors = {"data": ("F32", (NUMEL,))}
    expect = Expect(tensors, allowed=lambda h: h == WRITER.hotkey, max_abs=SPEC.max_abs_value,
                    max_bytes=expected_object_bytes(tensors, header_slack=1 << 16), max_header_bytes=1 << 16)
    key = str(keys.input_key("fuzz", 3, 0, WRITER.hotkey, TAG))

    def read(buf: bytes) -> None:
        decode(buf, key, expect)
    return obj, read, key, expect


def _output():
    mean = torch.randn(NUMEL)
    meta = ObjectMeta("fuzz", 3, "out", WRITER.hotkey, 0, extra={
        "inputs": json.dumps([[OTHER.hotkey, "f" * 64, TAG]]), "count": "1", "mean": mean_digest(mean)})
    chunks = -(-NUMEL * 4 // (16 * 1024))
    obj = bytes(encode(meta, {"data": mean, "proof": torch.zeros(chunks, 1, 8, dtype=torch.uint8)}, WRITER).data)
    tensors = {"data": ("F32", (NUMEL,)), "proof": ("U8", (chunks, None, 8))}
    expect = Expect(tensors, allowed=lambda h: h == WRITER.hotkey, max_abs=SPEC.max_abs_value,
                    max_bytes=1 << 20, max_header_bytes=1 << 16)
    key = str(keys.output_key("fuzz", 3, 0, WRITER.hotkey))

    def read(buf: bytes) -> None:
        d = decode(buf, key, expect)
        check_proof_shape(tuple(d.tensors["proof"].shape), listed_inputs(d.meta))
        if listed_mean(d.meta) != mean_digest(d.tensors["data"]):
            raise Wrong("mean digest does not match the data")
    return obj, read, key, expect


def _record():
    record = UploadRecord(WRITER.hotkey, 3, {0: SegmentUpload("e" * 64, ((OTHER.hotkey, TAG),))})
    obj = bytes(record.encode(SPEC, WRITER).data)

    def read(buf: bytes) -> None:
        UploadRecord.decode(buf, SPEC, 3, WRITER.hotkey)
    return obj, read, None, None


def _broadcast_record():
    miners = PLAN.miners_for(0)
    record = BroadcastRecord(3, WRITER.hotkey, ("d" * 64,), (tuple((m, TAG) for m in miners),))
    obj = bytes(record.encode(SPEC, WRITER).data)
    assert BroadcastRecord.decode(obj, SPEC, PLAN, WRITER.hotkey) == record
    assert spec_fingerprint(SPEC)

    def read(buf: bytes) -> None:
        BroadcastRecord.decode(buf, SPEC, PLAN, WRITER.hotkey)
    return obj, read, None, None


def _report():
    body = {"validator": WRITER.hotkey, "window": 3, "ema": {OTHER.hotkey: 0.5}, "scores": {}, "checks": []}
    obj = bytes(encode_report("fuzz", 3, WRITER, body).data)

    def read(buf: bytes) -> None:
        from mapreduce.trust import _ema_of
        _ema_of(buf, "fuzz", WRITER.hotkey, 3)
        decode_report(buf, "fuzz", 3, WRITER.hotkey)
    return obj, read, None, None


KINDS: dict[str, Callable] = {"input": _input, "output": _output, "record": _record,
                              "broadcast record": _broadcast_record, "report": _report}


@pytest.mark.parametrize("kind", sorted(KINDS))
async def test_every_mutant_ends_as_a_typed_reason(kind: str, hostile) -> None:
    obj, read, key, expect = KINDS[kind]()
    read(obj)  # the unmutated object is accepted
    rng = random.Random(f"fuzz|{kind}")
    reasons: Counter = Counter()
    untyped: list[tuple[int, str]] = []
    started = time.monotonic()
    for i in range(MUTATIONS):
        mutant = _mutate(obj, rng)
        try:
            read(mutant)
            if key is not None:  # the ranged reader's path over the same bytes
                async def fetch(a: int, b: int, m=mutant) -> bytes:
                    return m[a:b]
                reader = RangeReader(fetch, len(mutant), key, expect)
                await reader.open()
                await reader.read("data", 0, min(64, NUMEL))
            reasons["accepted"] += 1
        except ProtocolError as e:
            reasons[e.reason] += 1
        except Exception as e:  # noqa: BLE001 - exactly what this test hunts
            untyped.append((i, f"{type(e).__name__}: {str(e)[:120]}"))
    seconds = time.monotonic() - started
    assert not untyped, f"{len(untyped)} untyped exceptions, first: {untyped[:5]}"
    assert sum(reasons.values()) == MUTATIONS
    assert reasons["accepted"] < MUTATIONS // 5, reasons  # most mutations are caught (some change nothing)
    assert seconds < 60, f"{MUTATIONS} mutations took {seconds:.1f}s"
    top = ", ".join(f"{r} {n}" for r, n in reasons.most_common(4))
    hostile(f"fuzz: {kind}", f"{MUTATIONS} mutated objects (bit flips, truncation, length lies, nesting, duplicate "
            "keys, huge shapes, re-signed metadata)", f"0 untyped exceptions in {seconds:.1f}s", top)
