"""``python -m mapreduce report --bucket NAME``: a validator's reports (:mod:`mapreduce.ops.reports`) drawn as PNG
files (:mod:`mapreduce.ops.plots`)."""
from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from storage import ObjectStore, S3Config, StorageError

from ..errors import ProtocolError
from ..wire.names import check_bucket
from .advice import describe
from .flags import add_env_file_flag, env_file
from .plots import render_report
from .reports import ReportError, ReportSet, load_reports


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bucket", required=True, help="the validator's bucket")
    p.add_argument("--run", default=None, help="run id (default: the run with the most recent report)")
    p.add_argument("--validator", default=None, metavar="HOTKEY",
                   help="validator hotkey (needed only if several validators share the bucket)")
    p.add_argument("--last", type=int, default=None, metavar="N", help="only the last N windows")
    p.add_argument("--windows", type=_window_range, default=None, metavar="FIRST:LAST",
                   help="only windows FIRST to LAST (inclusive)")
    p.add_argument("--label", action="append", default=[], metavar="HOTKEY=NAME",
                   help="show miner HOTKEY as NAME in the plots (repeatable; default: a short hotkey prefix)")
    p.add_argument("--out", type=Path, default=None,
                   help="directory for the PNG files (default: reports/<run>)")
    add_env_file_flag(p)


def _window_range(text: str) -> range:
    first, sep, last = text.partition(":")
    if not (sep and first.isdigit() and last.isdigit() and int(first) <= int(last)):
        raise argparse.ArgumentTypeError(f"not FIRST:LAST (two window numbers, FIRST <= LAST): {text!r}")
    return range(int(first), int(last) + 1)


def _labels(pairs: list[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        hotkey, sep, name = pair.partition("=")
        if not (sep and hotkey and name):
            raise ReportError(f"--label {pair!r}: not HOTKEY=NAME")
        labels[hotkey] = name
    return labels


async def _run(args: argparse.Namespace) -> ReportSet:
    cfg = S3Config.from_env(env_file=env_file(args))  # ./.env is skipped when absent
    async with ObjectStore(cfg) as store:
        return await load_reports(store, args.bucket, args.run, args.validator, args.last, windows=args.windows)


def main(args: argparse.Namespace) -> int:
    """``python -m mapreduce report``: print what was found and where the PNG files are; 0 on success."""
    try:
        check_bucket(args.bucket)
        labels = _labels(args.label)
        reports = asyncio.run(_run(args))
        reports.labels = labels
    except (ReportError, ProtocolError) as e:
        print(f"error: {e}")
        return 1
    except StorageError as e:
        print(f"error: {describe(e)}")
        return 1
    if not reports.reports:
        print(f"error: none of the {len(reports.skipped)} reports of run {reports.run} could be read")
        return 1
    out = args.out or Path("reports") / reports.run
    paths = render_report(reports, out)
    w = reports.windows
    print(f"run {reports.run}, validator {reports.validator}: {len(w)} windows ({w[0]}..{w[-1]})"
          + (f", {len(reports.skipped)} unreadable reports skipped" if reports.skipped else ""))
    for path in paths:
        print(f"wrote {path}")
    return 0
