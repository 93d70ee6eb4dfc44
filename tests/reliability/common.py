"""Helpers of the reliability suite: the daemon's peak memory, the ledger's health, S3 listings."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import CREDENTIALS
from worker.control import request
from worker.errors import ControlError


@contextmanager
def daemon(config: Path, socket: Path, timeout: float = 20) -> Iterator[subprocess.Popen[bytes]]:
    """`processor run` as a child, its stderr in ``<config dir>/daemon.stderr``; always stopped.

    Unlike tests/integration/test_daemon.py's helper, stderr goes to a file, not
    an unread pipe: a daemon that logs more than the pipe holds (64 KiB, about
    30 jobs) would block on its next log line and stall.
    """
    log_path = config.parent / "daemon.stderr"
    with log_path.open("ab") as err:
        proc = subprocess.Popen([sys.executable, "-m", "worker", "run", "--config", str(config)],
                                env={**os.environ, **CREDENTIALS}, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                request(socket, "ping", timeout=1)
                break
            except ControlError:
                assert time.monotonic() < deadline, "daemon did not answer on its socket"
                time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


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
    return [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
