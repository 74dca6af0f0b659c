"""``python -m mapreduce prune``: keeps the newest N windows of each run, touches nothing else, dry run by default."""
from __future__ import annotations

import argparse
import asyncio

import pytest

from mapreduce import keys, prune
from mapreduce.errors import InvalidObject
from mapreduce.prune import execute, plan_prune

from .helpers import mapreduce, s3_env

P, M, V = "5" + "P" * 47, "5" + "M" * 47, "5" + "V" * 47


async def fill(store, bucket: str) -> set[str]:
    """Run "a": windows 1..10 (inputs, an output, a record, a report each); run "b": windows 7..8; and some objects
    that are not protocol objects. Returns every key written."""
    written = set()
    for w in range(1, 11):
        for k in (keys.input_key("a", w, 0, P), keys.output_key("a", w, 0, M), keys.record_key("a", w, P),
                  keys.report_key("a", w, V)):
            written.add(str(k))
    for w in (7, 8):
        written.add(str(keys.input_key("b", w, 3, P)))
    written |= {"a/w00000001/notes.txt", "a/readme", "other/thing"}
    for key in sorted(written):
        await store.put(bucket, key, b"x" * 10)
    return written


async def listing(store, bucket: str) -> set[str]:
    return {i.key for i in await store.list(bucket)}


async def test_plan_then_delete_keeps_newest_windows_and_foreign_objects(store, bucket) -> None:
    written = await fill(store, bucket)
    plan = await plan_prune(store, bucket, keep_windows=3)
    assert plan.doomed() == [("a", w) for w in range(1, 8)]  # run a keeps 8, 9, 10; run b keeps both
    assert plan.foreign == 3
    assert "run a: newest window 10, keeping 3 of 10 windows; deletes windows 1..7: 28 objects" in plan.summary()
    assert await listing(store, bucket) == written  # planning deletes nothing

    assert await execute(store, plan) == 28
    left = await listing(store, bucket)
    assert left == {k for k in written if not protocol_key_of(k, "a", up_to=7)}
    assert "a/w00000001/notes.txt" in left  # under a pruned window's prefix, but not a protocol object


def protocol_key_of(key: str, run: str, up_to: int) -> bool:
    try:
        k = keys.ObjectKey.parse(key)
    except InvalidObject:
        return False
    return k.run == run and k.window <= up_to


async def test_one_run_only(store, bucket) -> None:
    await fill(store, bucket)
    plan = await plan_prune(store, bucket, keep_windows=1, run="b")
    assert plan.doomed() == [("b", 7)]
    with pytest.raises(ValueError):
        await plan_prune(store, bucket, keep_windows=0)


async def test_command_is_a_dry_run_unless_told(embedded_s3, store, bucket, tmp_path, monkeypatch) -> None:
    written = await fill(store, bucket)
    env = s3_env(embedded_s3)
    dry = mapreduce("prune", "--bucket", bucket, "--keep-windows", "5", env=env, cwd=tmp_path)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "deletes windows 1..5: 20 objects" in dry.stdout and "dry run: nothing deleted" in dry.stdout
    assert await listing(store, bucket) == written

    # --delete in process (the command's own main(), one interpreter start-up fewer), in a thread because main()
    # runs its own event loop.
    for name, value in env.items():
        if name.startswith("MR_S3_"):
            monkeypatch.setenv(name, value)
    args = argparse.Namespace(bucket=bucket, keep_windows=5, run=None, delete=True, env_file=str(tmp_path / ".env"))
    assert await asyncio.to_thread(prune.main, args) == 0
    assert len(await listing(store, bucket)) == len(written) - 20


def test_command_refuses_nonsense(capsys) -> None:
    for bucket, keep in (("my-bucket", 0), ("Not_A_Bucket", 3)):
        args = argparse.Namespace(bucket=bucket, keep_windows=keep, run=None, delete=True, env_file=".env")
        assert prune.main(args) == 1
        assert capsys.readouterr().out.startswith("error: ")
