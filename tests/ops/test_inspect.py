"""``python -m mapreduce inspect``: one object, every check, its metadata, then ``ok`` or the typed reason; exit 0
or 1, never a traceback."""
from __future__ import annotations

import argparse
import json
import struct

import pytest
import torch

from mapreduce.ops import inspection
from mapreduce.wire import keys
from mapreduce.wire.codec import ObjectMeta, encode
from mapreduce.plan import segment_bounds
from mapreduce.wire.records import encode_report
from mapreduce.wire.signing import Signer
from mapreduce.spec import RunSpec, TensorSpec

from .helpers import mapreduce, s3_env

PEER, MINER = Signer.from_uri("//inspect/peer"), Signer.from_uri("//inspect/miner")
SPEC = RunSpec("insp", (TensorSpec("w", (6000,)),), segments=2)
SEG = segment_bounds(SPEC.numel, SPEC.segments)[1]


def input_object(values: torch.Tensor | None = None) -> bytes:
    values = torch.randn(SEG.numel) if values is None else values
    return bytes(encode(ObjectMeta("insp", 9, "in", PEER.hotkey, 1), {"data": values}, PEER).data)


def run(capsys, target: str, *flags: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    inspection.add_arguments(parser)
    code = inspection.main(parser.parse_args([target, *flags]))
    return code, capsys.readouterr().out


@pytest.fixture
def spec_file(tmp_path):
    SPEC.save(tmp_path / "spec.json")
    return str(tmp_path / "spec.json")


def test_a_good_input_is_ok_and_its_claims_are_shown(tmp_path, spec_file, capsys) -> None:
    (tmp_path / "in.bin").write_bytes(input_object())
    code, out = run(capsys, str(tmp_path / "in.bin"), "--spec", spec_file)
    assert code == 0, out
    assert out.rstrip().endswith("ok")
    assert f"role in, run insp, window 9, segment 1, hotkey {PEER.hotkey}" in out
    assert f"data F32 [{SEG.numel}]" in out and "signature verified" in out
    assert "key not checked" in out  # a local file: the key its metadata claims was assumed


@pytest.mark.parametrize("case,reason", [
    ("flipped_byte", "hash_mismatch"), ("nan", "non_finite"), ("huge", "out_of_bounds"),
    ("wrong_segment_length", "shape_mismatch"), ("nested", "malformed_header"), ("garbage", "truncated"),
    ("pickle", "pickle"), ("empty", "truncated"),
])
def test_a_bad_object_says_why_and_exits_1(tmp_path, spec_file, capsys, case: str, reason: str) -> None:
    good = input_object()
    (n,) = struct.unpack_from("<Q", good, 0)
    data = {
        "flipped_byte": good[:8 + n + 3] + bytes([good[8 + n + 3] ^ 1]) + good[8 + n + 4:],
        "nan": input_object(torch.full((SEG.numel,), float("nan"))),
        "huge": input_object(torch.full((SEG.numel,), 3e38)),
        "wrong_segment_length": input_object(torch.randn(SEG.numel + 1)),
        "nested": struct.pack("<Q", 20_000) + b"{" + b"[" * 9_999 + b"]" * 9_999 + b"}",
        "garbage": b"\x01\x02\x03",
        "pickle": b"\x80\x04\x95" + b"\x00" * 64,
        "empty": b"",
    }[case]
    (tmp_path / "obj").write_bytes(data)
    code, out = run(capsys, str(tmp_path / "obj"), "--spec", spec_file)
    assert code == 1, out
    assert out.splitlines()[-1].startswith(f"{reason}: "), out
    assert "Traceback" not in out


async def test_objects_in_a_bucket_with_their_key_and_owner(embedded_s3, store, bucket, tmp_path, spec_file) -> None:
    tag = keys.make_tag(PEER, "insp", 9, 1, "in", MINER.hotkey)
    key = str(keys.input_key("insp", 9, 1, PEER.hotkey, tag))
    await store.put(bucket, key, input_object())
    body = {"validator": MINER.hotkey, "window": 9, "ema": {}, "checks": []}
    report_key = str(keys.report_key("insp", 9, MINER.hotkey))
    await store.put(bucket, report_key, bytes(encode_report("insp", 9, MINER, body).data))
    await store.put(bucket, str(keys.report_key("insp", 8, MINER.hotkey)), json.dumps(body).encode())  # unsigned
    env = s3_env(embedded_s3)
    good = mapreduce("inspect", f"s3://{bucket}/{key}", "--spec", spec_file, "--owner", MINER.hotkey, env=env,
                     cwd=tmp_path)
    assert good.returncode == 0 and good.stdout.rstrip().endswith("ok"), good.stdout + good.stderr
    other = mapreduce("inspect", f"s3://{bucket}/{key}", "--owner", PEER.hotkey, env=env, cwd=tmp_path)
    assert other.returncode == 1 and "is not" in other.stdout.splitlines()[-1], other.stdout  # tag for another bucket
    report = mapreduce("inspect", f"s3://{bucket}/{report_key}", env=env, cwd=tmp_path)
    assert report.returncode == 0, report.stdout + report.stderr
    unsigned = mapreduce("inspect", f"s3://{bucket}/" + str(keys.report_key("insp", 8, MINER.hotkey)), env=env,
                         cwd=tmp_path)
    assert unsigned.returncode == 1 and "Traceback" not in unsigned.stdout + unsigned.stderr
    missing = mapreduce("inspect", f"s3://{bucket}/no/such/key", env=env, cwd=tmp_path)
    assert missing.returncode == 1 and missing.stdout.startswith("unreadable: "), missing.stdout + missing.stderr
