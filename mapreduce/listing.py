"""Listings of prefixes that strangers can write into: capped, then filtered to keys participants really wrote.

Anyone holding a miner's public write key can fill its bucket with junk keys, so a listing is never trusted as it
comes. It is capped (:func:`list_capped`; a listing past its cap falls back to one small listing per expected
writer, so junk can cost a few more requests but cannot hide a participant's key or grow memory), and every key
is checked before anything is read (:func:`genuine`), cheapest first: the protocol's layout, the run, window, role
and segment wanted, a participant of the window in that role, and the key tag, the writer's own signature for
this bucket (:mod:`mapreduce.wire.keys`). What fails is counted by reason and never fetched.
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Callable

from storage import ListingTooLong, ObjectInfo

from .errors import InvalidObject, JunkKey
from .network import Bucket
from .wire.keys import TAGGED, ObjectKey, tag_valid

log = logging.getLogger(__name__)

PAGE = 1000  # keys per S3 listing page
PER_WRITER_KEYS = 64  # one writer has one key per segment (a few after retries); more is junk under its name


def cap_for(expected: int) -> int:
    """Keys a listing may return when ``expected`` genuine keys are there: room for retries and some junk."""
    return PAGE + 4 * max(0, expected)


async def list_capped(bucket: Bucket, prefix: str, expected: int, writers: list[str] | None = None,
                      concurrency: int = 16) -> list[ObjectInfo]:
    """Every key under ``prefix``, at most :func:`cap_for` (``expected``). Past the cap (a flood of junk) and with
    ``writers`` given, the keys under ``prefix + writer + "/"`` for each writer instead, at most
    :data:`PER_WRITER_KEYS` each (a writer whose own prefix is flooded past that is skipped, and logged).
    Raises :class:`~storage.ListingTooLong` past the cap when no ``writers`` are given, or when not one writer's
    prefix could be listed either (an endless listing, or junk under every name): the bucket cannot be read."""
    try:
        return await bucket.store.list(bucket.name, prefix, max_keys=cap_for(expected))
    except ListingTooLong:
        if writers is None:
            raise
        log.warning("s3://%s/%s holds more than %d keys (junk?); listing each of %d writers' prefixes instead",
                    bucket.name, prefix, cap_for(expected), len(writers))
    limit = asyncio.Semaphore(concurrency)

    async def one(writer: str) -> list[ObjectInfo] | None:
        async with limit:
            try:
                return await bucket.store.list(bucket.name, f"{prefix}{writer}/", max_keys=PER_WRITER_KEYS)
            except ListingTooLong:
                log.warning("s3://%s/%s%s/ is flooded with junk; that writer's keys cannot be found", bucket.name,
                            prefix, writer[:10])
                return None
    found = await asyncio.gather(*(one(w) for w in writers))
    if writers and all(infos is None for infos in found):
        raise ListingTooLong(bucket.name, prefix, cap_for(expected), "no writer's prefix could be listed either")
    return [info for infos in found if infos for info in infos]


def genuine(listing: list[ObjectInfo], run: str, window: int, role: str, owner: str,
            exclusion: Callable[[str], InvalidObject | None], rejected: Counter,
            segment: int | None = None) -> dict[tuple[int, str], list[tuple[ObjectKey, ObjectInfo]]]:
    """``(segment, writer) -> [(key, info)]`` sorted by key, for the keys of ``listing`` that participants wrote:
    of ``role`` in ``run``/``window`` (and ``segment``, if given), by a writer ``exclusion`` lets through (it
    returns the reason a writer does not count, or None), with a genuine tag for ``owner``'s bucket (tagged roles).
    Everything else is counted in ``rejected``: ``junk_key``, or the writer's exclusion reason."""
    out: dict[tuple[int, str], list[tuple[ObjectKey, ObjectInfo]]] = {}
    junk = 0
    for info in listing:
        try:
            k = ObjectKey.parse(info.key)
        except InvalidObject:
            junk += 1
            continue
        if (k.run, k.window, k.role) != (run, window, role) or (segment is not None and k.segment != segment):
            junk += 1
            continue
        excluded = exclusion(k.hotkey)
        if excluded is not None:
            rejected[excluded.reason] += 1
            continue
        if role in TAGGED and not tag_valid(k, owner):
            junk += 1
            continue
        out.setdefault((k.segment if k.segment is not None else -1, k.hotkey), []).append((k, info))
    if junk:
        rejected[JunkKey.reason] += junk
        log.info("s3 listing for window %d %s: %d junk keys dropped unread", window, role, junk)
    for candidates in out.values():
        candidates.sort(key=lambda kv: str(kv[0]))
    return out

