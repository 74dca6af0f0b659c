"""The codec: round trips, interop with the safetensors library, and one specific rejection per kind of bad object."""
from __future__ import annotations

import dataclasses
import json
import pickle
import struct

import pytest
import safetensors.torch
import torch

from mapreduce import errors
from mapreduce.wire import hashtree
from mapreduce.wire.codec import Expect, ObjectMeta, _header_bytes, _signed_message, decode, encode, parse_header
from mapreduce.wire.partial import RangeReader
from mapreduce.wire.signing import Signer

WRITER = Signer.from_uri("//codec-writer")
STRANGER = Signer.from_uri("//codec-stranger")
REGISTERED = {WRITER.hotkey}
META = ObjectMeta("run-a", 7, "in", WRITER.hotkey, 3)
TAG = "ab" * 64  # an input's key ends in its writer's key tag (mapreduce/wire/keys.py; the codec does not check it)


def at(meta: ObjectMeta) -> str:
    """Where ``meta``'s object lives: its key, with a tag for the roles that carry one."""
    return str(dataclasses.replace(meta.key, tag=TAG) if meta.role in ("in", "bcast") else meta.key)


KEY = at(META)


def expect(n: int, dtype: str = "F32", max_bytes: int = 1 << 30, max_abs: float | None = 1e9) -> Expect:
    return Expect({"data": (dtype, (n,))}, allowed=REGISTERED.__contains__, max_bytes=max_bytes, max_abs=max_abs)


@pytest.mark.parametrize("dtype,code", [(torch.float32, "F32"), (torch.bfloat16, "BF16")])
@pytest.mark.parametrize("n", [1, 1000, hashtree.CHUNK_BYTES // 4 * hashtree.GROUP_LEAVES * 3 + 17])
def test_round_trip(dtype: torch.dtype, code: str, n: int) -> None:
    t = torch.randn(n).to(dtype)
    obj = encode(META, {"data": t}, WRITER).data
    d = decode(obj, KEY, expect(n, code))
    assert torch.equal(d.tensors["data"], t)
    assert d.sha256 == encode(META, {"data": t}, WRITER).sha256
    assert d.meta == META
    assert len(d.sha256) == 64


def test_objects_are_standard_safetensors() -> None:
    tensors = {"data": torch.randn(300), "other": torch.arange(12, dtype=torch.float32).reshape(3, 4)}
    obj = encode(ObjectMeta("run-a", 1, "record", WRITER.hotkey, extra={"note": "x"}), tensors, WRITER).data
    loaded = safetensors.torch.load(bytes(obj))
    assert torch.equal(loaded["data"], tensors["data"]) and torch.equal(loaded["other"], tensors["other"])
    md = json.loads(bytes(obj[8:8 + struct.unpack_from("<Q", obj)[0]]))["__metadata__"]
    assert md["note"] == "x" and md["role"] == "record" and md["hotkey"] == WRITER.hotkey


def test_extra_metadata_is_signed() -> None:
    obj = bytearray(encode(ObjectMeta("run-a", 1, "record", WRITER.hotkey, extra={"count": "4"}), {}, WRITER).data)
    i = obj.find(b'"count":"4"')
    obj[i + 9] = ord("5")
    with pytest.raises(errors.BadSignature):
        decode(obj, f"run-a/w00000001/record/{WRITER.hotkey}", Expect({}, REGISTERED.__contains__, 1 << 20))


def _signed_with_header(mutate, n: int = 64, signer: Signer = WRITER, data: bytes | None = None) -> bytes:
    """A correctly signed object whose header was altered by ``mutate`` before signing (a malicious writer)."""
    good = encode(META if signer is WRITER else ObjectMeta("run-a", 7, "in", signer.hotkey, 3),
                  {"data": torch.randn(n)}, signer).data
    hlen = struct.unpack_from("<Q", good)[0]
    header = json.loads(bytes(good[8:8 + hlen]))
    body = bytes(good[8 + hlen:]) if data is None else data
    mutate(header)
    header["__metadata__"]["signature"] = signer.sign(_signed_message(header)).hex()
    raw = _header_bytes(header)
    return struct.pack("<Q", len(raw)) + raw + body


def _good(n: int = 64) -> bytearray:
    return bytearray(encode(META, {"data": torch.randn(n)}, WRITER).data)


def _nan_object() -> bytes:
    t = torch.randn(64)
    t[5] = float("nan")
    return bytes(encode(META, {"data": t}, WRITER).data)


def _inf_object() -> bytes:
    t = torch.randn(64)
    t[9] = float("inf")
    return bytes(encode(META, {"data": t}, WRITER).data)


def _hash_tampered() -> bytes:
    obj = _good()
    hlen = struct.unpack_from("<Q", obj)[0]
    obj[8 + hlen + 10] ^= 0xFF  # one data byte, signature untouched
    return bytes(obj)


def _forged_signature() -> bytes:
    obj = _good()
    i = obj.find(b'"signature":"') + len('"signature":"')
    obj[i:i + 2] = b"00" if obj[i:i + 2] != b"00" else b"11"
    return bytes(obj)


def _disallowed_dtype(h: dict) -> None:
    h["data"]["dtype"] = "F64"
    h["data"]["shape"] = [32]


def _wrong_shape(h: dict) -> None:
    h["data"]["shape"] = [8, 8]


def _bf16_where_f32_expected(h: dict) -> None:
    h["data"]["dtype"] = "BF16"
    h["data"]["shape"] = [128]


def _key_elsewhere(h: dict) -> None:
    h["__metadata__"]["segment"] = "4"


def _hash_header_lies(h: dict) -> None:
    h["__metadata__"]["sha256"] = "ab" * 32


def _huge_object() -> bytes:
    t = torch.randn(64)
    t[3] = 3e38  # finite, but a sum of two overflows fp32
    return bytes(encode(META, {"data": t}, WRITER).data)


def _raw_header(text: bytes, body: bytes = b"\0" * 64) -> bytes:
    text += b" " * (-(8 + len(text)) % 8)
    return struct.pack("<Q", len(text)) + text + body


def _extra_entry_field(h: dict) -> None:
    h["data"]["extra"] = [[[1]]]


def _padded_window(h: dict) -> None:
    h["__metadata__"]["window"] = "007"


BAD = {
    "truncated": (lambda: bytes(_good()[:-100]), errors.Truncated),
    "truncated_header": (lambda: bytes(_good()[:40]), errors.Truncated),
    "header_length_2^60": (lambda: struct.pack("<Q", 1 << 60) + b"{}" * 8, errors.HeaderTooLarge),
    "non_json_header": (lambda: struct.pack("<Q", 16) + b"this is not json" + b"\0" * 64, errors.MalformedHeader),
    "json_not_object": (lambda: struct.pack("<Q", 8) + b"[1,2,3] " + b"\0" * 64, errors.MalformedHeader),
    "pickle": (lambda: pickle.dumps({"data": list(range(10))}), errors.PickleRejected),
    "torch_save_zip": (lambda: b"PK\x03\x04" + b"\0" * 100, errors.PickleRejected),
    "disallowed_dtype": (lambda: _signed_with_header(_disallowed_dtype), errors.DisallowedDtype),
    "mistyped": (lambda: _signed_with_header(_bf16_where_f32_expected, n=64), errors.DisallowedDtype),
    "wrong_shape": (lambda: _signed_with_header(_wrong_shape), errors.ShapeMismatch),
    "nan": (_nan_object, errors.NonFinite),
    "inf": (_inf_object, errors.NonFinite),
    "sha256_mismatch_data": (_hash_tampered, errors.HashMismatch),
    "sha256_mismatch_header": (lambda: _signed_with_header(_hash_header_lies), errors.HashMismatch),
    "forged_signature": (_forged_signature, errors.BadSignature),
    "unknown_hotkey": (lambda: _signed_with_header(lambda h: None, signer=STRANGER), errors.UnknownHotkey),
    "key_metadata_mismatch": (lambda: _signed_with_header(_key_elsewhere), errors.KeyMismatch),
    "trailing_garbage": (lambda: bytes(_good()) + b"xx", errors.OffsetMismatch),
    "oversized": (lambda: bytes(_good(4096)), errors.Oversized),
    "out_of_bounds": (_huge_object, errors.OutOfBounds),
    "nested_header": (lambda: _raw_header(b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}"), errors.MalformedHeader),
    "duplicate_keys": (lambda: _raw_header(b'{"__metadata__":{},"__metadata__":{}}'), errors.MalformedHeader),
    "nan_literal": (lambda: _raw_header(b'{"__metadata__":{"mr":NaN}}'), errors.MalformedHeader),
    "extra_entry_field": (lambda: _signed_with_header(_extra_entry_field), errors.MalformedHeader),
    "padded_window": (lambda: _signed_with_header(_padded_window), errors.MalformedHeader),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_object_rejected_with_its_own_error(case: str) -> None:
    make, error = BAD[case]
    obj = make()
    n = 4096 if case == "oversized" else 64
    limit = 2048 if case == "oversized" else 1 << 30
    key = KEY if case != "unknown_hotkey" else at(ObjectMeta("run-a", 7, "in", STRANGER.hotkey, 3))
    with pytest.raises(error) as info:
        decode(obj, key, expect(n, max_bytes=limit))
    assert type(info.value) is error, f"{case}: got {type(info.value).__name__}"
    assert info.value.reason == error.reason


def test_error_reasons_are_distinct() -> None:
    reasons = [cls.reason for cls in errors.InvalidObject.__subclasses__()]
    assert len(reasons) == len(set(reasons))


def test_object_under_another_key_is_rejected() -> None:
    other = ObjectMeta("run-a", 7, "in", WRITER.hotkey, 4)
    with pytest.raises(errors.KeyMismatch):
        decode(_good(), at(other), expect(64))


async def _reader(obj: bytes | memoryview, key: str, exp: Expect) -> RangeReader:
    data = bytes(obj)

    async def fetch(start: int, end: int) -> bytes:
        return data[start:end]

    return RangeReader(fetch, len(data), key, exp)


@pytest.mark.parametrize("dtype,code", [(torch.float32, "F32"), (torch.bfloat16, "BF16")])
async def test_ranged_reads_equal_slices(dtype: torch.dtype, code: str) -> None:
    n = 1_000_000
    t = torch.randn(n).to(dtype)
    obj = encode(META, {"data": t}, WRITER).data
    reader = await _reader(obj, KEY, expect(n, code))
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        a = int(torch.randint(0, n - 1, (1,), generator=g))
        b = int(torch.randint(a + 1, min(n, a + 3000) + 1, (1,), generator=g))
        assert torch.equal(await reader.read("data", a, b), t[a:b])
    assert torch.equal(await reader.read("data", n - 1, n), t[n - 1:])
    # a handful of chunks and group leaves per read, never the whole object
    assert reader.bytes_fetched < 21 * (3 * hashtree.CHUNK_BYTES + 2 * 64 * 32) + 64 * 1024
    assert reader.bytes_fetched < len(obj) / 2


async def test_ranged_read_detects_tampered_data() -> None:
    n = 100_000
    obj = bytearray(encode(META, {"data": torch.randn(n)}, WRITER).data)
    hlen = struct.unpack_from("<Q", obj)[0]
    obj[8 + hlen + 4 * 50_000] ^= 0x01  # element 50,000
    reader = await _reader(obj, KEY, expect(n))
    assert (await reader.read("data", 0, 1000)).numel() == 1000  # untouched chunk still verifies
    with pytest.raises(errors.HashMismatch):
        await reader.read("data", 49_990, 50_010)


async def test_ranged_read_detects_tampered_leaves() -> None:
    n = 100_000
    obj = bytearray(encode(META, {"data": torch.randn(n)}, WRITER).data)
    obj[-5] ^= 0x01  # the last leaf hash
    reader = await _reader(obj, KEY, expect(n))
    with pytest.raises(errors.HashMismatch):
        await reader.read("data", n - 10, n)


async def test_ranged_reader_checks_header_like_decode() -> None:
    reader = await _reader(_forged_signature(), KEY, expect(64))
    with pytest.raises(errors.BadSignature):
        await reader.read("data", 0, 4)


def test_header_checks_do_not_touch_data() -> None:
    # parse_header must accept a prefix: the validator never has more.
    obj = _good(100_000)
    hlen = struct.unpack_from("<Q", obj)[0]
    header = parse_header(bytes(obj[:8 + hlen]), len(obj), KEY, expect(100_000))
    assert header.data_len == 400_000 and header.meta == META


def test_encode_refuses_wrong_signer_and_bad_names() -> None:
    with pytest.raises(ValueError):
        encode(ObjectMeta("run-a", 1, "in", STRANGER.hotkey, 0), {"data": torch.zeros(1)}, WRITER)
    with pytest.raises(errors.InvalidName):
        encode(ObjectMeta("../etc", 1, "in", WRITER.hotkey, 0), {"data": torch.zeros(1)}, WRITER)
    with pytest.raises(ValueError):
        encode(META, {"data": torch.zeros(1, dtype=torch.float64)}, WRITER)


def test_header_length_that_looks_like_a_pickle_opcode_still_decodes() -> None:
    # 0x380 = 896 is stored as 80 03 00 ..., the first two bytes of a protocol-3 pickle stream
    for pad in range(600):
        meta = ObjectMeta("run-a", 1, "record", WRITER.hotkey, extra={"pad": "x" * pad})
        obj = encode(meta, {}, WRITER).data
        if struct.unpack_from("<Q", obj)[0] == 0x380:
            break
    else:
        pytest.fail("no padding gave a 0x380 header")
    assert bytes(obj[:2]) == b"\x80\x03"
    decoded = decode(obj, at(meta), Expect({}, REGISTERED.__contains__, 1 << 20))
    assert decoded.meta.extra["pad"] == "x" * pad


@pytest.mark.parametrize("inputs, numel", [(1, 1_000), (4, 1 << 22), (8, 1 << 21), (16, 1 << 20), (64, 1 << 18),
                                           (256, 1 << 22)])
def test_the_first_read_of_an_output_holds_its_header_and_little_more(inputs: int, numel: int) -> None:
    """`first_read_guess` sizes an output's first read from its size (which says how many inputs it lists): one
    request opens it at any P, where a fixed 4 KiB read needed two from P ~ 14 and wasted 1-2 KiB below."""
    from mapreduce.audit import mean_digest
    from mapreduce.wire import strictjson
    from mapreduce.wire.codec import header_end
    from mapreduce.wire.partial import first_read_guess

    miner = Signer.from_uri("//guess/miner")
    listed = sorted([[Signer.from_uri(f"//guess/peer/{i}").hotkey, "a" * 64, "b" * 128] for i in range(inputs)])
    mean = torch.randn(numel)
    chunks = hashtree.leaf_count(numel * 4)
    meta = ObjectMeta("run-guess", 3, "out", miner.hotkey, 0, extra={
        "inputs": strictjson.dumps(listed), "count": str(inputs), "mean": mean_digest(mean)})
    obj = encode(meta, {"data": mean, "proof": torch.zeros(chunks, inputs, hashtree.PROOF_BYTES, dtype=torch.uint8)},
                 miner)
    header = header_end(bytes(obj.data[:1 << 20]))
    guess = first_read_guess(obj.size, numel * 4, chunks)
    assert header <= guess <= header + 1024 + 8 * inputs, (header, guess)


def test_the_first_read_of_an_input_holds_its_header() -> None:
    from mapreduce.wire.codec import header_end
    from mapreduce.wire.formats import FORMATS
    from mapreduce.wire.partial import first_read_guess

    peer = Signer.from_uri("//guess/peer")
    for name, fmt in FORMATS.items():
        for numel in (1_000, 1 << 20, 1 << 24):
            meta = ObjectMeta("run-guess", 3, "in", peer.hotkey, 0)
            obj = encode(meta, fmt.encode(torch.randn(numel)), peer)
            header = header_end(bytes(obj.data[:1 << 20]))
            assert header <= first_read_guess(obj.size) <= header + 1024, (name, numel, header)
