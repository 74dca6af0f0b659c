"""Result rows and one table printer shared by the benchmarks (``python -m bench.storage``, ``python -m bench``)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TextIO

__all__ = ["Row", "format_table", "print_table"]


@dataclass(frozen=True)
class Row:
    """One measured figure, optionally next to a baseline measured in the same run.

    ``ratio`` is ours / baseline when higher is better (throughput) and baseline / ours otherwise (time), so a
    ratio above 1 always means "ours is better".
    """

    label: str
    value: float
    baseline: float | None = None
    unit: str = "MB/s"
    higher_is_better: bool = True
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline <= 0 or self.value <= 0:
            return None
        return self.value / self.baseline if self.higher_is_better else self.baseline / self.value


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"


def format_table(
    rows: Iterable[Row], *, title: str | None = None, value_header: str = "ours", baseline_header: str = "baseline"
) -> str:
    """The rows as an aligned plain-text table."""
    header = ("what", value_header, baseline_header, "unit", "ratio", "note")
    body = [
        (r.label, _num(r.value), _num(r.baseline), r.unit, f"{r.ratio:.2f}x" if r.ratio is not None else "-", r.note)
        for r in rows
    ]
    widths = [max(len(str(line[i])) for line in (header, *body)) for i in range(len(header))]
    align = ("<", ">", ">", "<", ">", "<")

    def fmt(line: tuple[str, ...]) -> str:
        return "  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(line, align, widths, strict=True)).rstrip()

    lines = [fmt(header), "  ".join("-" * w for w in widths)] + [fmt(line) for line in body]
    if title:
        lines.insert(0, title)
    return "\n".join(lines)


def print_table(
    rows: Iterable[Row],
    *,
    title: str | None = None,
    value_header: str = "ours",
    baseline_header: str = "baseline",
    file: TextIO | None = None,
) -> None:
    """Print `format_table` to ``file`` (stdout by default)."""
    print(format_table(rows, title=title, value_header=value_header, baseline_header=baseline_header),
          file=file or sys.stdout, flush=True)
