"""What a store says about one object: the record every listing, HEAD and write returns."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class ObjectInfo:
    """What the server knows about a stored object. ``etag`` is unquoted; ``last_modified`` is tz-aware UTC."""

    key: str
    size: int
    etag: str
    last_modified: datetime
