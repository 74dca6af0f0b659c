"""The hostile-input suite records one row per case; the session prints them as the "Hostile input" table that
docs/RELIABILITY.md keeps (regenerate: ``.venv/bin/pytest tests/hostile -q``)."""
from __future__ import annotations

import pytest

from tests.support.tables import shorten

ROWS: list[tuple[str, str, str, str]] = []


@pytest.fixture
def hostile():
    """``hostile(case, attack, outcome, reason)``: record one row of the table."""
    def record(case: str, attack: str, outcome: str, reason: str = "") -> None:
        ROWS.append((case, attack, outcome, reason))
    return record


def pytest_terminal_summary(terminalreporter) -> None:
    if not ROWS:
        return
    tr = terminalreporter
    tr.section("hostile input cases")
    tr.write_line("| case | what the attacker did | what each role now does | reason counted |")
    tr.write_line("| --- | --- | --- | --- |")
    for case, attack, outcome, reason in sorted(ROWS):
        tr.write_line(f"| {case} | {attack} | {outcome} | {shorten(reason)} |")
