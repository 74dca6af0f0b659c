"""Text for the tables the fault and hostile suites print (docs/RELIABILITY.md is made from them)."""
from __future__ import annotations


def shorten(text: str, width: int = 110) -> str:
    """``text`` cut at a word boundary to at most ``width`` characters, marked when cut (never mid-word)."""
    return text if len(text) <= width else text[:width].rsplit(" ", 1)[0] + " ..."
