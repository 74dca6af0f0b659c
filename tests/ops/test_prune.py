"""``python -m mapreduce prune``: deletes one run's windows older than the chain's current window minus N, never a
window newer than the current one (a junk key far ahead must not move the cutoff), never another run's objects or
anything outside the protocol layout; dry run by default."""
from __future__ import annotations

import asyncio
import time

import pytest

from mapreduce.wire import keys
from mapreduce.ops import prune
from mapreduce.chain import LocalChain
from mapreduce.errors import InvalidName
from mapreduce.ops.prune import execute, plan_prune
from mapreduce.spec import RunSpec, TensorSpec
from mapreduce.windows import WindowConfig

from .helpers import mapreduce, s3_env

P, M, V = "5" + "P" * 47, "5" + "M" * 47, "5" + "V" * 47
TAG = "0" * 128  # well-formed, not genuine: prune parses keys, it never checks tags
BLOCKS_PER_WINDOW = 10
LONG_BLOCK = 1000.0  # seconds per block of the test chains: the block stays put for the length of a test
FOREIGN = {"a/w00000001/notes.txt", "a/readme", "other/thing"}


def window_keys(run: str, window: int) -> set[str]:
    """Protocol keys of one window, one per kind of object a bucket holds. The only place these tests build keys
    (through mapreduce/wire/keys.py): the tests themselves assume nothing of the layout beyond the ``{run}/w{window:08d}/``
    prefix, so a change of layout is adapted here."""
    return {str(keys.input_key(run, window, 0, P, TAG)), str(keys.output_key(run, window, 0, M)),
            str(keys.record_key(run, window, P)), str(keys.report_key(run, window, V))}


def window_of(key: str) -> int:
    return keys.ObjectKey.parse(key).window


def run_of(key: str) -> str:
    return keys.ObjectKey.parse(key).run


async def put_all(store, bucket: str, names: set[str]) -> set[str]:
    for key in sorted(names):
        await store.put(bucket, key, b"x" * 10)
    return names


async def fill(store, bucket: str) -> set[str]:
    """Run "a": windows 1..10, four objects each, and one junk object at window 99999999; run "b": windows 7..8;
    and some objects that are not protocol objects. Returns every key written."""
    written = set().union(*(window_keys("a", w) for w in range(1, 11)))
    written |= {str(keys.output_key("a", 99999999, 0, M))}
    written |= {str(keys.output_key("b", w, 3, M)) for w in (7, 8)}
    return await put_all(store, bucket, written | FOREIGN)


async def listing(store, bucket: str) -> set[str]:
    return {i.key for i in await store.list(bucket)}


def chain_at_block(path, block: int) -> str:
    """A LocalChain file whose current block is ``block`` (genesis that many long blocks ago, plus half a block)."""
    genesis = time.time() - (block + 0.5) * LONG_BLOCK
    with pytest.MonkeyPatch.context() as m:
        m.setattr(time, "time", lambda: genesis)
        LocalChain.create(path, netuid=1, block_time=LONG_BLOCK).close()
    assert LocalChain.open(path).current_block() == block
    return str(path)


def spec_file(tmp_path, run: str = "a") -> str:
    spec = RunSpec(run, (TensorSpec("w", (4,)),), segments=1,
                   windows=WindowConfig(blocks_per_window=BLOCKS_PER_WINDOW))
    path = tmp_path / f"{run}.json"
    spec.save(path)
    return str(path)


@pytest.fixture
def s3_vars(embedded_s3, monkeypatch) -> None:
    """MR_S3_* of the embedded server in this process's environment, for prune.main() run in process."""
    for name, value in s3_env(embedded_s3).items():
        if name.startswith("MR_S3_"):
            monkeypatch.setenv(name, value)


def command(bucket: str, keep: int, tmp_path, *extra: str, block: int | None = None) -> list[str]:
    """prune's arguments on the local chain at ``block`` (default: none created) with the spec of run "a"."""
    chain = chain_at_block(tmp_path / "chain.db", block) if block is not None else str(tmp_path / "chain.db")
    empty = tmp_path / "empty.env"  # not the checkout's .env, if a developer has one: the environment alone
    empty.write_text("")
    return ["--bucket", bucket, "--keep-windows", str(keep), "--spec", spec_file(tmp_path), "--chain.local", chain,
            "--env-file", str(empty), *extra]


# -- planning and deleting ---------------------------------------------------------------------------------------


async def test_plan_then_delete_measures_from_the_current_window(store, bucket) -> None:
    written = await fill(store, bucket)
    plan = await plan_prune(store, bucket, "a", keep_windows=3, current_window=10)
    assert plan.cutoff == 7 and plan.doomed() == list(range(1, 8))  # keeps 8, 9, 10
    assert (plan.kept.objects, plan.kept.first, plan.kept.last) == (12, 8, 10)
    assert (plan.future.objects, plan.future.first) == (1, 99999999)
    assert {run: t.objects for run, t in plan.other_runs.items()} == {"b": 2}
    assert plan.foreign == 3
    summary = plan.summary()
    assert ("run a: current window 10 (from the chain); keeping windows 8..10: 12 objects, 0.0 MiB; "
            "deletes windows 1..7: 28 objects") in summary
    assert "1 objects, 0.0 MiB in windows 99999999..99999999, newer than the current window: never deleted" in summary
    assert "run b: 2 objects, 0.0 MiB in windows 7..8 left alone" in summary
    assert "3 objects outside the protocol layout are left alone" in summary
    assert await listing(store, bucket) == written  # planning deletes nothing

    assert await execute(store, plan) == 28
    left = await listing(store, bucket)
    assert left == {k for k in written if k in FOREIGN or run_of(k) != "a" or window_of(k) > 7}
    assert "a/w00000001/notes.txt" in left  # under a pruned window's prefix, but not a protocol object


async def test_junk_key_far_in_the_future_does_not_move_the_cutoff(store, bucket, tmp_path, s3_vars) -> None:
    """The bug this command had: the newest window in the bucket was the reference, so one junk key at w99999999
    made ``--keep-windows 5 --delete`` remove every real window, the current one included."""
    real = set().union(*(window_keys("a", w) for w in range(90, 101)))
    ahead = window_keys("a", 101)  # one window ahead of the chain: a writer's clock, or ours; kept all the same
    junk = {str(keys.output_key("a", 99999999, 0, M))}
    await put_all(store, bucket, real | ahead | junk)

    argv = command(bucket, 5, tmp_path, "--delete", block=100 * BLOCKS_PER_WINDOW + 5)  # window 100
    assert await asyncio.to_thread(prune.main, argv) == 0  # in a thread: main() runs its own event loop
    assert await listing(store, bucket) == {k for k in real if window_of(k) > 95} | ahead | junk


async def test_nothing_is_old_enough_early_in_a_run(store, bucket) -> None:
    written = await fill(store, bucket)
    plan = await plan_prune(store, bucket, "a", keep_windows=5, current_window=3)
    assert plan.cutoff == -2 and plan.doomed() == []
    assert "keeping windows 0..3: 12 objects, 0.0 MiB; deletes nothing" in plan.summary()
    assert plan.future.objects == 29  # windows 4..10 and the junk one: ahead of this chain, so left alone
    assert await execute(store, plan) == 0
    assert await listing(store, bucket) == written


async def test_planning_refuses_nonsense(store, bucket) -> None:
    for keep, current in ((0, 10), (3, -1), (True, 10), (3, 1.5)):
        with pytest.raises(ValueError):
            await plan_prune(store, bucket, "a", keep_windows=keep, current_window=current)
    with pytest.raises(InvalidName):
        await plan_prune(store, bucket, "../a", keep_windows=3, current_window=10)


# -- the command -------------------------------------------------------------------------------------------------


async def test_command_is_a_dry_run_unless_told(embedded_s3, store, bucket, tmp_path, s3_vars) -> None:
    written = await fill(store, bucket)
    argv = command(bucket, 5, tmp_path, block=10 * BLOCKS_PER_WINDOW + 3)  # window 10
    dry = mapreduce("prune", *argv, env=s3_env(embedded_s3), cwd=tmp_path)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "chain at block 103: window 10 of run a" in dry.stdout
    assert "deletes windows 1..5: 20 objects" in dry.stdout and "dry run: nothing deleted" in dry.stdout
    assert await listing(store, bucket) == written

    # --delete in process (one interpreter start-up fewer), in a thread because main() runs its own event loop.
    assert await asyncio.to_thread(prune.main, [*argv, "--delete"]) == 0
    assert await listing(store, bucket) == {k for k in written
                                            if k in FOREIGN or run_of(k) != "a" or window_of(k) > 5}


def test_command_refuses_nonsense(tmp_path, capsys) -> None:
    for bucket, keep in (("my-bucket", 0), ("Not_A_Bucket", 3)):
        assert prune.main(command(bucket, keep, tmp_path, "--delete")) == 1  # refused before the chain is opened
        out = capsys.readouterr().out
        assert out.startswith("error: ") and out.count("\n") == 1, out


def test_command_without_spec_or_chain_says_so_in_one_line(tmp_path, capsys) -> None:
    cases = {
        "run spec": ["--spec", str(tmp_path / "missing.json"), "--chain.local", chain_at_block(tmp_path / "c.db", 5)],
        "cannot read the chain's current block": ["--spec", spec_file(tmp_path), "--chain.local",
                                                  str(tmp_path / "missing.db")],
        "cannot connect to subtensor": ["--spec", spec_file(tmp_path), "--subtensor.chain_endpoint",
                                        "ws://127.0.0.1:1"],
    }
    for message, flags in cases.items():
        assert prune.main(["--bucket", "my-bucket", "--keep-windows", "3", *flags]) == 1
        out = capsys.readouterr().out
        assert out.startswith("error: ") and message in out and out.count("\n") == 1, out
    assert not (tmp_path / "missing.db").exists()  # attaching to a chain never creates one
