"""JSON written by other parties, parsed so that no bytes can raise anything but a typed error.

Every JSON text this package reads comes from someone else: safetensors headers, the JSON inside their metadata
(an output's input list, an upload record, a broadcast record), validators' reports. Python's parser is permissive
in ways an attacker can use: nesting a few thousand levels deep raises ``RecursionError`` (not a ``ValueError``),
duplicate keys silently keep the last value (another reader might keep the first), ``NaN``/``Infinity`` and
``1e999`` become non-finite floats, and a 5,000-digit integer raises. :func:`loads` turns every one of those into
:class:`~mapreduce.errors.MalformedHeader` (or the error class the caller names), and bounds the nesting depth, so
callers can then check the structure they expect without surprises.
"""
from __future__ import annotations

import json
import math
from typing import Any

from ..errors import InvalidObject, MalformedHeader

# No protocol JSON nests deeper than this (a header: object -> tensor entry -> shape list; a report: object ->
# list of checks -> check -> a few fields).
MAX_DEPTH = 8


class _Refused(Exception):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"duplicate key {key[:40]!r}")
        out[key] = value
    return out


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"number {text[:40]} is out of range")
    return value


def _depth_ok(value: Any, max_depth: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > max_depth:
                return False
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return True


def loads(text: str | bytes | bytearray | memoryview, what: str, max_depth: int = MAX_DEPTH,
          error: type[InvalidObject] = MalformedHeader) -> Any:
    """Parse ``text`` (``what`` names it in messages); raise ``error`` for anything but plain, shallow JSON."""
    try:
        if not isinstance(text, str):
            text = bytes(text).decode("utf-8")
        value = json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_float)
    except _Refused as e:
        raise error(f"{what}: {e}") from None
    except RecursionError:
        raise error(f"{what} nests too deeply") from None
    except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError; so are 5,000-digit integers
        raise error(f"{what} is not JSON: {str(e)[:120]}") from None
    if not _depth_ok(value, max_depth):
        raise error(f"{what} nests deeper than {max_depth} levels")
    return value


def dumps(value: Any) -> str:
    """Compact JSON, the form this package writes (the reader's :func:`loads` accepts it)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False)
