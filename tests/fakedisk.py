"""A fake ``shutil.disk_usage`` for the pipeline's disk-space tests (no disk is filled)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple


class DiskUsage(NamedTuple):
    total: int
    used: int
    free: int


@dataclass
class FakeDisk:
    """``shutil.disk_usage`` of a volume whose free space a test sets."""

    total: int
    free: int
    #: Every path asked about.
    asked: list[Path] = field(default_factory=list)

    def __call__(self, path: Path) -> DiskUsage:
        self.asked.append(path)
        return DiskUsage(self.total, self.total - self.free, self.free)
