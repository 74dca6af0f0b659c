"""Signed safetensors objects: the only thing the protocol ever writes or reads.

An object is a standard safetensors file (any safetensors reader can load it) whose ``__metadata__`` carries the
protocol fields, the sha256 tree of its data (:mod:`mapreduce.wire.hashtree`) and the writer's sr25519 signature over
the canonical header. The tree's leaves are a trailing ``__leaves__`` U8 tensor.

:func:`decode` checks everything before trusting a byte, cheapest first, so a forged 256 MiB object costs a
header parse and a signature check, not a hash of its data: size cap, pickle sniff, header-length cap, JSON,
field types, dtype whitelist, offsets against the data length, key against metadata, hotkey allowed, signature,
tensors against the expected spec, hash tree, finite values within the run's bound. Each failure raises its own
:class:`~mapreduce.errors.InvalidObject` subclass, whatever the bytes: the header is parsed by
:mod:`mapreduce.wire.strictjson` (no nesting, duplicate keys or non-finite numbers) against a fixed schema. Nothing is
unpickled; ``torch.load`` is never called.

:func:`parse_header` is the header-only part, shared with the ranged reader in :mod:`mapreduce.wire.partial`.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

from ..errors import (BadSignature, DisallowedDtype, HashMismatch, HeaderTooLarge, KeyMismatch, MalformedHeader,
                     NonFinite, OffsetMismatch, OutOfBounds, Oversized, PickleRejected, ShapeMismatch, Truncated,
                     UnknownHotkey)
from . import hashtree, strictjson
from .keys import ObjectKey
from .signing import Signer, verify

VERSION = "5"  # 5: the int8 wire format (I8 data and an F32 scale per 256 elements; wire/formats.py), and topk
LEAVES = "__leaves__"
DTYPES: dict[str, torch.dtype] = {"F32": torch.float32, "BF16": torch.bfloat16, "I8": torch.int8, "I16": torch.int16,
                             "U8": torch.uint8}
DTYPE_CODES = {v: k for k, v in DTYPES.items()}
_FLOAT = {"F32", "BF16"}  # tensors whose values are checked finite and within the bound
# Metadata keys the codec owns; everything else is role-specific ("extra") and still covered by the signature.
_RESERVED = {"mr", "run", "window", "segment", "role", "hotkey", "sha256", "groups", "signature"}
_SIG_PLACEHOLDER = "0" * 128
_DIGEST_PLACEHOLDER = "0" * 64
# What a header may hold: a few tensors with short printable names, each described by exactly these fields.
MAX_TENSORS = 8
_ENTRY_FIELDS = {"dtype", "shape", "data_offsets"}
_TENSOR_NAME = re.compile(r"[A-Za-z0-9_.]{1,64}")
_NUMBER = {"window": re.compile(r"0|[1-9][0-9]{0,7}"), "segment": re.compile(r"0|[1-9][0-9]{0,4}")}


@dataclass(frozen=True)
class ObjectMeta:
    """Protocol metadata of one object; ``key`` is where it must live."""

    run: str
    window: int
    role: str
    hotkey: str
    segment: int | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> ObjectKey:
        return ObjectKey(self.run, self.window, self.role, self.hotkey, self.segment)


@dataclass(frozen=True)
class Expect:
    """What a reader requires of an object: its tensors (dtype code, shape), who may have written it, size caps.

    A ``None`` dimension matches any length (an output's proof has one row per input, known only from its header);
    ``max_bytes`` still bounds the object. ``max_abs``: every float value must lie within ``[-max_abs, max_abs]``
    (the run's bound on inputs, so no sum of valid inputs can overflow); None checks only that values are finite.
    """

    tensors: Mapping[str, tuple[str, tuple[int | None, ...]]]
    allowed: Callable[[str], bool]
    max_bytes: int
    max_header_bytes: int = 1 << 20
    max_abs: float | None = None


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    start: int  # byte offsets within the data section
    end: int

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype].itemsize


@dataclass(frozen=True)
class Header:
    """A parsed header whose signature and layout have been checked (the data has not)."""

    meta: ObjectMeta
    sha256: str
    groups: tuple[bytes, ...]
    entries: Mapping[str, TensorEntry]
    data_start: int  # absolute offset of the data section in the object
    data_len: int  # bytes covered by the hash tree (the leaves excluded)
    size: int

    @property
    def leaves(self) -> TensorEntry:
        return self.entries[LEAVES]


@dataclass(frozen=True)
class Encoded:
    """A signed object ready to upload: its bytes and its content hash (the root of its sha256 tree)."""

    data: memoryview
    sha256: str

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class Decoded:
    meta: ObjectMeta
    sha256: str
    tensors: dict[str, torch.Tensor]
    size: int


def expected_object_bytes(tensors: Mapping[str, tuple[str, tuple[int, ...]]], header_slack: int = 64 * 1024) -> int:
    """A size cap for objects holding these tensors (with ``None`` dimensions at their largest allowed value
    substituted): their data, their leaves and a generous header."""
    data = sum(DTYPES[d].itemsize * _prod(s) for d, s in tensors.values())
    leaves = hashtree.leaf_count(data) * hashtree.DIGEST
    groups_hex = hashtree.group_count(hashtree.leaf_count(data)) * 64
    return 8 + header_slack + groups_hex + data + leaves


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _signed_message(header: dict) -> bytes:
    unsigned = dict(header)
    unsigned["__metadata__"] = {k: v for k, v in header["__metadata__"].items() if k != "signature"}
    canonical = json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode()
    return b"mapreduce/v" + VERSION.encode() + b"\n" + hashlib.sha256(canonical).digest()


def _header_bytes(header: dict) -> bytes:
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    # safetensors pads the header with spaces so the data section is 8-byte aligned.
    return raw + b" " * (-(8 + len(raw)) % 8)


def encode(meta: ObjectMeta, tensors: Mapping[str, torch.Tensor], signer: Signer) -> Encoded:
    """Serialise ``tensors`` (in order) with ``meta``, hash and sign; returns the whole object as one buffer.

    The layout is fixed before any data is copied (every hash field has a fixed length), so each tensor is copied
    exactly once, straight into the output, and hashed there. The buffer is a torch allocation, not a
    ``bytearray``, because ``bytearray(n)`` zero-fills: a page-faulting pass over the whole object for nothing.
    """
    meta.key  # validates run, hotkey, role and segment before anything is built
    if meta.hotkey != signer.hotkey:
        raise ValueError(f"metadata names hotkey {meta.hotkey} but the signer is {signer.hotkey}")
    if _RESERVED & set(meta.extra):
        raise ValueError(f"extra metadata may not use reserved keys: {sorted(_RESERVED & set(meta.extra))}")
    if LEAVES in tensors:
        raise ValueError(f"{LEAVES!r} is reserved")
    entries: dict[str, dict] = {}
    offset = 0
    flat: list[tuple[int, torch.Tensor]] = []
    for name, t in tensors.items():
        code = DTYPE_CODES.get(t.dtype)
        if code is None:
            raise ValueError(f"tensor {name!r} has dtype {t.dtype}, allowed: {sorted(DTYPES)}")
        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        nbytes = t.numel() * t.element_size()
        entries[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        flat.append((offset, t))
        offset += nbytes
    data_len = offset
    n_leaves = hashtree.leaf_count(data_len)
    entries[LEAVES] = {"dtype": "U8", "shape": [n_leaves, hashtree.DIGEST],
                       "data_offsets": [data_len, data_len + n_leaves * hashtree.DIGEST]}
    md = {k: str(v) for k, v in meta.extra.items()}
    md.update(mr=VERSION, run=meta.run, window=str(meta.window), role=meta.role, hotkey=meta.hotkey)
    if meta.segment is not None:
        md["segment"] = str(meta.segment)
    md.update(sha256=_DIGEST_PLACEHOLDER, groups="0" * 64 * hashtree.group_count(n_leaves), signature=_SIG_PLACEHOLDER)
    header = {"__metadata__": md, **entries}
    header_len = len(_header_bytes(header))

    total = 8 + header_len + data_len + n_leaves * hashtree.DIGEST
    backing = torch.empty(total, dtype=torch.uint8)
    view = memoryview(backing.numpy())
    data_start = 8 + header_len
    for off, t in flat:
        nbytes = t.numel() * t.element_size()
        if nbytes:
            # as bytes: a tensor after an I8 one may start at an offset its dtype's size does not divide
            backing[data_start + off:data_start + off + nbytes].copy_(t.reshape(-1).contiguous().view(torch.uint8))
    leaves = hashtree.compute_leaves(view[data_start:data_start + data_len],
                                     view[data_start + data_len:total])
    groups = hashtree.group_hashes(leaves)
    md["sha256"] = hashtree.root_of(groups).hex()
    md["groups"] = b"".join(groups).hex()
    md["signature"] = signer.sign(_signed_message(header)).hex()
    final = _header_bytes(header)
    if len(final) != header_len:  # every placeholder has the length of its value, so this cannot move the data
        raise AssertionError("header length changed while signing")
    struct.pack_into("<Q", view, 0, header_len)
    view[8:data_start] = final
    return Encoded(view, md["sha256"])


def _check_prefix(buf: bytes | bytearray | memoryview, size: int, max_bytes: int, max_header: int) -> int:
    if size > max_bytes:
        raise Oversized(f"object is {size} bytes, the cap is {max_bytes}")
    # A safetensors header is JSON, so byte 8 is "{". Only when it is not do we look for a pickle or a zip: a
    # header length such as 0x380 begins with the bytes 80 03, which is also how a pickle stream begins.
    if bytes(buf[8:9]) != b"{":
        head = bytes(buf[:4])
        if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
            raise PickleRejected("object is a pickle stream; pickles are never loaded")
        if head == b"PK\x03\x04":
            raise PickleRejected("object is a zip archive (torch.save format holds a pickle); never loaded")
    if size < 8:
        raise Truncated(f"object is {size} bytes, shorter than the 8-byte header length")
    (n,) = struct.unpack_from("<Q", buf, 0)
    if n > max_header:
        raise HeaderTooLarge(f"header length {n} exceeds the cap of {max_header} bytes")
    if 8 + n > size:
        raise Truncated(f"header of {n} bytes runs past the end of a {size}-byte object")
    return n


def header_end(buf: bytes | bytearray | memoryview) -> int:
    """Where the header of an object starting with ``buf`` ends (its length prefix plus 8); call after
    :func:`parse_header` accepted it."""
    (n,) = struct.unpack_from("<Q", buf, 0)
    return 8 + n


def parse_header(prefix: bytes | bytearray | memoryview, size: int, key: str, expect: Expect) -> Header:
    """Check an object's header; ``prefix`` must hold at least its first ``8 + header_length`` bytes.

    ``size`` is the whole object's size (from HEAD for a ranged reader), used to check the offsets.
    """
    n = _check_prefix(prefix, size, expect.max_bytes, expect.max_header_bytes)
    if len(prefix) < 8 + n:
        raise Truncated(f"need {8 + n} header bytes, have {len(prefix)}")
    header = strictjson.loads(prefix[8:8 + n], "header", max_depth=3)
    if not isinstance(header, dict):
        raise MalformedHeader("header is not a JSON object")
    md = header.get("__metadata__")
    if not isinstance(md, dict) or not all(isinstance(v, str) for v in md.values()):
        raise MalformedHeader("__metadata__ missing or not a map of strings")
    missing = {"mr", "run", "window", "role", "hotkey", "sha256", "groups", "signature"} - set(md)
    if missing:
        raise MalformedHeader(f"metadata lacks {sorted(missing)}")
    if md["mr"] != VERSION:
        raise MalformedHeader(f"protocol version {md['mr'][:16]!r}, expected {VERSION!r}")
    for name, pattern in _NUMBER.items():
        if name in md and not pattern.fullmatch(md[name]):
            raise MalformedHeader(f"metadata {name} {md[name][:16]!r} is not a canonical decimal number")
    if len(header) - 1 > MAX_TENSORS:
        raise MalformedHeader(f"{len(header) - 1} tensors; at most {MAX_TENSORS}")

    entries: dict[str, TensorEntry] = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        if not _TENSOR_NAME.fullmatch(name) and name != LEAVES:
            raise MalformedHeader(f"tensor name {name[:64]!r} is not 1-64 letters, digits, '_' or '.'")
        if not (isinstance(e, dict) and set(e) == _ENTRY_FIELDS and isinstance(e["dtype"], str)
                and isinstance(e["shape"], list) and len(e["shape"]) <= 4
                and isinstance(e["data_offsets"], list) and len(e["data_offsets"]) == 2
                and all(type(d) is int and d >= 0 for d in e["shape"] + e["data_offsets"])):
            raise MalformedHeader(f"tensor entry {name[:64]!r} is malformed")
        if e["dtype"] not in DTYPES:
            raise DisallowedDtype(f"tensor {name[:64]!r} has dtype {e['dtype'][:16]!r}; allowed: {sorted(DTYPES)}")
        entries[name] = TensorEntry(e["dtype"], tuple(e["shape"]), *e["data_offsets"])
    if LEAVES not in entries:
        raise MalformedHeader(f"no {LEAVES} tensor")

    # Offsets must tile the data section exactly, with the leaves last, or the tree would not cover the data.
    data_section = size - 8 - n
    pos = 0
    for name, e in sorted(entries.items(), key=lambda kv: kv[1].start):
        if e.start != pos or e.end < e.start:
            raise OffsetMismatch(f"tensor {name[:64]!r} starts at {e.start}, expected {pos}")
        if e.end - e.start != _prod(e.shape) * e.itemsize:
            raise OffsetMismatch(f"tensor {name[:64]!r}: {e.end - e.start} bytes for shape {list(e.shape)}")
        pos = e.end
    if pos > data_section:
        raise Truncated(f"tensors need {pos} data bytes, the object holds {data_section}")
    if pos < data_section:
        raise OffsetMismatch(f"{data_section - pos} trailing bytes after the last tensor")
    leaves = entries[LEAVES]
    if leaves.end != data_section:
        raise OffsetMismatch(f"{LEAVES} must be the last tensor")
    data_len = leaves.start

    try:
        meta = ObjectMeta(run=md["run"], window=int(md["window"]), role=md["role"], hotkey=md["hotkey"],
                          segment=int(md["segment"]) if "segment" in md else None,
                          extra={k: v for k, v in md.items() if k not in _RESERVED})
        meta_key = meta.key
    except ValueError as e:
        raise MalformedHeader(f"bad protocol metadata: {e}") from None
    found_at = ObjectKey.parse(key).untagged  # a tag is the key's own signature (keys.tag_valid), not metadata
    if found_at != meta_key:
        raise KeyMismatch(f"object found at {key[:200]!r} says it belongs at {str(meta_key)!r}")
    if not expect.allowed(meta.hotkey):
        raise UnknownHotkey(f"hotkey {meta.hotkey} is not registered or not allowed")
    try:
        signature = bytes.fromhex(md["signature"])
    except ValueError:
        raise BadSignature("signature is not hex") from None
    if not verify(meta.hotkey, _signed_message(header), signature):
        raise BadSignature(f"signature does not verify for hotkey {meta.hotkey}")

    # Signed, so the writer really sent this header; now is it the shape this reader needs?
    names = set(entries) - {LEAVES}
    if names != set(expect.tensors):
        raise ShapeMismatch(f"tensors {sorted(names)[:8]} but expected {sorted(expect.tensors)}")
    for name, (dtype, shape) in expect.tensors.items():
        e = entries[name]
        if e.dtype != dtype:
            raise DisallowedDtype(f"tensor {name!r} is {e.dtype}, expected {dtype}")
        if len(e.shape) != len(shape) or any(w is not None and w != d for w, d in zip(shape, e.shape)):
            raise ShapeMismatch(f"tensor {name!r} has shape {list(e.shape)}, expected {list(shape)}")
    n_leaves = hashtree.leaf_count(data_len)
    if leaves.shape != (n_leaves, hashtree.DIGEST):
        raise ShapeMismatch(f"{LEAVES} has shape {list(leaves.shape)}, expected {[n_leaves, hashtree.DIGEST]}")
    try:
        groups = bytes.fromhex(md["groups"])
    except ValueError:
        raise MalformedHeader("group hashes are not hex") from None
    if len(groups) != hashtree.group_count(n_leaves) * hashtree.DIGEST:
        raise MalformedHeader("wrong number of group hashes")
    group_list = tuple(groups[i:i + hashtree.DIGEST] for i in range(0, len(groups), hashtree.DIGEST))
    if hashtree.root_of(list(group_list)).hex() != md["sha256"]:
        raise HashMismatch("group hashes do not hash to the signed sha256")
    return Header(meta=meta, sha256=md["sha256"], groups=group_list, entries=entries,
                  data_start=8 + n, data_len=data_len, size=size)


def tensor_view(buf: bytes | bytearray | memoryview, header: Header, name: str) -> torch.Tensor:
    """A tensor backed by ``buf`` (no copy). Do not write to it when ``buf`` is ``bytes``."""
    e = header.entries[name]
    count = _prod(e.shape)
    if count == 0:
        return torch.empty(e.shape, dtype=DTYPES[e.dtype])
    import warnings
    with warnings.catch_warnings():
        # torch warns that bytes are read-only; decoded tensors are documented read-only.
        warnings.simplefilter("ignore", UserWarning)
        t = torch.frombuffer(buf, dtype=DTYPES[e.dtype], count=count, offset=header.data_start + e.start)
    return t.view(e.shape)


def check_finite(name: str, t: torch.Tensor, max_abs: float | None = None) -> None:
    """NonFinite if ``t`` holds NaN or Inf; OutOfBounds if ``max_abs`` is given and some value is larger than it."""
    if not t.numel():
        return
    if max_abs is None:
        # A finite sum proves every element finite (NaN and Inf propagate) at memory speed; only when it is not
        # do we pay for the exact test, which tells a real NaN/Inf from an overflowing sum of huge values.
        if not torch.isfinite(t.sum(dtype=torch.float32)) and not torch.isfinite(t).all():
            raise NonFinite(f"tensor {name!r} holds NaN or Inf")
        return
    low, high = torch.aminmax(t)  # one pass, no copy; NaN propagates into both
    low, high = float(low), float(high)
    if not (math.isfinite(low) and math.isfinite(high)):
        raise NonFinite(f"tensor {name!r} holds NaN or Inf")
    if max(-low, high) > max_abs:
        raise OutOfBounds(f"tensor {name!r} holds {max(-low, high):.3g}, beyond the run's bound of {max_abs:g}")


def check_values(name: str, t: torch.Tensor, code: str, max_abs: float | None = None) -> None:
    """The value rules of a tensor of dtype ``code``: float values finite and within ``max_abs``; int8 values
    symmetric, within [-127, 127] (-128 has no positive twin: an int8 input's decoded values stay within the bound
    its scales are held to, wire/formats.py). Other dtypes (U8 blobs; a topk input's I16 index, whose rule is per
    block and belongs to its format: wire/formats.check_index) have none here."""
    if code in _FLOAT:
        check_finite(name, t, max_abs)
    elif code == "I8" and t.numel() and int(t.min()) < -127:
        raise OutOfBounds(f"tensor {name!r} holds -128; int8 values must lie within [-127, 127]")


def decode(buf: bytes | bytearray | memoryview, key: str, expect: Expect) -> Decoded:
    """Check a whole downloaded object and return its tensors (views of ``buf``, read-only by contract)."""
    header = parse_header(buf, len(buf), key, expect)
    view = memoryview(buf)
    start, leaves = header.data_start, header.leaves
    computed = hashtree.compute_leaves(view[start:start + header.data_len])
    if computed != view[start + leaves.start:start + leaves.end]:
        raise HashMismatch("data does not match its leaf hashes")
    if tuple(hashtree.group_hashes(computed)) != header.groups:
        raise HashMismatch("leaf hashes do not match the signed group hashes")
    tensors = {}
    for name in expect.tensors:
        t = tensor_view(buf, header, name)
        check_values(name, t, header.entries[name].dtype, expect.max_abs)
        tensors[name] = t
    return Decoded(meta=header.meta, sha256=header.sha256, tensors=tensors, size=len(buf))
