"""Which validators a peer or miner trusts, and what their reports say about the miners.

Every validator publishes a JSON report per window in its bucket (``{run}/w…/report/{validator}``), carrying its
smoothed score (EMA) of each miner. A reader trusts the report of a validator only if that validator:

- passes the run spec's and the reader's own allow and deny lists (else ``not_allowed``),
- holds a validator permit on chain (else ``no_permit``),
- has at least the minimum stake, the higher of the spec's ``min_validator_stake`` and the reader's own (else
  ``low_stake``);

and its report is there (``missing``), signed by it (else the codec's reason, e.g. ``bad_signature``) and well
formed (``malformed_report``). Each exclusion is counted under that reason. The trusted view of a miner is the
stake-weighted mean of the trusted validators' EMAs.

What it is used for, kept deliberately small: receivers of a broadcast order each segment's replicas with it
(:func:`order_replicas`), and a miner logs its standing with the trusted validators every window
(:func:`standing_line`). A report is a signed object (:mod:`mapreduce.wire.records`): a bucket that others can write
cannot forge standing.
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from storage import NotFound, ObjectTooLarge, StorageError

from . import seeds
from .chain.base import ChainError
from .errors import InvalidObject, NoBucketOnChain
from .network import Network
from .wire.expect import MAX_REPORT_BYTES
from .wire.keys import report_key
from .wire.records import decode_report

log = logging.getLogger(__name__)


@dataclass
class TrustedScores:
    """Miner scores as the trusted validators see them, and who was left out, by reason."""

    scores: dict[str, float] = field(default_factory=dict)  # miner -> stake-weighted mean EMA
    validators: dict[str, float] = field(default_factory=dict)  # trusted validator -> its stake
    windows: dict[str, int] = field(default_factory=dict)  # trusted validator -> window of the report used
    excluded: Counter = field(default_factory=Counter)  # reason -> validators left out


def _ema_of(data: bytes, run: str, validator: str, window: int) -> dict[str, float]:
    """The ``ema`` map of a signed report (its signature, window and every score in [0, 1] checked by
    :func:`~mapreduce.wire.records.decode_report`)."""
    return decode_report(data, run, window, validator)["ema"]


async def trusted_scores(net: Network, window: int, lookback: int = 4) -> TrustedScores:
    """The trusted validators' view of every miner, from their latest report among windows
    ``window - 1 … window - lookback`` (a window's report appears only after its reduce deadline)."""
    directory = await net.directory(window)
    out = TrustedScores()
    ema_by_validator: dict[str, dict[str, float]] = {}
    candidates = []
    for hotkey in directory.validators:
        reason = "not_allowed" if not directory.accepts(hotkey) else net.policy.distrusts(directory.neurons[hotkey])
        if reason is None:
            candidates.append(hotkey)
        else:
            out.excluded[reason] += 1
            log.debug("window %d: not trusting validator %s: %s", window, hotkey[:10], reason)
    reasons = await asyncio.gather(*(_read_latest(net, window, h, lookback, ema_by_validator, out)
                                     for h in candidates))
    for hotkey, reason in zip(candidates, reasons):
        if reason is None:
            out.validators[hotkey] = directory.neurons[hotkey].stake
        else:
            out.excluded[reason] += 1
    total = sum(out.validators.values())
    weights = {v: (s if total > 0 else 1.0) for v, s in out.validators.items()}
    for miner in directory.miners:
        seen = [(weights[v], ema[miner]) for v, ema in ema_by_validator.items() if miner in ema]
        norm = sum(w for w, _ in seen)
        if seen and norm > 0:
            out.scores[miner] = sum(w * s for w, s in seen) / norm
    return out


async def _read_latest(net: Network, window: int, hotkey: str, lookback: int,
                       ema_by_validator: dict[str, dict[str, float]], out: TrustedScores,
                       timeout: float = 10.0) -> str | None:
    """Load ``hotkey``'s latest report into ``ema_by_validator``; the reason it could not, or None. A validator's
    endpoint gets ``timeout`` seconds in all: one that stalls is left out (``timeout``), nobody waits on it."""
    try:
        return await asyncio.wait_for(_read_latest_unbounded(net, window, hotkey, lookback, ema_by_validator, out),
                                      timeout)
    except asyncio.TimeoutError:
        log.info("window %d: validator %s's reports did not come within %.0fs", window, hotkey[:10], timeout)
        return "timeout"


async def _read_latest_unbounded(net: Network, window: int, hotkey: str, lookback: int,
                                 ema_by_validator: dict[str, dict[str, float]], out: TrustedScores) -> str | None:
    try:
        bucket = await net.bucket(window, hotkey)
    except NoBucketOnChain:
        return "missing"
    for w in range(window - 1, max(-1, window - 1 - lookback), -1):
        key = str(report_key(net.spec.run_id, w, hotkey))
        try:
            data = await bucket.store.get(bucket.name, key, max_bytes=MAX_REPORT_BYTES)
            ema_by_validator[hotkey] = await asyncio.to_thread(_ema_of, bytes(data), net.spec.run_id, hotkey, w)
        except NotFound:
            continue  # not written yet, or that window was not validated: look further back
        except ObjectTooLarge as e:
            log.info("window %d: report of validator %s for window %d ignored: %s", window, hotkey[:10], w, e)
            return "oversized"
        except InvalidObject as e:
            log.info("window %d: report of validator %s for window %d refused (%s): %s", window, hotkey[:10], w,
                     e.reason, e)
            return e.reason
        except StorageError as e:
            log.info("window %d: cannot read validator %s's report: %s", window, hotkey[:10], e)
            return "unreadable"
        out.windows[hotkey] = w
        return None
    return "missing"


def order_replicas(replicas: Sequence[str], scores: Mapping[str, float], reader: str, segment: int,
                   demote_below: float = 0.5) -> list[str]:
    """The order in which ``reader`` should try ``replicas`` of ``segment``.

    Miners the trusted validators score below ``demote_below`` times the best replica's score go last, best first.
    The others (unscored miners included: a new miner gets the benefit of the doubt) keep their plan order rotated
    by ``sha256(reader|segment)``, so different readers start at different replicas and the download egress is
    spread over every good miner's bucket rather than concentrated on the first replica of each segment.
    """
    known = [scores[m] for m in replicas if m in scores]
    best = max(known, default=0.0)
    poor = sorted((m for m in replicas if m in scores and scores[m] < demote_below * best),
                  key=lambda m: -scores[m])
    good = [m for m in replicas if m not in poor]
    if good:
        k = seeds.reader_offset(reader, segment) % len(good)
        good = good[k:] + good[:k]
    return good + poor


async def standing_line(net: Network, window: int, timeout: float = 10.0) -> str:
    """One log line: how the trusted validators score this process's hotkey, and who was not trusted, by reason."""
    try:
        seen = await asyncio.wait_for(trusted_scores(net, window), timeout)
    except asyncio.TimeoutError:
        return f"window {window}: standing unknown (validators' reports not read within {timeout:.0f}s)"
    except ChainError as e:  # the directory could not be read: a log line, never the end of the caller
        return f"window {window}: standing unknown (chain unreadable: {e})"
    excluded = ", ".join(f"{k}={v}" for k, v in sorted(seen.excluded.items())) or "none"
    score = seen.scores.get(net.hotkey)
    return (f"window {window}: standing {'-' if score is None else f'{score:.3f}'} from {len(seen.validators)} "
            f"trusted validator(s) (stake {sum(seen.validators.values()):g}); not trusted: {excluded}")
