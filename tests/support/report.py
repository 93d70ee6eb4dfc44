"""Facts tests want in every CI log (exposure score, verify result …), printed at the end of the run."""

from __future__ import annotations

#: Appended to by tests; tests/conftest.py's pytest_terminal_summary prints it.
REPORT: list[str] = []
