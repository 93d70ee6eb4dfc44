"""A job's log file (``logs/jobs/<job>.log``), bounded: the head and the tail, with a marker.

The command's stdout and stderr reach the log through the daemon (pipes, not
the file itself), so ``logging.job_log_max_mb`` can hold: the first half of the
cap is written as it comes, then the newest bytes go to a ring file of the
other half (``<job>.log.tail``, on the same volume: a flood costs no memory),
and when the command ends the ring is appended after a marker line saying how
much was cut. The disk never holds more than 1.5 times the cap for a job. A
log that already holds earlier attempts counts them toward the head.

``logging.job_log_retention_days``: logs of jobs that ended longer ago than
that are removed (``expire``), checked at most hourly after a job ends.

Stdlib only: ``processorctl logs`` imports ``was_cut``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

#: The start of the marker line written where a log was cut.
CUT_MARKER = b"[processor: log cut:"

#: Logs are scanned for expiry at most this often.
EXPIRE_EVERY_S = 3600.0


class JobLog:
    """Appends to a job's log, keeping at most ``max_bytes`` (0: no cap). Thread-safe."""

    def __init__(self, path: Path, max_bytes: int = 0) -> None:
        self.path = path
        self._file = open(path, "ab", buffering=0)
        self._lock = threading.Lock()
        self._max = max_bytes
        self._head = max_bytes - max_bytes // 2
        self._tail = max_bytes // 2
        self._written = self._file.tell()
        self._ring: int | None = None  # fd of the tail ring, once the head is full
        self._ring_pos = 0  # bytes ever written to the ring
        self.cut = False

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``; OSError (a full disk) is the caller's to ignore or not."""
        with self._lock:
            if self._file.closed:
                return  # a straggler that kept the pipe open past the job: nothing more is kept
            if not self._max:
                self._file.write(chunk)
                return
            room = self._head - self._written
            if room > 0:
                self._file.write(chunk[:room])
                self._written += min(room, len(chunk))
                chunk = chunk[room:]
            if chunk:
                self._to_ring(chunk)

    def _to_ring(self, chunk: bytes) -> None:
        if self._tail <= 0:
            self._ring_pos += len(chunk)
            return
        if self._ring is None:
            ring_path = self.path.with_name(self.path.name + ".tail")
            self._ring = os.open(ring_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
            os.unlink(ring_path)  # nameless: gone with its descriptor, whatever happens
        if len(chunk) > self._tail:  # only its end can survive
            self._ring_pos += len(chunk) - self._tail
            chunk = chunk[-self._tail:]
        while chunk:
            at = self._ring_pos % self._tail
            part = chunk[: self._tail - at]
            os.pwrite(self._ring, part, at)
            self._ring_pos += len(part)
            chunk = chunk[len(part):]

    def close(self) -> None:
        """Append the kept tail after the marker (when anything was cut) and close."""
        with self._lock:
            if self._file.closed:
                return
            try:
                if self._ring_pos > self._tail or (self._ring_pos and self._tail <= 0):
                    self.cut = True
                    kept = min(self._ring_pos, self._tail)
                    omitted = self._ring_pos - kept
                    self._file.write(
                        b"\n" + CUT_MARKER + f" {omitted} bytes left out here "
                        f"(logging.job_log_max_mb keeps the first {self._head} and the last "
                        f"{self._tail} bytes)]\n".encode()
                    )
                if self._ring is not None:
                    self._file.write(self._ring_contents())
            finally:
                if self._ring is not None:
                    os.close(self._ring)
                    self._ring = None
                self._file.close()

    def _ring_contents(self) -> bytes:
        assert self._ring is not None
        if self._ring_pos <= self._tail:
            return os.pread(self._ring, self._ring_pos, 0)
        at = self._ring_pos % self._tail
        return os.pread(self._ring, self._tail - at, at) + os.pread(self._ring, at, 0)


def was_cut(path: Path) -> bool:
    """Whether ``path`` holds the marker of a cut log (read in blocks: logs can be large)."""
    overlap = len(CUT_MARKER)
    tail = b""
    try:
        with path.open("rb") as fh:
            while block := fh.read(1024 * 1024):
                if CUT_MARKER in tail + block:
                    return True
                tail = block[-overlap:]
    except OSError:
        return False
    return False


def expire(logs_dir: Path, older_than_s: float, *, keep: Callable[[str], bool],
           now: Callable[[], float] = time.time) -> list[str]:
    """Remove job logs last written more than ``older_than_s`` ago, except those ``keep(job_id)``
    asks for (a job still queued or running); return the job ids removed."""
    removed: list[str] = []
    cutoff = now() - older_than_s
    try:
        entries = list(os.scandir(logs_dir))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.endswith(".log") or not entry.is_file(follow_symlinks=False):
            continue
        job_id = entry.name[: -len(".log")]
        try:
            if entry.stat(follow_symlinks=False).st_mtime >= cutoff or keep(job_id):
                continue
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(job_id)
    return removed
