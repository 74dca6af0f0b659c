"""Retention: ``python -m mapreduce prune --bucket NAME --keep-windows N --spec RUN.json`` plus the chain flags
deletes protocol objects of one run's old windows.

The cutoff comes from the chain, never from the bucket: the current window is the run spec's window of the chain's
current block, and windows ``<= current - N`` of the spec's run are deleted, so the current window and the N - 1
before it stay. A bucket is no witness of time: others can write keys into a miner's bucket, and one junk key at
``{run}/w99999999/...`` must not make every real window look old. So windows newer than the current one are never
deleted, only reported (they are junk, or clock trouble: a writer ahead of the chain, or this command's chain or
spec not the run's), and other runs found in the bucket are left alone and reported (each has its own spec: prune
it with that spec). Only keys of the protocol layout (mapreduce/wire/keys.py) are touched; anything else is left alone
and counted.

It is a dry run unless ``--delete`` is given. Deleting needs the account's own keys (``MR_S3_*``): the scoped keys
published on chain cannot delete, by design. On AWS S3 and R2 a lifecycle rule does the same job without a
process (docs/OPERATIONS.md, Retention).

The chain flags are the miner's: ``--chain.local PATH`` for the embedded local chain, or ``--subtensor.network`` /
``--subtensor.chain_endpoint`` and ``--netuid``. They need the Bittensor SDK, so this module imports it only when the
command runs (``python -m mapreduce --help`` stays fast).
"""
from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass, field

from storage import ObjectStore, S3Config, StorageError

from ..errors import InvalidObject, ProtocolError
from ..wire import keys
from ..wire.names import check_bucket, check_run_id
from .flags import add_env_file_flag, env_file
from .progress import bar

MiB = 2**20
# Other runs found in the bucket are listed one line each up to this many; the rest in one line.
OTHER_RUNS_SHOWN = 10


@dataclass
class WindowUsage:
    objects: int = 0
    bytes: int = 0


@dataclass
class Tally:
    """Objects and bytes over a range of windows, and the lowest and highest window seen."""

    objects: int = 0
    bytes: int = 0
    first: int | None = None
    last: int | None = None

    def add(self, window: int, size: int) -> None:
        self.objects += 1
        self.bytes += size
        self.first = window if self.first is None else min(self.first, window)
        self.last = window if self.last is None else max(self.last, window)

    def describe(self) -> str:
        return f"{self.objects} objects, {self.bytes / MiB:.1f} MiB in windows {self.first}..{self.last}"


@dataclass
class PrunePlan:
    """What a prune of ``run`` would delete, measured from ``current_window`` (the chain's, never the bucket's).

    Windows ``<= cutoff`` (= ``current_window - keep_windows``) are deleted; windows ``cutoff + 1 .. current_window``
    are kept; windows above ``current_window`` are never deleted, whatever ``keep_windows`` says.
    """

    bucket: str
    run: str
    keep_windows: int
    current_window: int
    doomed_usage: dict[int, WindowUsage] = field(default_factory=dict)  # window <= cutoff -> usage
    kept: Tally = field(default_factory=Tally)  # cutoff < window <= current_window
    future: Tally = field(default_factory=Tally)  # window > current_window: never deleted
    other_runs: dict[str, Tally] = field(default_factory=dict)  # run -> usage; never deleted
    foreign: int = 0  # objects that are not protocol objects: never deleted

    @property
    def cutoff(self) -> int:
        """The newest window that is deleted; negative when nothing is old enough."""
        return self.current_window - self.keep_windows

    def doomed(self) -> list[int]:
        """The windows of ``run`` to delete, oldest first: those present at planning time and ``<= cutoff``."""
        return sorted(w for w in self.doomed_usage if w <= self.cutoff)

    def summary(self) -> str:
        gone = self.doomed()
        objs = sum(self.doomed_usage[w].objects for w in gone)
        size = sum(self.doomed_usage[w].bytes for w in gone)
        first_kept = max(self.cutoff + 1, 0)
        deletes = f"deletes windows {gone[0]}..{gone[-1]}: {objs} objects, {size / MiB:.1f} MiB" if gone \
            else "deletes nothing"
        lines = [f"run {self.run}: current window {self.current_window} (from the chain); keeping windows "
                 f"{first_kept}..{self.current_window}: {self.kept.objects} objects, {self.kept.bytes / MiB:.1f} MiB; "
                 f"{deletes}"]
        if gone and not self.kept.objects:
            lines.append(f"run {self.run}: nothing in the kept windows: if the run is still going, check that --spec "
                         "and the chain flags are the run's")
        if self.future.objects:
            lines.append(f"run {self.run}: {self.future.describe()}, newer than the current window: never deleted "
                         "(junk, or clocks out of step: check that --spec and the chain flags are the run's)")
        shown = sorted(self.other_runs.items())
        for run, tally in shown[:OTHER_RUNS_SHOWN]:
            lines.append(f"run {run}: {tally.describe()} left alone (another run: prune it with its own --spec)")
        if len(shown) > OTHER_RUNS_SHOWN:
            rest = shown[OTHER_RUNS_SHOWN:]
            lines.append(f"{len(rest)} more runs left alone: {sum(t.objects for _, t in rest)} objects")
        if self.foreign:
            lines.append(f"{self.foreign} objects outside the protocol layout are left alone")
        return "\n".join(lines)


async def plan_prune(store: ObjectStore, bucket: str, run: str, keep_windows: int,
                     current_window: int) -> PrunePlan:
    """Plan deleting ``run``'s windows ``<= current_window - keep_windows`` from ``bucket``; deletes nothing.

    ``current_window`` is the caller's: the command takes it from the chain. One streaming pass over the listing,
    keeping per-window totals only for the windows to delete (memory ~ their number, plus one line per other run).
    """
    check_run_id(run)
    if isinstance(keep_windows, bool) or not isinstance(keep_windows, int) or keep_windows < 1:
        raise ValueError(f"keep_windows must be an integer of at least 1, got {keep_windows!r}")
    if isinstance(current_window, bool) or not isinstance(current_window, int) or current_window < 0:
        raise ValueError(f"current_window must be an integer of at least 0, got {current_window!r}")
    plan = PrunePlan(bucket, run, keep_windows, current_window)
    async for info in store.iter_list(bucket, ""):
        try:
            k = keys.ObjectKey.parse(info.key)
        except InvalidObject:
            plan.foreign += 1
            continue
        if k.run != run:
            plan.other_runs.setdefault(k.run, Tally()).add(k.window, info.size)
        elif k.window > current_window:
            plan.future.add(k.window, info.size)
        elif k.window > plan.cutoff:
            plan.kept.add(k.window, info.size)
        else:
            u = plan.doomed_usage.setdefault(k.window, WindowUsage())
            u.objects += 1
            u.bytes += info.size
    return plan


async def execute(store: ObjectStore, plan: PrunePlan) -> int:
    """Delete the doomed windows, one window prefix at a time; return how many objects were deleted.

    Each window is listed again just before deletion and filtered to protocol keys of that run and window, so an
    object that appeared since the plan and is not a protocol object is still left alone.
    """
    deleted = 0
    for window in bar(plan.doomed(), "windows"):
        listing = await store.list(plan.bucket, keys.window_prefix(plan.run, window))
        doomed = [i.key for i in listing if _is_protocol_key_of(i.key, plan.run, window)]
        if doomed:
            deleted += await store.delete_many(plan.bucket, doomed)
    return deleted


def _is_protocol_key_of(key: str, run: str, window: int) -> bool:
    try:
        k = keys.ObjectKey.parse(key)
    except InvalidObject:
        return False
    return k.run == run and k.window == window


# -- the command -------------------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's flags: ours, then the chain's (``--chain.local``, or the SDK's ``--subtensor.*`` and ``--netuid``,
    as ``miner.py`` takes them). Imports the Bittensor SDK."""
    from ..chain.subtensor import SubtensorChain

    p.add_argument("--bucket", required=True, help="the bucket to prune (yours: a miner's, peer's or validator's)")
    p.add_argument("--keep-windows", type=int, required=True, metavar="N",
                   help="keep the current window and the N-1 before it; delete windows <= current - N")
    p.add_argument("--spec", required=True, metavar="PATH",
                   help="the run spec JSON: its run id is the run pruned, its blocks_per_window turns the chain's "
                        "block into the current window")
    p.add_argument("--delete", action="store_true",
                   help="really delete (default: a dry run that prints what would be deleted)")
    add_env_file_flag(p)
    p.add_argument("--chain.local", dest="chain.local", default=None, metavar="PATH",
                   help="read the block from the embedded local chain in this SQLite file instead of subtensor")
    SubtensorChain.add_args(p)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mapreduce prune",
        description="Delete the protocol objects of one run's windows older than the newest N, counted from the "
                    "chain's current window (dry run by default). Windows newer than the current one, other runs "
                    "and objects outside the protocol layout are never deleted.",
        epilog="S3 endpoint and credentials come from MR_S3_* variables or the --env-file; deleting needs the "
               "account's own keys, not the published ones.")
    add_arguments(p)
    return p


def current_block(args: argparse.Namespace) -> int:
    """The chain's current block, from the chain the flags name (as the miner opens it); ChainError if unreachable."""
    from .cli import open_chain

    chain = open_chain(args)
    try:
        return chain.current_block()
    finally:
        close = getattr(chain, "close", None)
        if close is not None:
            close()


async def _run(args: argparse.Namespace, run_id: str, block: int, current_window: int) -> int:
    cfg = S3Config.from_env(env_file=env_file(args))  # ./.env is skipped when absent
    async with ObjectStore(cfg) as store:
        plan = await plan_prune(store, args.bucket, run_id, args.keep_windows, current_window)
        print(f"chain at block {block}: window {current_window} of run {run_id}")
        print(plan.summary())
        if not args.delete:
            print("dry run: nothing deleted; add --delete to delete")
            return 0
        deleted = await execute(store, plan)
        print(f"deleted {deleted} objects from s3://{args.bucket}")
        return 0


def run(args: argparse.Namespace) -> int:
    """Prune as the parsed flags say; 0 on success, 1 with one ``error: ...`` line (no traceback) on failure."""
    from .advice import describe
    from ..chain.base import ChainError
    from .cli import SetupError, load_spec

    try:
        check_bucket(args.bucket)
        if args.keep_windows < 1:
            raise ValueError("--keep-windows must be at least 1")
        spec = load_spec(args.spec)
        try:
            block = current_block(args)
        except ChainError as e:
            return _fail(f"cannot read the chain's current block: {e}; check --chain.local, or --subtensor.network / "
                         "--subtensor.chain_endpoint and the network")
        return asyncio.run(_run(args, spec.run_id, block, spec.windows.window_of(block)))
    except (SetupError, ProtocolError, ValueError) as e:
        return _fail(str(e))
    except StorageError as e:
        return _fail(describe(e))
    except OSError as e:  # e.g. --spec names a directory or an unreadable file
        return _fail(f"{type(e).__name__}: {e}")


def _fail(message: str) -> int:
    print("error: " + " ".join(message.split()))  # one line, whatever the message holds
    return 1


def main(argv: list[str] | None = None) -> int:
    """``python -m mapreduce prune ARGV``."""
    return run(build_parser().parse_args(argv))
