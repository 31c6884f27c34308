"""tests/deploy: the container test's report (image size, what it exercised) at the end of the run."""

from __future__ import annotations

from typing import Any


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from deploy.containers import REPORT

    if REPORT:
        terminalreporter.write_sep("-", "container test")
        for line in REPORT:
            terminalreporter.write_line(line)
