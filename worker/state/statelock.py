"""One daemon per state dir: an exclusive ``flock`` on ``<state_dir>/daemon.lock``.

`processor run` takes this lock before anything else touches the state dir
(logs, ledger, recovery of interrupted jobs, orphan reaping, the socket). A
second daemon on the same state dir — same socket or not — would otherwise
requeue the first one's running jobs and kill their commands as "orphans".

Why ``flock`` and not a pid file: the kernel drops the lock when the holder
dies, however it dies (``kill -9``, OOM), so a stale file never blocks a
restart and no pid is ever guessed alive. The pid written into the file is
only for the operator's message. The file is never deleted: unlinking a lock
file lets two processes lock two different inodes of the same name.

`processorctl` never takes this lock: submitting must work while the daemon
runs (the ledger's own SQLite locking covers that).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType

from worker.errors import ProcessorError
from worker.state.dirs import make_dirs

#: Name of the lock file inside the state dir.
LOCK_NAME = "daemon.lock"


class StateDirLocked(ProcessorError):
    """Another process holds the state dir's lock (.path, .holder_pid or None)."""

    def __init__(self, path: Path, holder_pid: int | None) -> None:
        holder = f"pid {holder_pid}" if holder_pid is not None else "a process whose pid is not recorded yet"
        super().__init__(
            f"another processor daemon ({holder}) holds the state dir lock {path}; "
            "only one daemon may use a state dir"
        )
        self.path = path
        self.holder_pid = holder_pid


class StateLock:
    """The held lock; released by `release()` or when this process exits."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def release(self) -> None:
        """Close the descriptor, which drops the lock (idempotent)."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> StateLock:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def acquire(state_dir: Path, name: str = LOCK_NAME) -> StateLock:
    """Lock ``state_dir`` for this process, or raise `StateDirLocked` at once.

    Creates the state dir if needed (like the rest of start-up would) but writes
    nothing else into it. Raises OSError when the dir or file cannot be used.
    ``name`` is the lock file (`processor local` holds its own, beside its daemons').
    """
    make_dirs(state_dir)
    path = state_dir / name
    # O_CLOEXEC: processing commands are exec'd children and must not inherit
    # (and so keep alive) the daemon's lock after it dies.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise StateDirLocked(path, read_holder(path)) from exc
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        os.close(fd)
        raise
    return StateLock(path, fd)


def read_holder(path: Path) -> int | None:
    """The pid the holder wrote into the lock file; None if absent or unreadable.

    The holder writes its pid just after locking, so a contender racing that
    window reads an empty file: the message then says the pid is unknown.
    """
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None
