"""`TransferStats`: what an `ObjectStore` did, counted as it happens, for monitoring and progress displays.

Payload bytes are counted when a request that carried them succeeded (a whole small object, one multipart part,
one range), so a failed attempt that is retried is counted once, and a large transfer advances part by part.
Every request also counts under its S3 operation name: calls, retried attempts, failures by error class, and
seconds (retries and backoff included, so the time is what the caller waited). A GetObject for a byte range also
counts in ``ranged`` (a header or a sampled range, where a plain GET fetches a whole object): request-count models
(``bench/scale.py``) tell the two apart, S3 bills them alike.

With a ``label`` function, each call is also counted by ``(operation, label(target))``, where target is the key
(or, for a listing, the prefix) the call was about: what a benchmark needs to tell polls from audits, say. Without
one (the default) nothing more is kept.

One instance may be shared by several stores (one per endpoint and credentials) so that a process has a single
account. Written from the event loop; read from any thread (a metrics exporter runs in its own), hence the lock.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["OperationStats", "StatsSnapshot", "TransferStats"]


@dataclass
class OperationStats:
    """Counters of one S3 operation (``PutObject``, ``GetObject``, ``ListObjectsV2``, ...)."""

    calls: int = 0
    ranged: int = 0  # of ``calls``: GetObject calls for a byte range (a Range header), not the whole object
    retries: int = 0  # attempts after the first one of a call
    errors: Counter[str] = field(default_factory=Counter)  # failed calls by exception class name
    seconds: float = 0.0  # wall time of finished calls

    def copy(self) -> OperationStats:
        return OperationStats(self.calls, self.ranged, self.retries, Counter(self.errors), self.seconds)


@dataclass(frozen=True)
class StatsSnapshot:
    """A consistent copy of the counters at one moment."""

    bytes_sent: int
    bytes_received: int
    operations: dict[str, OperationStats]
    # (operation, label) -> calls, when the stats have a ``label`` function; a ranged GetObject is "GetObject:range"
    labelled: dict[tuple[str, str], int] = field(default_factory=dict)


class TransferStats:
    """Monotonic counters of bytes and requests; see the module docstring for what counts."""

    def __init__(self, label: Callable[[str | None], str] | None = None) -> None:
        """``label``: maps a call's key or listed prefix (None for bucket calls) to a class to count it under."""
        self._lock = threading.Lock()
        self._sent = 0
        self._received = 0
        self._ops: dict[str, OperationStats] = {}
        self._label = label
        self._labelled: Counter[tuple[str, str]] = Counter()

    def sent(self, nbytes: int) -> None:
        """Record ``nbytes`` of payload stored by a successful request."""
        with self._lock:
            self._sent += nbytes

    def received(self, nbytes: int) -> None:
        """Record ``nbytes`` of payload read by a successful request."""
        with self._lock:
            self._received += nbytes

    def retried(self, operation: str) -> None:
        """Record one more attempt of a call already counted by :meth:`call`."""
        with self._lock:
            self._op(operation).retries += 1

    @contextmanager
    def call(self, operation: str, *, ranged: bool = False, target: str | None = None) -> Iterator[None]:
        """Count one call of ``operation`` around its body: its time, and its failure if it raises. ``ranged``: a
        read of a byte range; ``target``: the key or listed prefix, for the ``label`` function."""
        label = self._label(target) if self._label is not None else None
        with self._lock:
            op = self._op(operation)
            op.calls += 1
            op.ranged += ranged
            if label is not None:
                self._labelled[(f"{operation}:range" if ranged else operation, label)] += 1
        started = time.monotonic()
        try:
            yield
        except Exception as exc:
            with self._lock:
                self._op(operation).errors[type(exc).__name__] += 1
            raise
        finally:
            elapsed = time.monotonic() - started
            with self._lock:
                self._op(operation).seconds += elapsed

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            return StatsSnapshot(self._sent, self._received, {k: v.copy() for k, v in self._ops.items()},
                                 dict(self._labelled))

    def _op(self, operation: str) -> OperationStats:
        op = self._ops.get(operation)
        if op is None:
            op = self._ops[operation] = OperationStats()
        return op
