"""The processing command as a child process.

The command runs without a shell, in its own session (so its whole process
group can be signalled), with stdout and stderr appended to the job's log
file. A bounded tail of stderr is kept for the failure record. On timeout or
cancellation the group gets SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

#: How much of stderr is kept for the ledger and `_failed.json`.
STDERR_TAIL_BYTES = 4096

#: Exit status that asks for a retry (sysexits.h EX_TEMPFAIL).
EX_TEMPFAIL = 75

#: How often a running command's cancel flag and deadline are checked.
CHECK_INTERVAL_S = 0.1


class StopToken:
    """Asks a running job to stop, saying why: ``cancel`` (operator) or ``shutdown``."""

    CANCEL = "cancel"
    SHUTDOWN = "shutdown"

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None

    def stop(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    timed_out: bool
    cancelled: bool
    stderr_tail: str
    duration_s: float


def render_argv(template: Sequence[str], substitutions: Mapping[str, str]) -> list[str]:
    """Substitute ``{input}``/``{output_dir}`` as whole arguments, never by splicing text.

    Only an argument that *is* a placeholder is replaced, so no value can turn
    into extra arguments or options, whatever characters it holds.
    """
    return [substitutions.get(part, part) for part in template]


class _TailBuffer:
    def __init__(self, limit: int) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._limit = limit

    def add(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._size += len(chunk)
        while self._size - len(self._chunks[0]) >= self._limit:
            self._size -= len(self._chunks.popleft())

    def text(self) -> str:
        return b"".join(self._chunks)[-self._limit:].decode("utf-8", "replace")


def run_command(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log_path: Path,
    timeout_s: float,
    kill_grace_s: float,
    cancel: StopToken | None = None,
) -> CommandResult:
    """Run ``argv`` to completion, timeout or cancellation; never raises on exit status.

    Raises OSError when the command cannot be started at all (missing binary,
    not executable): the caller decides what that means for the job.
    """
    started = time.monotonic()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail = _TailBuffer(STDERR_TAIL_BYTES)
    with open(log_path, "ab", buffering=0) as log:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
        )
        assert proc.stderr is not None
        reader = threading.Thread(
            target=_pump_stderr, args=(proc.stderr, log, tail), daemon=True,
            name=f"stderr-{proc.pid}",
        )
        reader.start()
        timed_out = cancelled = False
        deadline = started + timeout_s
        with _ExitWatch(proc) as exited:
            while True:
                if exited(CHECK_INTERVAL_S):
                    # Reap anything the command left running in its group.
                    _kill_group(proc.pid)
                    break
                if cancel is not None and cancel.is_set():
                    cancelled = True
                elif time.monotonic() >= deadline:
                    timed_out = True
                if timed_out or cancelled:
                    _stop_group(proc, kill_grace_s)
                    break
        reader.join(timeout=5)
    return CommandResult(
        returncode=proc.returncode,
        timed_out=timed_out,
        cancelled=cancelled,
        stderr_tail=tail.text(),
        duration_s=time.monotonic() - started,
    )


class _ExitWatch:
    """Waits for the child's exit the moment it happens: poll() on a pidfd (Linux
    5.3+), where ``Popen.wait(timeout)`` would sleep in growing steps and notice
    a short command late. Falls back to ``Popen.wait`` where pidfds are missing."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc
        self._fd = -1
        self._poll: select.poll | None = None

    def __enter__(self) -> Callable[[float], bool]:
        try:
            self._fd = os.pidfd_open(self._proc.pid)
        except (AttributeError, OSError):
            return self._wait
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)
        return self._watch

    def __exit__(self, *exc: object) -> None:
        if self._fd >= 0:
            os.close(self._fd)

    def _watch(self, timeout_s: float) -> bool:
        assert self._poll is not None
        if self._poll.poll(timeout_s * 1000):
            self._proc.wait()  # exited: reap it and set returncode
            return True
        return False

    def _wait(self, timeout_s: float) -> bool:
        try:
            self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True


def _pump_stderr(stream: IO[bytes], log: IO[bytes], tail: _TailBuffer) -> None:
    # Keep draining even when the log cannot be written (full disk): a pipe
    # nobody reads would block the command until its timeout.
    while chunk := stream.read1(65536):  # type: ignore[attr-defined]
        tail.add(chunk)
        try:
            log.write(chunk)
        except OSError:
            pass


def _stop_group(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM the command's process group, SIGKILL it if still alive after the grace."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; make sure nothing it forked lingers in the group.
        _kill_group(proc.pid)
        return


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def reap_orphans(work_dir: Path, *, proc: Path = Path("/proc"), wait_s: float = 5.0) -> list[int]:
    """Kill processing commands left running by a daemon that died (kill -9, OOM).

    A command is recognised by ``PROCESSOR_INPUT`` in its environment pointing
    under this daemon's work dir, so PID reuse cannot hit an unrelated
    process. Its whole process group (it runs in its own session) is killed,
    so a rerun of the job never races a ghost writing into the same work dir.
    Under systemd the cgroup is cleaned anyway; this covers everything else.
    """
    marker = f"PROCESSOR_INPUT={work_dir}/".encode()
    groups: set[int] = set()
    for entry in proc.iterdir() if proc.is_dir() else ():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue  # gone, or not ours to read
        if any(item.startswith(marker) for item in environ.split(b"\0")):
            try:
                groups.add(os.getpgid(int(entry.name)))
            except ProcessLookupError:
                continue
    for group in groups:
        _kill_group(group)
    deadline = time.monotonic() + wait_s
    alive = set(groups)
    while alive and time.monotonic() < deadline:
        alive = {g for g in alive if _group_alive(g)}
        time.sleep(0.05)
    return sorted(groups)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
