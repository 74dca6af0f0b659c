"""Retention: ``python -m mapreduce prune --bucket NAME --keep-windows N`` deletes protocol objects of old windows.

For each run found in the bucket, the newest window present is the reference: windows older than the newest N are
deleted, the newest N are kept. Measuring from the bucket rather than from the chain means a process that stopped
long ago keeps its last N windows instead of losing everything. Only keys of the protocol layout
(mapreduce/keys.py) are touched; anything else in the bucket is left alone and counted.

It is a dry run unless ``--delete`` is given. Deleting needs the account's own keys (``MR_S3_*``): the scoped keys
published on chain cannot delete, by design. On AWS S3 and R2 a lifecycle rule does the same job without a
process (docs/OPERATIONS.md, Retention).
"""
from __future__ import annotations

import argparse
import asyncio
from collections import defaultdict
from dataclasses import dataclass, field

from storage import ObjectStore, S3Config, StorageError

from . import keys
from .errors import InvalidObject, ProtocolError
from .names import check_bucket, check_run_id
from .progress import bar


@dataclass
class WindowUsage:
    objects: int = 0
    bytes: int = 0


@dataclass
class PrunePlan:
    """What a prune would delete: per run, per window, how many protocol objects and bytes."""

    bucket: str
    keep_windows: int
    usage: dict[str, dict[int, WindowUsage]] = field(default_factory=dict)  # run -> window -> usage
    foreign: int = 0  # objects that are not protocol objects: never deleted

    def doomed(self) -> list[tuple[str, int]]:
        """(run, window) of every window older than the newest ``keep_windows`` of its run."""
        out = []
        for run, windows in sorted(self.usage.items()):
            cutoff = max(windows) - self.keep_windows  # windows <= cutoff go
            out.extend((run, w) for w in sorted(windows) if w <= cutoff)
        return out

    def summary(self) -> str:
        lines = []
        for run, windows in sorted(self.usage.items()):
            gone = [w for r, w in self.doomed() if r == run]
            objs = sum(windows[w].objects for w in gone)
            size = sum(windows[w].bytes for w in gone)
            newest = max(windows)
            span = f"windows {gone[0]}..{gone[-1]}" if gone else "nothing"
            lines.append(f"run {run}: newest window {newest}, keeping {min(self.keep_windows, len(windows))} of "
                         f"{len(windows)} windows; deletes {span}: {objs} objects, {size / 2**20:.1f} MiB")
        if not lines:
            lines.append("no protocol objects in this bucket")
        if self.foreign:
            lines.append(f"{self.foreign} objects outside the protocol layout are left alone")
        return "\n".join(lines)


async def plan_prune(store: ObjectStore, bucket: str, keep_windows: int, run: str | None = None) -> PrunePlan:
    """One streaming pass over the listing, keeping only per-window totals (memory ~ number of windows)."""
    if keep_windows < 1:
        raise ValueError("keep_windows must be at least 1")
    plan = PrunePlan(bucket, keep_windows)
    usage: dict[str, dict[int, WindowUsage]] = defaultdict(lambda: defaultdict(WindowUsage))
    prefix = f"{check_run_id(run)}/" if run else ""
    async for info in store.iter_list(bucket, prefix):
        try:
            k = keys.ObjectKey.parse(info.key)
        except InvalidObject:
            plan.foreign += 1
            continue
        u = usage[k.run][k.window]
        u.objects += 1
        u.bytes += info.size
    plan.usage = {r: dict(w) for r, w in usage.items()}
    return plan


async def execute(store: ObjectStore, plan: PrunePlan) -> int:
    """Delete the doomed windows, one window prefix at a time; return how many objects were deleted.

    Each window is listed again just before deletion and filtered to protocol keys, so an object that appeared
    since the plan and is not a protocol object is still left alone.
    """
    deleted = 0
    for run, window in bar(plan.doomed(), "windows"):
        listing = await store.list(plan.bucket, keys.window_prefix(run, window))
        doomed = [i.key for i in listing if _is_protocol_key(i.key)]
        if doomed:
            deleted += await store.delete_many(plan.bucket, doomed)
    return deleted


def _is_protocol_key(key: str) -> bool:
    try:
        keys.ObjectKey.parse(key)
        return True
    except InvalidObject:
        return False


# -- the command -------------------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bucket", required=True, help="the bucket to prune (yours: a miner's, peer's or validator's)")
    p.add_argument("--keep-windows", type=int, required=True, metavar="N",
                   help="keep the newest N windows of each run (counted from the newest window in the bucket)")
    p.add_argument("--run", default=None, help="only this run id (default: every run in the bucket)")
    p.add_argument("--delete", action="store_true",
                   help="really delete (default: a dry run that prints what would be deleted)")
    p.add_argument("--env-file", default=".env", help="file of MR_S3_* variables (default: .env, if present)")


async def _run(args: argparse.Namespace) -> int:
    cfg = S3Config.from_env(env_file=args.env_file)  # a missing file is skipped
    async with ObjectStore(cfg) as store:
        plan = await plan_prune(store, args.bucket, args.keep_windows, args.run)
        print(plan.summary())
        if not args.delete:
            print("dry run: nothing deleted; add --delete to delete")
            return 0
        deleted = await execute(store, plan)
        print(f"deleted {deleted} objects from s3://{args.bucket}")
        return 0


def main(args: argparse.Namespace) -> int:
    """``python -m mapreduce prune``; 0 on success, 1 with a message on failure."""
    from .advice import describe

    try:
        check_bucket(args.bucket)
        if args.keep_windows < 1:
            raise ValueError("--keep-windows must be at least 1")
        return asyncio.run(_run(args))
    except (ProtocolError, ValueError) as e:
        print(f"error: {e}")
        return 1
    except StorageError as e:
        print(f"error: {describe(e)}")
        return 1
