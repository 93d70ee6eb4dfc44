"""Each job in a cgroup of its own (worker/runner/cgroup.py), on the machine's real cgroup v2
hierarchy: the whole group is killed when the job ends, whatever escaped its process
group, and the group's counters are the job's usage. Needs a writable cgroup2 mount
(root; CI runs as root); memory limits need its memory controller (the system test)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.escapees import ESCAPE, alive
from tests.support.pipeline import claim, make
from tests.support.waiting import wait_until
from worker.jobs.states import JobState
from worker.runner.cgroup import DAEMON_LEAF, JobCgroup, JobCgroups, Limits, Usage, _cgroup2_mount
from worker.runner.process import StopToken


def _mount() -> Path | None:
    mount = _cgroup2_mount(Path("/proc/self"))
    return mount if mount is not None and os.access(mount, os.W_OK) else None


@pytest.fixture
def subtree() -> Iterator[Path]:
    mount = _mount()
    if mount is None:
        pytest.skip("no writable cgroup v2 hierarchy here (needs root)")
    base = mount / f"processor-test-{uuid.uuid4().hex[:8]}"
    try:
        base.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a cgroup under {mount}: {exc}")
    try:
        yield base
    finally:
        for child in [p for p in base.iterdir() if p.is_dir()]:  # what a failed test left
            (child / "cgroup.kill").write_text("1")
            wait_until(lambda c=child: not (c / "cgroup.procs").read_text().split(), stall_s=10,
                       describe=f"{child} did not empty")
            child.rmdir()
        base.rmdir()


@pytest.mark.parametrize("mode,ending", [("ok", "success"), ("hang", "cancel")])
def test_the_whole_group_is_killed_and_removed(
    tmp_path: Path, subtree: Path, mode: str, ending: str
) -> None:
    pids = tmp_path / "pids"
    pids.touch()
    pipeline, ledger, store = make(tmp_path, [sys.executable, "-c", ESCAPE, "{input}", "{output_dir}",
                                              str(pids), mode])
    pipeline.cgroups = JobCgroups(subtree)
    job = claim(ledger, store, "k")
    token = StopToken()
    if ending == "cancel":
        def stop_when_started() -> None:
            wait_until(lambda: len(pids.read_text().split()) >= 3, stall_s=30, describe="no escapees")
            token.stop(StopToken.CANCEL)
        threading.Thread(target=stop_when_started, daemon=True).start()
    done = pipeline.run(job, token)
    assert done.state is (JobState.SUCCEEDED if ending == "success" else JobState.CANCELLED), done.error
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) == 3 and [pid for pid in started if alive(pid)] == []
    assert [p for p in subtree.iterdir() if p.is_dir()] == []  # the job's group is gone


def test_cpu_time_counts_what_escaped_the_command(tmp_path: Path, subtree: Path) -> None:
    """A double-forked child burns 0.4 s of CPU; the command waits for it but never reaps it:
    wait4 cannot see that time, the job's cgroup does."""
    burn = (
        "import os, sys, time\n"
        "flag = os.path.join(sys.argv[2], '..', 'burnt')\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        end = time.process_time() + 0.4\n"
        "        while time.process_time() < end: pass\n"
        "        open(flag, 'w').close(); time.sleep(600)\n"
        "    os._exit(0)\n"
        "while not os.path.exists(flag): time.sleep(0.01)\n"
    )
    pipeline, ledger, store = make(tmp_path, [sys.executable, "-c", burn, "{input}", "{output_dir}"])
    pipeline.cgroups = JobCgroups(subtree)
    done = pipeline.run(claim(ledger, store, "k"))
    assert done.state is JobState.SUCCEEDED, done.error
    assert done.cpu_s is not None and done.cpu_s >= 0.4


def test_detect_takes_a_delegated_subtree_over(subtree: Path) -> None:
    """In a process of its own (it moves itself): inside a group systemd delegated, as a service."""
    try:
        os.setxattr(subtree, "trusted.delegate", b"1")
    except OSError as exc:
        pytest.skip(f"cannot mark {subtree} delegated as systemd does: {exc}")
    probe = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from worker.runner.cgroup import JobCgroups\n"
        f"Path({str(subtree)!r}, 'cgroup.procs').write_text(str(os.getpid()))\n"
        "found = JobCgroups.detect()\n"
        "print(found.base if found else None)\n"
        "print(Path('/proc/self/cgroup').read_text())\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "INVOCATION_ID": "x"})
    assert done.returncode == 0, done.stderr
    base, own = done.stdout.split("\n", 1)
    assert base == str(subtree)
    assert f"{subtree.name}/{DAEMON_LEAF}" in own


def test_a_writable_group_that_is_not_delegated_is_left_alone(subtree: Path) -> None:
    """Root may write to any group: without systemd's delegate mark the daemon takes none over."""
    probe = (
        "import os\n"
        "from pathlib import Path\n"
        "from worker.runner.cgroup import JobCgroups\n"
        f"Path({str(subtree)!r}, 'cgroup.procs').write_text(str(os.getpid()))\n"
        "print(JobCgroups.detect())\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "INVOCATION_ID": "x"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None" and not (subtree / DAEMON_LEAF).exists()


class _OomGroup(JobCgroup):
    """A real job group whose memory.events says the OOM killer struck (no memory controller
    on cgroup v2 here to make the kernel do it: the system test does, where there is one)."""

    def usage(self) -> Usage:
        return Usage(cpu_s=0.01, peak_memory_bytes=96 << 20, oom_kills=1)


class _OomGroups(JobCgroups):
    def create(self, job_id: str, limits: Limits) -> JobCgroup:
        return _OomGroup(super().create(job_id, limits).path)


def test_an_oom_kill_fails_the_job_with_that_reason_uncounted(tmp_path: Path, subtree: Path) -> None:
    suicide = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "{input}"]
    pipeline, ledger, store = make(tmp_path, suicide, memory_max=64)
    pipeline.cgroups = _OomGroups(subtree)
    done = pipeline.run(claim(ledger, store, "k"))
    assert done.state is JobState.FAILED and done.counted_attempts == 0
    assert done.error == ("killed by the kernel's OOM killer: the job went over "
                          "processing.memory_max (64 MiB)")
    assert done.peak_memory_bytes == 96 << 20 and done.exit_code == -9
