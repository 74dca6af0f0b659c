"""Progress displays: on where someone watches, silent in logs; advice attached to errors."""
from __future__ import annotations

import asyncio
import io

from mapreduce.ops.advice import describe
from mapreduce.ops.progress import TransferProgress, bar
from storage import AccessDenied, RetriesExhausted, TransferStats

MiB = 1024 * 1024


async def test_live_display_follows_the_counters() -> None:
    stats, out = TransferStats(), io.StringIO()
    progress = TransferProgress(stats, "miner S3", enabled=True, file=out, interval=0.01).start()
    stats.sent(3 * MiB)
    stats.received(512 * 1024)
    with stats.call("PutObject"):
        stats.retried("PutObject")
    await asyncio.sleep(0.1)
    progress.close()
    progress.close()  # idempotent
    text = out.getvalue()
    assert "miner S3" in text and "up 3.0 MiB, down 512.0 KiB, 1 calls, 1 retries, 0 errors" in text


async def test_silent_when_not_on_a_terminal() -> None:
    stats, out = TransferStats(), io.StringIO()  # a StringIO is not a tty, like a pm2 log
    progress = TransferProgress(stats, "validator S3", file=out).start()
    stats.sent(10)
    await asyncio.sleep(0.02)
    progress.close()
    assert not progress.enabled and out.getvalue() == ""
    assert list(bar(range(5), "objects", file=out)) == [0, 1, 2, 3, 4] and out.getvalue() == ""
    shown = io.StringIO()
    assert list(bar(range(3), "objects", enabled=True, file=shown)) == [0, 1, 2] and "objects" in shown.getvalue()


def test_errors_come_with_what_to_do_and_no_secrets() -> None:
    denied = describe(AccessDenied("my-bucket", "k", operation="PutObject"))
    assert denied.startswith("AccessDenied: ") and "What to do:" in denied and "MR_S3_ACCESS_KEY_ID" in denied
    exhausted = describe(RetriesExhausted("GetObject", "b", "k", 8, "timeout", 120.0))
    assert "MR_S3_ENDPOINT_URL" in exhausted
    assert describe(KeyError("x")) == "KeyError: 'x'"  # nothing made up for errors it does not know
