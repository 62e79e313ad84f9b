"""Fixtures of the reliability tests; the pieces they share live in ``support``."""

from __future__ import annotations

from tests.reliability.support import TALLY


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001
    if not TALLY.total:
        return
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(TALLY.kinds.items()))
    statuses = ", ".join(f"{code}: {n}" for code, n in sorted(TALLY.statuses.items()))
    terminalreporter.write_sep("-", "v2 REST fuzzing")
    terminalreporter.write_line(f"{TALLY.total} cases ({kinds})")
    terminalreporter.write_line(f"answers by status: {statuses}")
