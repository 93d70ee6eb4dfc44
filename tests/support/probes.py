"""Probes of a running system: the daemon's pid and peak memory, the ledger's health, S3 listings."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path
from typing import Any


def daemon_pid(config: Path) -> int:
    """The pid of `processor run --config CONFIG` (the daemon `processor local` starts)."""
    found = subprocess.run(["pgrep", "-f", f"worker run --config {config}"],
                           capture_output=True, text=True, timeout=10)
    pids = [int(p) for p in found.stdout.split()]
    assert len(pids) == 1, f"expected one daemon for {config}, found {pids}"
    return pids[0]


def memory_kib(pid: int) -> dict[str, int]:
    """VmHWM (peak RSS) and VmRSS of a live process, in KiB."""
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            figures[name] = int(value.split()[0])
    return figures


def integrity(ledger: Path) -> str:
    """SQLite's own verdict on the ledger file (WAL included): "ok" when intact."""
    db = sqlite3.connect(str(ledger), timeout=30)
    try:
        return "; ".join(row[0] for row in db.execute("PRAGMA integrity_check"))
    finally:
        db.close()


def object_keys(s3: Any, bucket: str) -> list[str]:
    """Every key in ``bucket``, over all pages of the listing."""
    return [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
