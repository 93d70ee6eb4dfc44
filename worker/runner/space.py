"""Room on the state volume for a job's input: fits now, fits later, or never fits.

An input that does not fit the free space *now* usually fits once the jobs
running beside it finish (their work dirs go right after upload), so it waits
(``InsufficientSpace.retryable``) instead of failing; only an input larger than
the whole volume (with ``paths.min_free_mb`` to spare) fails for good.

Two jobs checking at the same moment would both see the same free space and
both start downloading: each download's size is therefore reserved here, in
process, from the check until the download ends, and the next check counts
those reservations as used. A reservation is the whole input until its
download ends, so while one is being written its bytes count twice; that can
only make another job wait a little longer, never overfill the disk.

A waiting job is queued with a due time, like any retry, and checked again
then: the ledger has no way to bring a queued job's due time forward when
another job finishes. So the first check comes soon (most waits end when a job
of this daemon finishes and its work dir goes; the daemon's loop wakes when a
slot frees and claims the job once due), and the delay doubles to a cap, so a
wait of hours costs about 120 checks an hour (each one HEAD and two small
ledger commits), never a hot loop.
"""

from __future__ import annotations

import errno
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from worker.errors import InsufficientSpace

#: A command that fails with less than this free (or less than min_free_mb) gets
#: the free space added to its recorded error: the disk is the likely cause.
NEARLY_FULL_BYTES = 16 * 1024 * 1024


#: errno values that mean "the volume is full" (EDQUOT: a quota is, for this user).
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_no_space(exc: OSError) -> bool:
    """Whether ``exc`` says the volume (or the user's quota on it) is full."""
    return exc.errno in _NO_SPACE


class Usage(Protocol):
    """What ``shutil.disk_usage`` returns (a test passes its own)."""

    @property
    def total(self) -> int: ...

    @property
    def used(self) -> int: ...

    @property
    def free(self) -> int: ...


def _bytes(n: int) -> str:
    return f"{n:,} bytes"


class DiskSpace:
    """Checks an input against the volume holding ``root`` and reserves its size."""

    def __init__(
        self, root: Path, reserve_bytes: int,
        usage: Callable[[Path], Usage] = shutil.disk_usage,
    ) -> None:
        self.root = root
        self.reserve_bytes = reserve_bytes
        self._usage = usage
        self._lock = threading.Lock()
        #: Bytes each job's running download is about to write: {job id: input size}.
        self._reserved: dict[str, int] = {}

    def reserve(self, job_id: str, size: int) -> None:
        """Reserve room for a ``size``-byte input, or raise InsufficientSpace.

        ``retryable`` is False only when the input plus the reserve is larger
        than the whole volume; otherwise the job should wait and try again.
        """
        needed = size + self.reserve_bytes
        with self._lock:
            disk = self._usage(self.root)
            held = sum(n for job, n in self._reserved.items() if job != job_id)
            # used + free, not total: blocks reserved for root (ext4's 5 %) are never ours.
            usable = min(disk.total, disk.used + disk.free)
            if needed > usable:
                raise InsufficientSpace(
                    f"the input ({_bytes(size)}) plus paths.min_free_mb ({_bytes(self.reserve_bytes)}) "
                    f"needs {_bytes(needed)}, more than the whole state volume at {self.root} holds "
                    f"({_bytes(disk.total)} total, {_bytes(usable)} usable by the daemon, "
                    f"{_bytes(disk.free)} free): it can never fit here",
                    path=self.root, needed=needed, free=disk.free, total=disk.total, retryable=False,
                )
            if needed > disk.free - held:
                others = f", {_bytes(held)} of them held for other jobs' downloads" if held else ""
                raise InsufficientSpace(
                    f"waiting for disk space: the input ({_bytes(size)}) plus paths.min_free_mb needs "
                    f"{_bytes(needed)} on {self.root}, which has {_bytes(disk.free)} free{others}",
                    path=self.root, needed=needed, free=disk.free, total=disk.total, retryable=True,
                )
            self._reserved[job_id] = size

    def release(self, job_id: str) -> None:
        """The job's download has ended (its bytes are on disk now, or gone)."""
        with self._lock:
            self._reserved.pop(job_id, None)

    def free(self) -> int:
        return int(self._usage(self.root).free)

    def exhausted(self, what: str, exc: OSError, size: int = 0) -> InsufficientSpace:
        """The error for an ENOSPC while ``what``: a wait for space, naming the disk."""
        free = self.free()
        of_input = f" (the input is {_bytes(size)})" if size else ""
        return InsufficientSpace(
            f"waiting for disk space: {what} ran out of space on {self.root} "
            f"({exc.strerror or exc}); {_bytes(free)} free now{of_input}",
            path=self.root, needed=size + self.reserve_bytes, free=free, total=None, retryable=True,
        )

    def nearly_full_note(self) -> str | None:
        """A note for a failed command's error when the volume is (nearly) full, else None."""
        free = self.free()
        if free >= max(self.reserve_bytes, NEARLY_FULL_BYTES):
            return None
        return (f"the state volume at {self.root} had {_bytes(free)} free when the command "
                "exited (a full disk?)")
