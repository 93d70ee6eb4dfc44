"""The state-dir lock: one holder, refused contenders learn its pid, the kernel frees it on death."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.paths import REPO
from worker.state import statelock
from worker.state.statelock import StateDirLocked

# Holds the lock, optionally starts a grandchild that would inherit an
# inheritable descriptor, says "locked", then sleeps until killed.
HOLDER = (
    "import subprocess, sys, time, pathlib\n"
    "from worker.state import statelock\n"
    "lock = statelock.acquire(pathlib.Path(sys.argv[1]))\n"
    "if sys.argv[2] == 'spawn':\n"
    "    child = subprocess.Popen(['sleep', '60'])\n"
    "    print(child.pid, flush=True)\n"
    "print('locked', flush=True)\n"
    "time.sleep(60)\n"
)


@contextmanager
def holder(state_dir: Path, spawn: bool = False) -> Iterator[tuple[subprocess.Popen[str], int | None]]:
    """A child process holding the lock; killed (and any grandchild) when the block ends."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(state_dir), "spawn" if spawn else "-"],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    grandchild = None
    try:
        assert proc.stdout is not None
        if spawn:
            grandchild = int(proc.stdout.readline())
        assert proc.stdout.readline().strip() == "locked"
        yield proc, grandchild
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
        if grandchild is not None:
            try:
                os.kill(grandchild, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_second_lock_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    with holder(tmp_path / "state") as (proc, _):
        with pytest.raises(StateDirLocked) as refused:
            statelock.acquire(tmp_path / "state")
    assert refused.value.holder_pid == proc.pid
    assert refused.value.path == tmp_path / "state" / "daemon.lock"
    assert f"pid {proc.pid}" in str(refused.value) and "daemon.lock" in str(refused.value)


def test_the_lock_is_released_when_the_holder_is_killed_9(tmp_path: Path) -> None:
    with holder(tmp_path / "state") as (proc, _):
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    with statelock.acquire(tmp_path / "state") as lock:
        assert lock.held
        assert statelock.read_holder(lock.path) == os.getpid()


def test_commands_the_holder_started_do_not_keep_the_lock(tmp_path: Path) -> None:
    # A processing command outliving a kill -9'd daemon must not block the next daemon.
    with holder(tmp_path / "state", spawn=True) as (proc, grandchild):
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert grandchild is not None and Path(f"/proc/{grandchild}").exists()
        with statelock.acquire(tmp_path / "state") as lock:
            assert lock.held


def test_the_lock_fd_is_close_on_exec_and_released_by_release(tmp_path: Path) -> None:
    lock = statelock.acquire(tmp_path)
    try:
        assert fcntl.fcntl(lock._fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        with pytest.raises(StateDirLocked):  # a second open file description conflicts too
            statelock.acquire(tmp_path)
    finally:
        lock.release()
    lock.release()  # idempotent
    assert not lock.held
    with statelock.acquire(tmp_path):
        pass


def test_a_contender_racing_the_pid_write_gets_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "daemon.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # locked, pid not written yet
        with pytest.raises(StateDirLocked) as refused:
            statelock.acquire(tmp_path)
    finally:
        os.close(fd)
    assert refused.value.holder_pid is None and "pid is not recorded" in str(refused.value)


def test_a_stale_pid_from_a_dead_holder_is_overwritten(tmp_path: Path) -> None:
    (tmp_path / "daemon.lock").write_text("99999999\n")
    with statelock.acquire(tmp_path) as lock:
        assert lock.path.read_text() == f"{os.getpid()}\n"
