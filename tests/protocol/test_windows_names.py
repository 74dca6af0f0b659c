"""Window arithmetic and the names that may reach object keys."""
from __future__ import annotations

import pytest

from mapreduce.errors import InvalidName, KeyMismatch
from mapreduce.wire.keys import ObjectKey, input_key, make_tag, output_key, record_key, tag_valid
from mapreduce.wire.names import check_bucket, check_hotkey, check_run_id
from mapreduce.wire.signing import Signer
from mapreduce.spec import RunSpec, TensorSpec
from mapreduce.windows import WindowConfig, on_time

HK = Signer.from_uri("//names").hotkey


def test_phases() -> None:
    cfg = WindowConfig(blocks_per_window=10, upload_blocks=4, reduce_blocks=3)
    assert [cfg.window_of(b) for b in (0, 9, 10, 25)] == [0, 0, 1, 2]
    p = cfg.phases(3)
    assert (p.start_block, p.upload_deadline, p.reduce_deadline, p.end_block) == (30, 34, 37, 40)
    assert [p.phase_at(b) for b in (29, 30, 33, 34, 36, 37, 39, 40)] == [
        "before", "upload", "upload", "reduce", "reduce", "download", "download", "after"]
    assert p.anchor_block == p.plan_seed_block == 27 and p.sample_seed_block == 37  # finality_blocks 3 by default
    assert WindowConfig(10, 4, 3, finality_blocks=0).phases(3).plan_seed_block == 30
    assert cfg.phases(0).anchor_block == 0  # the first window anchors at genesis
    # Where processes that just joined start: the first window whose anchor is past the block their commitments
    # land in, with a block to spare.
    for block in range(0, 40):
        w = cfg.first_window_anchored_after(block)
        assert cfg.phases(w).anchor_block >= block + 2 > cfg.phases(w - 1).anchor_block  # and the first such


def test_window_config_rejects_impossible_phases() -> None:
    with pytest.raises(ValueError):
        WindowConfig(blocks_per_window=5, upload_blocks=3, reduce_blocks=3)
    with pytest.raises(ValueError):
        WindowConfig(upload_blocks=0)
    for finality in (-1, 11):
        with pytest.raises(ValueError, match="finality_blocks"):
            WindowConfig(blocks_per_window=10, finality_blocks=finality)


def test_on_time_uses_skew() -> None:
    assert on_time(100.0, 100.0, 0.0) and on_time(100.9, 100.0, 1.0) and not on_time(101.1, 100.0, 1.0)


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "a\nb", "x" * 65, ".hidden", "a..b", "a b", "\x00", "é"])
def test_run_ids_refused(bad: str) -> None:
    with pytest.raises(InvalidName):
        check_run_id(bad)


@pytest.mark.parametrize("bad", ["", "5" * 100, HK + "/x", "../" + HK[3:], HK[:-1] + "\n", HK.replace(HK[5], "0")])
def test_hotkeys_refused(bad: str) -> None:
    with pytest.raises(InvalidName):
        check_hotkey(bad)


@pytest.mark.parametrize("bad", ["ab", "A-bucket", "a/b", "a..b", "-ab", "x" * 64, "a_b", "bucket\r"])
def test_bucket_names_refused(bad: str) -> None:
    with pytest.raises(InvalidName):
        check_bucket(bad)


TAG = "0f" * 64


def test_keys_round_trip_and_refuse_bad_names() -> None:
    for key in (input_key("run", 12, 3, HK, TAG), output_key("run", 0, 99999, HK), record_key("run", 5, HK)):
        assert ObjectKey.parse(str(key)) == key
    assert str(input_key("run", 12, 3, HK, TAG)) == f"run/w00000012/in/s00003/{HK}/{TAG}"
    assert str(output_key("run", 12, 3, HK)) == f"run/w00000012/out/s00003/{HK}"
    with pytest.raises(InvalidName):
        input_key("../run", 1, 1, HK, TAG)
    with pytest.raises(InvalidName):
        input_key("run", 1, 1, "../../secret", TAG)
    for bad in (f"run/w1/in/s00003/{HK}/{TAG}", f"run/w00000001/in/s00003/{HK}/{TAG}/extra",
                f"run/w00000001/in/{HK}/{TAG}", f"run/w00000001/in/s00003/{HK}",  # an input needs its tag
                f"run/w00000001/in/s00003/{HK}/{TAG.upper()}", f"run/w00000001/out/s00003/{HK}/{TAG}",
                f"run/w0000000\u0663/out/s00003/{HK}", f"run/w00000001/s00003/in/{HK}"):  # the layout of v1
        with pytest.raises(KeyMismatch):
            ObjectKey.parse(bad)


def test_key_tags_are_the_writers_signature_for_one_bucket() -> None:
    writer, owner, other = (Signer.from_uri(f"//tags/{n}") for n in ("writer", "owner", "other"))
    tag = make_tag(writer, "run", 4, 2, "in", owner.hotkey)
    key = input_key("run", 4, 2, writer.hotkey, tag)
    assert tag_valid(key, owner.hotkey)
    assert tag != make_tag(writer, "run", 4, 2, "in", owner.hotkey), "tags are fresh: nobody can predict one"
    assert not tag_valid(key, other.hotkey), "a tag made for one bucket is refused in another"
    for moved in (input_key("run", 5, 2, writer.hotkey, tag), input_key("run", 4, 3, writer.hotkey, tag),
                  input_key("run", 4, 2, other.hotkey, tag), ObjectKey("run", 4, "bcast", writer.hotkey, 2, tag)):
        assert not tag_valid(moved, owner.hotkey), moved
    assert not tag_valid(input_key("run", 4, 2, writer.hotkey, "0" * 128), owner.hotkey)


def test_spec_json_round_trip(tmp_path) -> None:
    s = RunSpec("r1", (TensorSpec("a", (3, 4)), TensorSpec("b", (5,))), segments=4, wire_dtype="bfloat16")
    s.save(tmp_path / "spec.json")
    assert RunSpec.load(tmp_path / "spec.json") == s
    assert s.numel == 17
    with pytest.raises(ValueError):
        RunSpec("r1", (TensorSpec("a", (3,)),), segments=4)
