"""What the hostile parties of this suite do: real keys, real buckets, real signatures; each attack one function.

The attackers are of two kinds. A *registered hostile participant* holds a hotkey of the run and may sign whatever
it likes under its own name (every check that matters must survive that). A *stranger* holds nothing but the
public keys on chain: it can read every bucket and write new objects into miners' buckets.
"""
from __future__ import annotations

import json
import struct

import torch

from mapreduce.wire import keys
from mapreduce.wire.codec import ObjectMeta, encode
from mapreduce.wire.signing import Signer


def nested_json(depth: int = 5000) -> str:
    """``[[[...]]]``: valid JSON nested past any parser's recursion limit (a few KiB)."""
    return "[" * depth + "]" * depth


def nested_header_object(depth: int = 5000) -> bytes:
    """A safetensors-looking object whose header nests JSON arrays ``depth`` deep (about ``2 * depth`` bytes)."""
    header = ('{"__metadata__":{"mr":"1"},"data":' + nested_json(depth) + "}").encode()
    header += b" " * (-(8 + len(header)) % 8)
    return struct.pack("<Q", len(header)) + header


def signed(signer: Signer, run: str, window: int, role: str, segment: int | None = None,
           tensors: dict[str, torch.Tensor] | None = None, **extra: str) -> bytes:
    """A well-formed object signed by ``signer`` (a registered hostile participant signs what it likes)."""
    meta = ObjectMeta(run, window, role, signer.hotkey, segment, extra=extra)
    return bytes(encode(meta, tensors or {}, signer).data)


async def put_raw(net, owner: str, window: int, key: str, data: bytes) -> None:
    """Write ``data`` at ``key`` in ``owner``'s bucket, through the location ``owner`` published on chain."""
    bucket = await net.bucket(window, owner)
    await bucket.store.put(bucket.name, key, data)


def input_key(writer: Signer, run: str, window: int, segment: int, owner: str) -> str:
    """A key ``writer`` makes for its input of ``segment`` in ``owner``'s bucket (a fresh key tag)."""
    return str(keys.input_key(run, window, segment, writer.hotkey,
                              keys.make_tag(writer, run, window, segment, "in", owner)))


def output_key(run: str, window: int, segment: int, miner: str) -> str:
    return str(keys.output_key(run, window, segment, miner))


def record_key(run: str, window: int, peer: str) -> str:
    return str(keys.record_key(run, window, peer))


def report_key(run: str, window: int, validator: str) -> str:
    return str(keys.report_key(run, window, validator))


def report_bytes(validator: Signer, run: str, window: int, body: str) -> bytes:
    """A validator report carrying ``body`` as its JSON, signed by the validator (who may sign anything)."""
    raw = torch.frombuffer(bytearray(body.encode()), dtype=torch.uint8)
    return signed(validator, run, window, "report", tensors={"report": raw})


def forged_report(validator: str, window: int, favourite: str) -> str:
    """A report a stranger writes into a validator's bucket: it names the validator and rates one miner 1.0."""
    return json.dumps({"validator": validator, "window": window, "ema": {favourite: 1.0}, "checks": [],
                       "scores": {favourite: 1.0}})


def upload_record(signer: Signer, run: str, window: int, rows: list[list]) -> bytes:
    """A peer's signed upload record: ``rows`` of ``[segment, sha256, [[miner, key tag], ...]]``."""
    return signed(signer, run, window, "record", uploads=json.dumps(rows, separators=(",", ":")))


def input_object(signer: Signer, run: str, window: int, segment: int, values: torch.Tensor) -> tuple[bytes, str]:
    """A signed input holding ``values`` (NaN, huge, anything: the signer decides) and its content hash."""
    obj = encode(ObjectMeta(run, window, "in", signer.hotkey, segment), {"data": values}, signer)
    return bytes(obj.data), obj.sha256


def flip_data_byte(data: bytes) -> bytes:
    """The same object with one byte of its tensor data changed: header and signature intact, hash tree broken."""
    (n,) = struct.unpack_from("<Q", data, 0)
    at = 8 + n + 5
    return data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1:]


def predictable_keys(run: str, window: int, segment: int, miner: str, peer: str) -> list[str]:
    """Every key in ``miner``'s bucket that a stranger can compute for ``segment`` from public facts: the miner's
    output, and for ``peer``'s input its writer prefix with a guessed tag (the tag is the peer's fresh signature,
    which nobody can predict: guessing is all a stranger can do)."""
    prefix = keys.writer_prefix(run, window, segment, "in", peer)
    return [output_key(run, window, segment, miner), prefix + "0" * keys.TAG_HEX, prefix + "f" * keys.TAG_HEX]
