"""The processing command as a child process.

The command runs without a shell, in its own session (so its whole process
group can be signalled), with stdout and stderr piped through the daemon into
the job's log file (``worker.runner.joblog.JobLog``: bounded by
``logging.job_log_max_mb``). A bounded tail of stderr is kept for the failure
record. On timeout or cancellation the group gets SIGTERM, then SIGKILL after
a grace period.

Nothing of a job outlives it: whatever ends the command (exit, failure,
cancel, timeout, drain), its process group is killed and then every process
still carrying the job's marker in its environment (``sweep``: children that
``setsid``, double-fork or ``nohup`` out of the group) is killed too, until
none is left. The child is reaped with ``wait4``, so its CPU time and peak
memory (``ru_maxrss``: the largest process of those it waited for) come back
with the result.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from worker.runner.cgroup import JobCgroup
from worker.runner.joblog import JobLog

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


#: How long ``sweep`` keeps killing a job's leftover processes before it gives up.
SWEEP_WAIT_S = 10.0


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    timed_out: bool
    cancelled: bool
    stderr_tail: str
    duration_s: float
    #: CPU seconds (user + system) of the command and the children it waited for.
    cpu_s: float = 0.0
    #: Peak resident memory in bytes of the largest of those processes.
    peak_memory_bytes: int = 0
    #: Processes of the job found still running after it ended, and killed.
    leftovers: int = 0
    #: The job's log reached logging.job_log_max_mb and was cut.
    log_cut: bool = False
    #: The kernel's OOM killer killed a process of the job (its cgroup's memory.max).
    oom_killed: bool = False


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
    log_max_bytes: int = 0,
    marker: str | None = None,
    cgroup: JobCgroup | None = None,
) -> CommandResult:
    """Run ``argv`` to completion, timeout or cancellation; never raises on exit status.

    ``cgroup``: the job's own (empty) cgroup (worker.runner.cgroup): the command starts
    in it, the whole group is killed when the command ends and its counters
    are the job's usage. Without one, ``marker``: an ``NAME=value`` entry of
    ``env`` unique to this job; every process still carrying it once the
    command has ended is killed (``sweep``).
    Raises OSError when the command cannot be started at all (missing binary,
    not executable): the caller decides what that means for the job.
    """
    started = time.monotonic()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail = _TailBuffer(STDERR_TAIL_BYTES)
    log = JobLog(log_path, log_max_bytes)
    proc = _start(argv, cwd, env, cgroup, log)
    assert proc.stdout is not None and proc.stderr is not None
    readers = [
        threading.Thread(target=_pump, args=(proc.stderr, log, tail), daemon=True,
                         name=f"stderr-{proc.pid}"),
        threading.Thread(target=_pump, args=(proc.stdout, log, None), daemon=True,
                         name=f"stdout-{proc.pid}"),
    ]
    for reader in readers:
        reader.start()
    leftovers = 0
    try:
        with _ExitWatch(proc) as watch:
            timed_out, cancelled = _wait(proc, watch, started + timeout_s, cancel, kill_grace_s)
    finally:
        # Whatever ended it, nothing of the job may run on: its cgroup, or its group and marker.
        _kill_group(proc.pid)
        if cgroup is not None:
            leftovers = cgroup.kill()
        elif marker is not None:
            leftovers = len(sweep(marker))
        for reader in readers:
            reader.join(timeout=5)
        log.close()
    cpu_s, peak, oom = _usage(watch, cgroup)
    return CommandResult(
        returncode=proc.returncode,
        timed_out=timed_out,
        cancelled=cancelled,
        stderr_tail=tail.text(),
        duration_s=time.monotonic() - started,
        cpu_s=cpu_s,
        peak_memory_bytes=peak,
        leftovers=leftovers,
        log_cut=log.cut,
        oom_killed=oom,
    )


def _usage(watch: _ExitWatch, cgroup: JobCgroup | None) -> tuple[float, int, bool]:
    """(CPU seconds, peak memory, OOM-killed) of the command: the whole cgroup's counters when
    it had one (every process the job had), else the command's own from ``wait4``."""
    if cgroup is None:
        return watch.cpu_s, watch.peak_memory_bytes, False
    used = cgroup.usage()
    return (used.cpu_s if used.cpu_s is not None else watch.cpu_s,
            used.peak_memory_bytes if used.peak_memory_bytes is not None else watch.peak_memory_bytes,
            used.oom_kills > 0)


def _start(argv: Sequence[str], cwd: Path, env: Mapping[str, str], cgroup: JobCgroup | None,
           log: JobLog) -> subprocess.Popen[bytes]:
    """The command in a session of its own (and its cgroup), both outputs piped; the log is
    closed if it cannot start."""
    try:
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
            # Into its cgroup before exec, so nothing it starts is ever outside it.
            preexec_fn=cgroup.enter if cgroup is not None else None,
        )
    except BaseException:
        log.close()
        raise


def _wait(proc: subprocess.Popen[bytes], watch: _ExitWatch, deadline: float,
          cancel: StopToken | None, kill_grace_s: float) -> tuple[bool, bool]:
    """Until the command exits, or its group is stopped at the deadline or on a cancel:
    ``(timed_out, cancelled)``."""
    while not watch.exited(CHECK_INTERVAL_S):
        cancelled = cancel is not None and cancel.is_set()
        timed_out = not cancelled and time.monotonic() >= deadline
        if timed_out or cancelled:
            _stop_group(proc, watch, kill_grace_s)
            return timed_out, cancelled
    return False, False


class _ExitWatch:
    """Waits for the child's exit the moment it happens: poll() on a pidfd (Linux
    5.3+), where ``Popen.wait(timeout)`` would sleep in growing steps and notice
    a short command late; short sleeps where pidfds are missing. The child is
    reaped with ``wait4`` for its resource usage (``cpu_s``, ``peak_memory_bytes``)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc
        self._fd = -1
        self._poll: select.poll | None = None
        self.cpu_s = 0.0
        self.peak_memory_bytes = 0

    def __enter__(self) -> _ExitWatch:
        try:
            self._fd = os.pidfd_open(self._proc.pid)
        except (AttributeError, OSError):
            return self
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd >= 0:
            os.close(self._fd)

    def exited(self, timeout_s: float) -> bool:
        """Whether the child has exited (and is reaped), waiting up to ``timeout_s``."""
        if self._proc.returncode is not None:
            return True
        if self._poll is not None:
            if not self._poll.poll(timeout_s * 1000):
                return False
            return self._reap(0)
        deadline = time.monotonic() + timeout_s
        while not self._reap(os.WNOHANG):
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(0.01, timeout_s))
        return True

    def _reap(self, flags: int) -> bool:
        try:
            pid, status, usage = os.wait4(self._proc.pid, flags)
        except ChildProcessError:  # reaped elsewhere (Popen's own bookkeeping)
            self._proc.wait()
            return True
        if pid == 0:
            return False
        self._proc.returncode = os.waitstatus_to_exitcode(status)
        self.cpu_s = usage.ru_utime + usage.ru_stime
        self.peak_memory_bytes = usage.ru_maxrss * 1024  # Linux reports KiB
        return True


def _pump(stream: IO[bytes], log: JobLog, tail: _TailBuffer | None) -> None:
    # Keep draining even when the log cannot be written (full disk): a pipe
    # nobody reads would block the command until its timeout.
    while chunk := stream.read1(65536):  # type: ignore[attr-defined]
        if tail is not None:
            tail.add(chunk)
        try:
            log.write(chunk)
        except OSError:
            pass
    stream.close()


def _stop_group(proc: subprocess.Popen[bytes], watch: _ExitWatch, grace_s: float) -> None:
    """SIGTERM the command's process group, SIGKILL it if still alive after the grace."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        if watch.exited(wait_s):
            return


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def sweep(marker: str, *, proc: Path = Path("/proc"), wait_s: float = SWEEP_WAIT_S) -> list[int]:
    """Kill every process whose environment holds ``marker`` (``NAME=value``) until none is left.

    What a job leaves behind when it escaped its process group (``setsid``, a
    double fork, a daemonised helper): it still carries the job's environment.
    Each match is opened as a pidfd first and its environment read again through
    that pin, so a recycled PID is never signalled. Scans repeat (a process may
    fork while its siblings are being killed) until one finds nothing or
    ``wait_s`` has passed. Returns the PIDs killed.
    """
    wanted = marker.encode()
    killed: list[int] = []
    deadline = time.monotonic() + wait_s
    while True:
        found = _marked(proc, wanted)
        for pid in found:
            if _kill_marked(pid, proc, wanted) and pid not in killed:
                killed.append(pid)
        if not found or time.monotonic() >= deadline:
            return killed
        time.sleep(0.02)


def _marked(proc: Path, wanted: bytes) -> list[int]:
    pids = []
    me = os.getpid()
    for entry in proc.iterdir() if proc.is_dir() else ():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        if _has_marker(entry, wanted):
            pids.append(int(entry.name))
    return pids


def _has_marker(entry: Path, wanted: bytes) -> bool:
    try:
        environ = (entry / "environ").read_bytes()
    except OSError:
        return False  # gone, a zombie, or not ours to read
    return wanted in environ.split(b"\0")


def _kill_marked(pid: int, proc: Path, wanted: bytes) -> bool:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except (AttributeError, OSError):  # no pidfds: the scan just read it, accept the tiny window
        return _signal(pid)
    try:
        if not _has_marker(proc / str(pid), wanted):
            return False  # the PID was recycled between the scan and the pin
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)


def _signal(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


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
