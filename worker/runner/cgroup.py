"""Each job in a cgroup of its own, where the daemon has a delegated cgroup v2 subtree.

Under systemd with ``Delegate=yes`` the service's cgroup belongs to the daemon.
The cgroup v2 rule "no processes in an inner group" means the daemon first
moves itself into a leaf (``<service>/daemon``) and enables the controllers it
was given (``cpu``, ``memory``, ``pids``) for the subtree; each job then gets
``<service>/job-<id>-<n>``, its command is placed there before it execs
(``JobCgroup.enter``, in the child), and the job ends by killing the whole group
(``cgroup.kill``, else every PID in ``cgroup.procs`` until it is empty) — what
systemd's ``KillMode=control-group``, Docker and AWS Batch do. Nothing a job
starts can leave the group: not a ``setsid`` child, not a double fork.

The group also measures the job: ``cpu.stat`` (``usage_usec``: every process
the job ever had) and ``memory.peak``, and enforces the optional limits
``processing.memory_max`` (MiB), ``cpu_quota`` (percent of one CPU, as
systemd's ``CPUQuota=``) and ``tasks_max``. ``memory.events`` tells an OOM
kill apart from a crash.

Where no such subtree exists (``processor local``, a container, the tests, a
unit without ``Delegate=``) ``detect`` returns None and ``worker.runner.process``
falls back to the process group plus the marker sweep.
"""

from __future__ import annotations

import errno
import itertools
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from worker.config.settings import ProcessingSettings

#: The leaf the daemon moves itself into so its own group may hold job groups.
DAEMON_LEAF = "daemon"

#: Controllers the job groups use when the subtree offers them.
CONTROLLERS = ("cpu", "memory", "pids")

#: cpu.max's period, in microseconds (the kernel's default).
CPU_PERIOD_US = 100_000

_serial = itertools.count(1)

_log = structlog.get_logger("processor.cgroup")


@dataclass(frozen=True)
class Limits:
    """Per-job limits; 0 means none."""

    memory_max_mb: int = 0
    cpu_quota_percent: int = 0
    tasks_max: int = 0

    def __bool__(self) -> bool:
        return bool(self.memory_max_mb or self.cpu_quota_percent or self.tasks_max)


@dataclass(frozen=True)
class Usage:
    cpu_s: float | None
    peak_memory_bytes: int | None
    oom_kills: int


def job_cgroups(
    settings: ProcessingSettings, environ: Mapping[str, str], *, proc_self: Path = Path("/proc/self")
) -> tuple[Limits, JobCgroups | None]:
    """The configured limits, and the job cgroups when the daemon runs as a systemd service
    with a delegated subtree (``INVOCATION_ID`` set, its cgroup writable); says once when a
    configured limit cannot be enforced here."""
    limits = Limits(settings.memory_max, settings.cpu_quota, settings.tasks_max)
    cgroups = JobCgroups.detect(proc_self=proc_self) if environ.get("INVOCATION_ID") else None
    if cgroups is None:
        _log.info("job_cgroups_off", reason="no delegated cgroup v2 subtree (Delegate=yes)",
                  fallback="process group + marker sweep")
        unenforced = [f"processing.{k}" for k in ("memory_max", "cpu_quota", "tasks_max")
                      if getattr(settings, k)]
    else:
        _log.info("job_cgroups_on", base=str(cgroups.base), controllers=sorted(cgroups.controllers))
        unenforced = cgroups.unenforced(limits)
    if unenforced:
        _log.warning("job_limits_not_enforced", limits=unenforced,
                     reason="they need a delegated cgroup v2 subtree with their controller")
    return limits, cgroups


def _own_cgroup(proc_self: Path) -> str | None:
    try:
        lines = (proc_self / "cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            return line[3:]
    return None


def _cgroup2_mount(proc_self: Path) -> Path | None:
    try:
        lines = (proc_self / "mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            return Path(left.split()[4])
    return None


class JobCgroups:
    """The delegated subtree (``base``): makes, measures and kills one group per job."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.controllers = frozenset(_read(base / "cgroup.subtree_control").split())

    @classmethod
    def detect(cls, *, proc_self: Path = Path("/proc/self")) -> JobCgroups | None:
        """The daemon's own cgroup when it is delegated to it (writable, not the root)."""
        own, mount = _own_cgroup(proc_self), _cgroup2_mount(proc_self)
        if own is None or mount is None or own in ("/", ""):
            return None
        current = mount / own.lstrip("/")
        # Moved into its leaf by an earlier start (a restart keeps the cgroup).
        base = current.parent if current.name == DAEMON_LEAF else current
        if not _delegated_to_us(base) or not os.access(base / "cgroup.procs", os.W_OK):
            return None
        # Only the daemon may live there (its leaf needs the group to itself otherwise).
        others = set(_read(base / "cgroup.procs").split()) - {str(os.getpid())}
        if others:
            return None
        try:
            return cls.delegated(base)
        except OSError:
            return None

    @classmethod
    def delegated(cls, base: Path) -> JobCgroups:
        """Take ``base`` over: the daemon into ``base/daemon``, controllers on for job groups."""
        leaf = base / DAEMON_LEAF
        leaf.mkdir(exist_ok=True)
        (leaf / "cgroup.procs").write_text(str(os.getpid()))
        offered = set(_read(base / "cgroup.controllers").split())
        wanted = [name for name in CONTROLLERS if name in offered]
        if wanted:
            (base / "cgroup.subtree_control").write_text(" ".join(f"+{name}" for name in wanted))
        return cls(base)

    def create(self, job_id: str, limits: Limits) -> JobCgroup:
        """A new, empty group for one attempt of ``job_id``, its limits written."""
        path = self.base / f"job-{job_id}-{os.getpid()}-{next(_serial)}"
        path.mkdir()
        group = JobCgroup(path)
        try:
            group.limit(limits, self.controllers)
        except OSError:
            group.remove()
            raise
        return group

    def unenforced(self, limits: Limits) -> list[str]:
        """The configured limits this subtree cannot enforce (its controller is missing)."""
        needs = {"memory_max": ("memory", limits.memory_max_mb),
                 "cpu_quota": ("cpu", limits.cpu_quota_percent),
                 "tasks_max": ("pids", limits.tasks_max)}
        return [f"processing.{key}" for key, (controller, value) in needs.items()
                if value and controller not in self.controllers]


class JobCgroup:
    """One job's group."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._procs = str(path / "cgroup.procs")

    def enter(self) -> None:
        """Move the calling process into the group: run in the child before exec."""
        fd = os.open(self._procs, os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)

    def limit(self, limits: Limits, controllers: frozenset[str]) -> None:
        if limits.memory_max_mb and "memory" in controllers:
            (self.path / "memory.max").write_text(str(limits.memory_max_mb * 1024 * 1024))
            if (self.path / "memory.swap.max").exists():
                (self.path / "memory.swap.max").write_text("0")  # over the limit means over it
        if limits.cpu_quota_percent and "cpu" in controllers:
            quota = limits.cpu_quota_percent * CPU_PERIOD_US // 100
            (self.path / "cpu.max").write_text(f"{quota} {CPU_PERIOD_US}")
        if limits.tasks_max and "pids" in controllers:
            (self.path / "pids.max").write_text(str(limits.tasks_max))

    def pids(self) -> list[int]:
        try:
            return [int(pid) for pid in _read(self.path / "cgroup.procs").split()]
        except OSError:
            return []

    def kill(self, wait_s: float = 10.0) -> int:
        """SIGKILL every process in the group and wait until it is empty; the count found."""
        found = len(self.pids())
        try:
            (self.path / "cgroup.kill").write_text("1")
        except OSError:  # kernel < 5.14: one by one, until nothing is left
            pass
        deadline = time.monotonic() + wait_s
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    continue
            time.sleep(0.01)
        return found

    def usage(self) -> Usage:
        cpu = _keyed(self.path / "cpu.stat").get("usage_usec")
        try:
            peak: int | None = int(_read(self.path / "memory.peak"))
        except (OSError, ValueError):
            peak = None
        events = _keyed(self.path / "memory.events")
        return Usage(None if cpu is None else cpu / 1e6, peak, events.get("oom_kill", 0))

    def remove(self) -> None:
        """Remove the (empty) group; a group that will not go is left for the next start."""
        for _ in range(100):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    return
                time.sleep(0.01)  # the last process is still being torn down


def _delegated_to_us(base: Path) -> bool:
    """systemd marks a delegated group (``Delegate=``) with the ``trusted.delegate`` /
    ``user.delegate`` xattr (v251+) and chowns it to the service user: a writable group
    without either is someone else's (root may write anywhere)."""
    for name in ("trusted.delegate", "user.delegate"):
        try:
            if os.getxattr(base, name) == b"1":
                return True
        except OSError:
            continue
    try:
        return os.geteuid() != 0 and base.stat().st_uid == os.geteuid()
    except OSError:
        return False


def _read(path: Path) -> str:
    return path.read_text()


def _keyed(path: Path) -> dict[str, int]:
    try:
        text = _read(path)
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if value.strip().isdigit():
            values[name] = int(value)
    return values
