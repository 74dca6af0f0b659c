"""Observers: callables a role hands each finished window's record to (metrics, dashboards, tests).

A role keeps an :class:`Observers` list and calls :meth:`Observers.notify` once per window with its record. A
failing observer is logged and skipped: monitoring must never stop a miner or validator from doing its job.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Observer = Callable[[Any], None]


class Observers(list[Observer]):
    """A list of observers; ``notify(record)`` calls each in order."""

    def notify(self, record: Any) -> None:
        for observe in self:
            try:
                observe(record)
            except Exception:
                log.exception("observer %r failed on %s; carrying on", observe, type(record).__name__)
