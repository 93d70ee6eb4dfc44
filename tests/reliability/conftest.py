"""Fixtures shared by the reliability suite (issue 7)."""

from __future__ import annotations

# The tmpfs state volume of the disk-full test, reused here (root only; skips elsewhere).
from tests.integration.test_disk_full import small_volume  # noqa: F401
