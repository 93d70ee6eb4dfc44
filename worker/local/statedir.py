"""The state dir of `processor local`: claimed (lock, port) before anything in it is reset.

A second `processor local` on the same state dir must leave the first one's
ledger, config and jobs alone, so the order is: refuse a directory that is not
ours (nothing written), take ``.processor-local.lock`` (an ``flock``, like the
daemon's own ``daemon.lock``; held for the stack's whole life), check that no
daemon still holds a ``daemon.lock`` under it (a daemon orphaned by a killed
stack), check the emulator's port, and only then empty the directory.
"""

from __future__ import annotations

from pathlib import Path

from worker.errors import ConfigError, ProcessorError
from worker.local.emulator import check_port_free
from worker.state import statelock

#: Marks a directory as ours, so a reset never deletes an operator's files.
MARKER = ".processor-local"

#: The lock `processor local` holds on its state dir (never deleted by a reset).
LOCK_NAME = ".processor-local.lock"


class StateDirInUse(ProcessorError):
    """Another `processor local` (or a daemon left by one) uses the state dir (.holder_pid)."""

    def __init__(self, path: Path, holder_pid: int | None, what: str) -> None:
        holder = f"pid {holder_pid}" if holder_pid is not None else "a process whose pid is not recorded yet"
        super().__init__(
            f"--state-dir {path} is in use by {holder} ({what}); nothing was reset. "
            "Stop it first, or pick another --state-dir (and --port)"
        )
        self.holder_pid = holder_pid


def claim(path: Path, port: int) -> tuple[Path, statelock.StateLock]:
    """Lock and reset ``path`` for a new stack; its resolved path and the held lock.

    Raises ConfigError (not ours, port busy) or StateDirInUse, in both cases
    having deleted nothing.
    """
    path = path.resolve()
    _check_ours(path)
    try:
        lock = statelock.acquire(path, LOCK_NAME)
    except statelock.StateDirLocked as exc:
        raise StateDirInUse(path, exc.holder_pid, "another `processor local`") from None
    try:
        _check_no_daemon(path)
        check_port_free(port)
        _reset(path)
    except BaseException:
        lock.release()
        raise
    return path, lock


def _check_ours(path: Path) -> None:
    if path.exists() and any(path.iterdir()) and not (path / MARKER).exists():
        raise ConfigError(
            f"--state-dir {path} is not empty and was not made by `processor local`; "
            "refusing to reset it", key="--state-dir",
        )


def _check_no_daemon(path: Path) -> None:
    """A daemon of an earlier stack that outlived it still holds its state dir: refuse."""
    for lock_file in [path / statelock.LOCK_NAME, *path.glob(f"node-*/{statelock.LOCK_NAME}")]:
        if not lock_file.exists():
            continue
        try:
            statelock.acquire(lock_file.parent).release()
        except statelock.StateDirLocked as exc:
            raise StateDirInUse(path, exc.holder_pid, "a processor daemon") from None


def _reset(path: Path) -> None:
    """Empty the state dir but for the held lock: the emulator starts empty, so must the ledger."""
    import shutil

    for entry in path.iterdir():
        if entry.name == LOCK_NAME:
            continue  # unlinking a held lock file would let a third stack lock a new inode
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    (path / MARKER).write_text("state of `processor local`; reset at every start\n")
