"""A validator's per-window reports, read back from its bucket: ``python -m mapreduce report --bucket NAME``.

The validator writes one signed report per window at ``{run}/w{window:08d}/report/{hotkey}`` (mapreduce/wire/keys.py;
a JSON body signed by the validator, mapreduce/wire/records.py; the fields are those of
:class:`~mapreduce.validator.WindowReport`). This module finds them, picks one run and one validator, downloads the
reports and checks each one's signature and form. The ``report`` command (:mod:`mapreduce.ops.report_command`)
hands them to :mod:`mapreduce.ops.plots`, which draws the PNG files.
"""
from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass, field

from storage import ObjectInfo, ObjectStore, StorageError

from ..errors import InvalidObject
from ..wire import keys
from ..wire.expect import MAX_REPORT_BYTES
from ..wire.names import check_run_id
from ..wire.records import decode_report
from .progress import bar

log = logging.getLogger(__name__)


class ReportError(Exception):
    """The bucket holds no usable reports, or several candidates and no way to choose; the message says which."""


@dataclass
class ReportSet:
    """One validator's reports of one run, oldest window first."""

    bucket: str
    run: str
    validator: str
    reports: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # keys whose report could not be read or parsed
    labels: dict[str, str] = field(default_factory=dict)  # hotkey -> the name to show (default: a short prefix)

    @property
    def windows(self) -> list[int]:
        return [r["window"] for r in self.reports]


def find_reports(listing: list[ObjectInfo], run: str | None = None,
                 validator: str | None = None) -> tuple[str, str, list[ObjectInfo]]:
    """(run, validator, report objects) chosen from a bucket listing.

    Without ``run``, the run whose newest report is the most recent; without ``validator``, the only one that
    reported on that run (several: :class:`ReportError`, naming them).
    """
    found: dict[tuple[str, str], list[ObjectInfo]] = defaultdict(list)
    for info in listing:
        try:
            k = keys.ObjectKey.parse(info.key)
        except InvalidObject:
            continue
        if k.role == "report" and (run is None or k.run == run) and (validator is None or k.hotkey == validator):
            found[(k.run, k.hotkey)].append(info)
    if not found:
        wanted = " and ".join(x for x in (run and f"run {run}", validator and f"validator {validator}") if x)
        raise ReportError("no validator reports found" + (f" for {wanted}" if wanted else "")
                          + ": is this the validator's bucket, and has it finished a window?")
    if run is None:
        run = max(found, key=lambda rv: max(i.last_modified for i in found[rv]))[0]
    validators = sorted(v for r, v in found if r == run)
    if validator is None and len(validators) > 1:
        raise ReportError(f"several validators reported on run {run}: {', '.join(validators)}; "
                          "choose one with --validator")
    validator = validator or validators[0]
    return run, validator, sorted(found[(run, validator)], key=lambda i: i.key)


async def load_reports(store: ObjectStore, bucket: str, run: str | None = None, validator: str | None = None,
                       last: int | None = None, concurrency: int = 16, windows: range | None = None) -> ReportSet:
    """Download and parse the chosen reports: those of ``windows`` if given, then the ``last`` of them."""
    prefix = f"{check_run_id(run)}/" if run else ""  # a run's objects all start with it (mapreduce/wire/keys.py)
    listing = await store.list(bucket, prefix)
    run, validator, infos = find_reports(listing, run, validator)
    if windows is not None:
        infos = [i for i in infos if keys.ObjectKey.parse(i.key).window in windows]
    if last:
        infos = infos[-last:]
    result = ReportSet(bucket, run, validator)
    sem = asyncio.Semaphore(concurrency)

    async def fetch(info: ObjectInfo) -> tuple[str, dict | None]:
        async with sem:
            try:
                k = keys.ObjectKey.parse(info.key)
                data = await store.get(bucket, info.key, max_bytes=MAX_REPORT_BYTES)
                return info.key, await asyncio.to_thread(parse_report, bytes(data), k.run, k.window, k.hotkey)
            except (StorageError, InvalidObject) as e:
                log.warning("skipping %s: %s", info.key, e)
                return info.key, None

    tasks = [asyncio.ensure_future(fetch(i)) for i in infos]
    for task in bar(asyncio.as_completed(tasks), "reports", total=len(tasks)):
        key, report = await task
        if report is None:
            result.skipped.append(key)
        else:
            result.reports.append(report)
    result.reports.sort(key=lambda r: r["window"])
    return result


def parse_report(data: bytes, run: str, window: int, validator: str) -> dict:
    """A signed report's JSON, every field the plots use checked (mapreduce/wire/records.py); InvalidObject (e.g.
    ``bad_signature``, ``malformed_report``) if it is not this validator's report of this window."""
    return decode_report(data, run, window, validator)
