"""The reliability suite records each case's outcome and figures; the session prints them as one table.

The table is what docs/RELIABILITY.md keeps (regenerate: ``.venv/bin/pytest tests/faults -q``).
"""
from __future__ import annotations

import pytest

CASES: list[tuple[str, str, str, str]] = []


@pytest.fixture
def reliability():
    """``reliability(group, case, outcome, figures)``: record one row of the table."""
    def record(group: str, case: str, outcome: str, figures: str = "") -> None:
        CASES.append((group, case, outcome, figures))
    return record


def pytest_terminal_summary(terminalreporter) -> None:
    if not CASES:
        return
    tr = terminalreporter
    tr.section("reliability cases")
    tr.write_line("| group | case | outcome | figures |")
    tr.write_line("| --- | --- | --- | --- |")
    for group, case, outcome, figures in sorted(CASES):
        tr.write_line(f"| {group} | {case} | {outcome} | {figures} |")
