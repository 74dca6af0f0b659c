"""``python -m mapreduce inspect PATH_OR_S3_URL``: read one protocol object, run every check, say ok or why not.

This is how an operator finds out why an object was refused: it prints the object's metadata as the object claims
it, then either ``ok`` or the typed reason a reader would count (``bad_signature``, ``hash_mismatch``,
``out_of_bounds``, ...) with its message. Exit code 0 for ok, 1 otherwise; never a traceback, whatever the bytes.

The checks are the readers' own (:mod:`mapreduce.wire.codec`, :mod:`mapreduce.wire.records`, :mod:`mapreduce.audit`):
size cap, header, signature by the hotkey the object names, key against metadata, tensors (against the run spec
with ``--spec``, else only their form), hash tree, finite values within the spec's bound, and the role's own
content (an output's input list, a record's rows, a report's JSON). A key tag is checked when the bucket's owner is
known (``--owner``). What needs the chain (is the hotkey registered? is the plan right?) is not checked here, and
the output says so.
"""
from __future__ import annotations

import argparse
import asyncio
import struct
from pathlib import Path
from urllib.parse import urlsplit

from storage import ObjectStore, S3Config, StorageError

from ..audit import check_proof_shape, listed_inputs
from ..errors import InvalidObject, JunkKey, ProtocolError
from ..plan import segment_bounds
from ..spec import RunSpec
from ..wire import strictjson
from ..wire.codec import Expect, decode
from ..wire.expect import (copy_expect, evidence_expect, input_expect, output_expect, record_expect,
                           report_expect)
from ..wire.keys import ObjectKey, tag_valid
from ..wire.records import UploadRecord, decode_report
from .flags import add_env_file_flag, env_file

_PLACEHOLDER_HOTKEY = "5" + "1" * 47  # a well-formed ss58 string nobody owns
# Without a run spec, an object may be as large as this before it is refused unread.
DEFAULT_CAP = 1 << 30
MAX_INPUTS_SHOWN = 1 << 16  # an output inspected alone: no window says how many peers it may list


def _claims(data: bytes) -> tuple[dict[str, str], dict[str, tuple[str, tuple[int, ...]]]]:
    """What the header claims (untrusted: only to choose the checks); empty when it does not even parse."""
    try:
        (n,) = struct.unpack_from("<Q", data, 0)
        header = strictjson.loads(data[8:8 + n], "header", max_depth=3) if n <= 1 << 24 else {}
    except (ProtocolError, struct.error):
        return {}, {}
    if not isinstance(header, dict):
        return {}, {}
    md = header.get("__metadata__")
    md = {k: v for k, v in md.items() if isinstance(v, str)} if isinstance(md, dict) else {}
    tensors = {}
    for name, e in header.items():
        if name != "__metadata__" and name != "__leaves__" and isinstance(e, dict) \
                and isinstance(e.get("dtype"), str) and isinstance(e.get("shape"), list):
            tensors[name] = (e["dtype"], tuple(d for d in e["shape"] if isinstance(d, int)))
    return md, tensors


def _claimed_key(md: dict[str, str]) -> str | None:
    try:
        segment = int(md["segment"]) if "segment" in md else None
        tag = "0" * 128 if md.get("role") in ("in", "bcast") else None
        return str(ObjectKey(md["run"], int(md["window"]), md["role"], md["hotkey"], segment, tag))
    except (KeyError, ValueError):
        return None


def _expect(md: dict[str, str], tensors: dict, spec: RunSpec | None) -> tuple[Expect, str]:
    """The expectation a reader of this role would have (:mod:`mapreduce.wire.expect`, from the spec when given),
    and a note on what is not checked for want of it."""
    role, hotkey = md.get("role", ""), md.get("hotkey", "")
    if role == "report":
        return report_expect(hotkey), ""
    if spec is not None and role in ("record", "bcast-record"):
        return record_expect(spec, hotkey), ""
    if spec is not None and role == "evidence":
        return evidence_expect(spec, hotkey), ""
    if spec is not None and role in ("in", "out", "bcast") and md.get("segment", "").isdigit():
        segments = segment_bounds(spec.numel, spec.segments)
        index = int(md["segment"])
        if index < len(segments):
            seg = segments[index]
            if role == "in":
                return input_expect(spec, seg, lambda h: h == hotkey), ""
            if role == "bcast":
                return copy_expect(spec, seg, hotkey), ""
            # The object's own claim of its signer is what the signature checks; any number of inputs may be listed.
            return output_expect(spec, seg, hotkey, MAX_INPUTS_SHOWN), ""
    signer = lambda h: h == hotkey  # noqa: E731 - the object's own claim: the signature is what is checked
    if role in ("record", "bcast-record"):
        return Expect({}, signer, DEFAULT_CAP), "the header cap not checked (no --spec)"
    shapes = {n: (d, tuple(None for _ in s)) for n, (d, s) in tensors.items()}
    return Expect(shapes, signer, DEFAULT_CAP), "tensor shapes and the value bound not checked (no --spec)"


def inspect_bytes(data: bytes, key: str | None = None, spec: RunSpec | None = None,
                  owner: str | None = None) -> tuple[bool, list[str]]:
    """(ok, lines to print) for one object's bytes found at ``key`` (None: the key its metadata claims)."""
    md, tensors = _claims(data)
    lines = [f"size      {len(data):,} bytes"]
    if md:
        lines.append("claims    " + ", ".join(f"{k} {md[k][:70]}" for k in
                                             ("mr", "role", "run", "window", "segment", "hotkey") if k in md))
        lines.append("tensors   " + (", ".join(f"{n} {d} {list(s)}" for n, (d, s) in tensors.items()) or "none"))
        for k in ("inputs", "count", "mean", "uploads", "segments"):
            if k in md:
                lines.append(f"{k:9} {md[k][:200]}{' ...' if len(md[k]) > 200 else ''}")
    notes = []
    assumed_key = key is None
    if assumed_key:
        key = _claimed_key(md)
        notes.append("key not checked (a local file: the key its metadata claims was assumed)")
    if key is None:
        # The header does not even say where the object belongs: decode it anyway, at a key it cannot match, so the
        # first check that fails names the real reason (a parse error comes before the key check).
        key = "unknown/w00000000/record/" + _PLACEHOLDER_HOTKEY
    try:
        expect, note = _expect(md, tensors, spec)
        if note:
            notes.append(note)
        decoded = decode(data, key, expect)
        role = decoded.meta.role
        if role == "out":
            inputs = listed_inputs(decoded.meta)
            check_proof_shape(tuple(decoded.tensors["proof"].shape), inputs)
            lines.append(f"inputs    {len(inputs)} listed, canonical order")
        elif role == "record" and spec is not None:
            record = UploadRecord.decode(data, spec, decoded.meta.window, decoded.meta.hotkey)
            lines.append(f"uploads   {len(record.uploads)} segments")
        elif role == "report":
            decode_report(data, decoded.meta.run, decoded.meta.window, decoded.meta.hotkey)
        elif role in ("record", "bcast-record"):
            notes.append("record rows not checked (no --spec)" if role == "record"
                         else "broadcast rows not checked against the plan (needs the chain)")
        k = ObjectKey.parse(key)
        if k.tag is not None and not assumed_key:
            if owner is None:
                notes.append("key tag not checked (pass --owner, the bucket owner's hotkey)")
            elif not tag_valid(k, owner):
                raise JunkKey(f"the key's tag is not {k.hotkey}'s signature for {owner}'s bucket")
        lines.append(f"sha256    {decoded.sha256}")
        lines.append(f"signature verified for {decoded.meta.hotkey} (registration on chain not checked)")
    except ProtocolError as e:
        lines += [f"note: {n}" for n in notes]
        lines.append(f"{e.reason}: {e}")
        return False, lines
    lines += [f"note: {n}" for n in notes]
    lines.append("ok")
    return True, lines


async def _read(target: str, env_file: str, cap: int) -> tuple[bytes, str | None]:
    if target.startswith("s3://"):
        url = urlsplit(target)
        bucket, key = url.netloc, url.path.lstrip("/")
        async with ObjectStore(S3Config.from_env(env_file=env_file)) as store:
            return bytes(await store.get(bucket, key, max_bytes=cap)), key
    path = Path(target)
    if path.stat().st_size > cap:
        raise InvalidObject(f"{path} is {path.stat().st_size} bytes, over the cap of {cap}")
    return path.read_bytes(), None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="PATH_OR_S3_URL", help="a file, or s3://bucket/key (read with MR_S3_* keys)")
    p.add_argument("--spec", default=None, help="the run spec JSON: check tensors and the value bound against it")
    p.add_argument("--owner", default=None, metavar="HOTKEY",
                   help="the hotkey owning the bucket the object is in: check the key's tag (inputs, broadcasts)")
    add_env_file_flag(p)


def main(args: argparse.Namespace) -> int:
    """Print the object's claims and ``ok`` (exit 0) or the reason it is refused (exit 1)."""
    try:
        spec = RunSpec.load(args.spec) if args.spec else None
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"error: run spec {args.spec}: {e}")
        return 1
    try:
        # Only a bound on memory: the role's own cap (from the spec) is checked with everything else.
        data, key = asyncio.run(_read(args.target, env_file(args), DEFAULT_CAP))
        print(f"object    {args.target}")
        ok, lines = inspect_bytes(data, key, spec, args.owner)
    except (StorageError, InvalidObject, OSError) as e:  # OSError: a local file that cannot be read
        print(f"unreadable: {e}")
        return 1
    except Exception as e:  # noqa: BLE001 - the promise is: never a traceback
        print(f"internal_error: {type(e).__name__}: {e}")
        return 1
    print("\n".join(lines))
    return 0 if ok else 1
