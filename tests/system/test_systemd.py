"""processor under a real systemd: the unit, sd_notify, journald, restarts, the watchdog, drain.

A throw-away container (tests/support/nspawn.py) boots systemd on an overlay of
this machine's root; the repository's unit, sysusers and tmpfiles files are
installed into it unchanged (a drop-in only adds the emulator's credentials and
a short watchdog for the test), an ext4 image on a loop device plays the EBS
volume at /var/lib/processor, and the emulator runs on the host's loopback.

The machine is booted once for the module; each test stands alone: the
``stopped`` fixture stops the service, empties the volume (a fresh ledger) and
notes where the journal is, and ``service`` starts it from there. A test reads
only the journal written since its own set-up, so any order, or one test alone, runs.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.nspawn import Machine, unavailable_reason
from tests.support.paths import REPO
from tests.support.waiting import wait_until
from worker.telemetry import systemd

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))

IN, OUT = "sys-in", "sys-out"
STATE = "/var/lib/processor"
#: The install inside the machine, as on EC2 (a virtualenv of the distribution's Python).
VENV = "/opt/processor/venv"

#: Sleeps when the input starts with "slow"; when it starts with "escape", starts three
#: processes that leave its process group (a double-forked setsid daemon, a setsid child, a
#: nohup child), prints their PIDs and sleeps; when it starts with "hog", takes 256 MiB.
#: Then it summarises the input like the example program.
ESCAPE = (
    "import os, subprocess\n"
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    if os.fork() == 0:\n"
    "        print('escapee', os.getpid(), flush=True); time.sleep(600)\n"
    "    os._exit(0)\n"
    "for argv in (['setsid', 'sleep', '600'], ['nohup', 'sleep', '600']):\n"
    "    print('escapee', subprocess.Popen(argv, stdout=subprocess.DEVNULL).pid, flush=True)\n"
    "time.sleep(600)\n"
)
COMMAND = [
    f"{VENV}/bin/python", "-c",
    "import sys, time, pathlib, runpy; d = pathlib.Path(sys.argv[1]).read_bytes();"
    "time.sleep(4 if d.startswith(b'slow') else 0);"
    f"exec({ESCAPE!r}) if d.startswith(b'escape') else None;"
    "hog = bytearray(256 << 20) if d.startswith(b'hog') else None;"
    "sys.argv = ['summarize', sys.argv[1], sys.argv[2]]; runpy.run_module('worker.examples.summarize',"
    " run_name='__main__')",
    "{input}", "{output_dir}",
]


def wait(what: str, predicate: Callable[[], Any], timeout: float = 60) -> Any:
    """``predicate()``'s first truthy value; fails after ``timeout`` seconds without one."""
    return wait_until(predicate, stall_s=timeout, interval=0.2, describe=f"waiting for {what}")


def install_venv(box: Machine) -> None:
    """/opt/processor/venv on /usr/bin/python3, holding copies of this checkout's code and deps.

    Copies, not paths back to this run's virtualenv: the test's own interpreter
    may live under /root (pyenv) and the checkout under /tmp, which the unit's
    ProtectHome= and PrivateTmp= hide from the service, as they would on a host.
    """
    system_python = Path("/usr/bin/python3")
    if not system_python.exists():
        pytest.skip("no /usr/bin/python3 to build the service's virtualenv with")
    version = subprocess.run([str(system_python), "-c", "import sys; print(f'{sys.version_info[0]}."
                              "{sys.version_info[1]}')"], capture_output=True, text=True,
                             check=True).stdout.strip()
    if version != f"{sys.version_info[0]}.{sys.version_info[1]}":
        pytest.skip(f"/usr/bin/python3 is {version}, the test venv is {sys.version_info[:2]}")
    venv = box.root / VENV.lstrip("/")
    subprocess.run([str(system_python), "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    site = venv / f"lib/python{version}/site-packages"
    for package in ("worker", "lambda_trigger", "processor_shared"):
        shutil.copytree(REPO / package, site / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for dist in _runtime_closure():
        for file in dist.files or ():
            source = Path(str(dist.locate_file(file)))
            if source.is_file() and ".." not in file.parts:
                target = site / file
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
    for name, module in (("processor", "worker.cli"), ("processorctl", "worker.ctl.cli")):
        box.write(f"{VENV}/bin/{name}",
                  f"#!{VENV}/bin/python\nimport sys\nfrom {module} import main\nsys.exit(main())\n",
                  mode=0o755)


def _runtime_closure() -> list[importlib.metadata.Distribution]:
    """The installed distributions the package needs at run time, with the ``systemd`` extra.

    As on an instance (the UserData installs ``processor[systemd]``), the daemon
    in the machine gets systemd-python -- where this run has it: without it
    (a host lacking libsystemd-dev) the machine runs the builtin backend, and
    the start test expects the backend this run has (the unit tests fail under CI=true
    if the library is missing there).
    """
    seen: dict[str, importlib.metadata.Distribution] = {}
    wanted = ['extra == "systemd"'] if systemd.library_available() else []
    pending = [r for r in importlib.metadata.requires("processor") or []
               if "extra ==" not in r or any(w in r for w in wanted)]
    while pending:
        name = re.split(r"[\s<>=!~;\[(]", pending.pop(), maxsplit=1)[0].lower().replace("_", "-")
        if name in seen:
            continue
        dist = importlib.metadata.distribution(name)
        seen[name] = dist
        pending += [r for r in dist.requires or [] if "extra ==" not in r]
    return list(seen.values())


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory, moto_endpoint: str) -> Iterator[Machine]:
    box = Machine(tmp_path_factory.mktemp("machine"))
    try:
        box.prepare()
        box.attach_volume(STATE)
        unit = REPO / "deploy/systemd"
        box.write("/etc/systemd/system/processor.service", (unit / "processor.service").read_text())
        box.write("/etc/sysusers.d/processor.conf", (unit / "processor.sysusers.conf").read_text())
        box.write("/etc/tmpfiles.d/processor.conf", (unit / "processor.tmpfiles.conf").read_text())
        install_venv(box)
        box.write("/etc/systemd/system/processor.service.d/test.conf", "\n".join([
            "[Service]",
            "Environment=AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing",
            "Environment=AWS_DEFAULT_REGION=us-east-1",
            f"Environment=AWS_ENDPOINT_URL={moto_endpoint}",
            "WatchdogSec=4",
            "TimeoutAbortSec=3",
            "RestartSec=1",
            "",
        ]))
        box.write("/etc/processor/processor.toml", "\n".join([
            "[s3]", f'output_bucket = "{OUT}"', f'endpoint_url = "{moto_endpoint}"',
            "[processing]", f"command = {json.dumps(COMMAND)}", "retry_base_s = 1",
            "drain_timeout_s = 30", "memory_max = 96", "[paths]", "min_free_mb = 1",
            "[logging]", "journald = true", "",
        ]), mode=0o640)
        box.boot()
        box.sh("systemd-sysusers")
        box.sh("systemd-tmpfiles", "--create", "/etc/tmpfiles.d/processor.conf")
        box.sh("systemctl", "daemon-reload")
        yield box
    finally:
        box.close()


@pytest.fixture(scope="module")
def s3(moto_endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    client = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                   region_name="us-east-1").client(
        "s3", endpoint_url=moto_endpoint, config=Config(s3={"addressing_style": "path"}))
    for bucket in (IN, OUT):
        client.create_bucket(Bucket=bucket)
    return client


def prop(box: Machine, name: str) -> str:
    return box.sh("systemctl", "show", "-P", name, "processor").stdout.strip()


def main_pid(box: Machine) -> str:
    """The daemon's PID; never "0", which `kill` would take as the whole process group."""
    pid = prop(box, "MainPID")
    assert pid.isdigit() and int(pid) > 1, f"processor is not running (MainPID={pid!r})"
    return pid


@dataclass
class Service:
    """processor in the machine, on an empty volume; its journal since the test's set-up."""

    box: Machine
    #: The journal's last entry before this test (``journalctl --after-cursor``).
    cursor: str

    def start(self) -> None:
        started = self.box.sh("systemctl", "start", "processor", check=False)
        assert started.returncode == 0, started.stderr + self.box.sh(
            "journalctl", "-u", "processor", "--no-pager", "-n", "50", check=False).stdout

    def journal(self, **fields: str) -> list[dict[str, Any]]:
        """The unit's journal entries (the daemon's and systemd's about it) since the set-up,
        those with ``fields`` only. Matched here: journalctl 252 with a field match and
        --after-cursor returns nothing."""
        out = self.box.sh("journalctl", "-u", "processor", "-o", "json", "--no-pager",
                          f"--after-cursor={self.cursor}", check=False).stdout
        entries = [json.loads(line) for line in out.splitlines() if line.strip()]
        return [e for e in entries if all(e.get(name) == value for name, value in fields.items())]

    def events(self, event: str) -> list[dict[str, Any]]:
        """The daemon's own ``event`` lines since the set-up, as it logged them."""
        return [json.loads(entry["MESSAGE"]) for entry in self.journal(EVENT=event)]


@pytest.fixture
def stopped(machine: Machine) -> Service:
    """processor stopped, its volume mounted and empty (no ledger, no work, no logs)."""
    machine.sh("systemctl", "stop", "processor", timeout=120, check=False)
    machine.sh("systemctl", "reset-failed", "processor", check=False)
    assert machine.sh("mountpoint", "-q", STATE, check=False).returncode == 0, \
        f"the volume is not mounted at {STATE}"
    machine.sh("find", STATE, "-mindepth", "1", "-maxdepth", "1", "!", "-name", "lost+found",
               "-exec", "rm", "-rf", "{}", "+")
    machine.sh("systemd-tmpfiles", "--create", "/etc/tmpfiles.d/processor.conf")
    last = machine.sh("journalctl", "-n", "1", "-o", "json", "--no-pager").stdout
    return Service(machine, json.loads(last)["__CURSOR"])


@pytest.fixture
def service(stopped: Service) -> Service:
    """processor started (``systemctl start`` returned: READY=1 was sent) on an empty volume."""
    stopped.start()
    return stopped


def submit(box: Machine, s3: Any, key: str, body: bytes) -> str:
    etag = s3.put_object(Bucket=IN, Key=key, Body=body)["ETag"]
    # As the SSM agent would: root, processorctl on the host's install, the default config.
    done = box.sh(f"{VENV}/bin/processorctl", "submit", "--bucket", IN, f"--key={key}",
                  f"--etag={etag}")
    return done.stdout.strip()


def job(box: Machine, job_id: str) -> dict[str, Any]:
    shown = box.sh(f"{VENV}/bin/processorctl", "show", job_id, "--json")
    return dict(json.loads(shown.stdout))


def finished(box: Machine, job_id: str, timeout: float = 90) -> dict[str, Any]:
    return dict(wait(f"job {job_id} to finish",
                     lambda: (j := job(box, job_id))["state"] in ("succeeded", "failed") and j,
                     timeout))


def test_start_returns_after_ready_and_status_shows_counts(stopped: Service) -> None:
    machine = stopped.box
    stopped.start()
    # Type=notify: start only returned once READY=1 was sent.
    assert prop(machine, "ActiveState") == "active"
    assert prop(machine, "SubState") == "running"
    status = machine.sh("systemctl", "status", "processor", "--no-pager", check=False).stdout
    assert "Status: \"0 running, 0 queued, 0 succeeded, 0 failed\"" in status, status
    # The daemon says which sd_notify/journald code it runs: systemd-python, as on an instance.
    started = wait("daemon_started in the journal", lambda: stopped.events("daemon_started"))
    assert [line["systemd_backend"] for line in started] == [systemd.BACKEND]
    # The ledger is on the volume, created by the service user.
    owner = machine.sh("stat", "-c", "%U", f"{STATE}/ledger/ledger.db").stdout.strip()
    assert owner == "processor"


def test_a_job_succeeds_and_the_journal_carries_its_fields(service: Service, s3: Any) -> None:
    machine = service.box
    job_id = submit(machine, s3, "reports/q4 summary.csv", b"a,b\n1,2\n3,4\n")
    done = finished(machine, job_id)
    assert done["state"] == "succeeded", done
    assert s3.get_object(Bucket=OUT, Key="reports/q4 summary.csv/_manifest.json")
    entries = wait("journal entries for the job", lambda: service.journal(JOB_ID=job_id))
    finished_lines = [e for e in entries if e.get("EVENT") == "job_finished"]
    assert finished_lines, entries[:3]
    assert finished_lines[0]["S3_KEY"] == "reports/q4 summary.csv"
    assert finished_lines[0]["JOB_STATE"] == "succeeded"
    wait("STATUS to count the job", lambda: "1 succeeded" in prop(machine, "StatusText"))


def test_a_cancelled_job_leaves_no_process_behind(service: Service, s3: Any) -> None:
    machine = service.box
    job_id = submit(machine, s3, "escape.txt", b"escape from the job")
    logged = wait("the escapees to start", lambda: (out := machine.sh(
        f"{VENV}/bin/processorctl", "logs", job_id, check=False).stdout).count("escapee") >= 3 and out)
    pids = [line.split()[1] for line in logged.splitlines() if line.startswith("escapee")]
    machine.sh(f"{VENV}/bin/processorctl", "cancel", job_id)
    done = wait("the job to end cancelled", lambda: (j := job(machine, job_id))["state"] == "cancelled" and j)
    assert done["cpu_s"] is not None, done
    for pid in pids:  # gone, or a zombie its reaper has not collected yet
        state = machine.sh("sh", "-c", f"grep '^State' /proc/{pid}/status || true").stdout
        assert state.strip() == "" or state.split()[1] == "Z", (pid, state)
    marked = machine.sh("sh", "-c", f"grep -l PROCESSOR_JOB_ID={job_id} /proc/[0-9]*/environ || true")
    assert marked.stdout.strip() == "", marked.stdout
    mode = "cgroup" if service.events("job_cgroups_on") else "fallback (group + sweep)"
    print(f"job box under systemd: {mode}")


def test_a_job_over_memory_max_fails_with_an_oom_reason(service: Service, s3: Any) -> None:
    machine = service.box
    if not service.events("job_cgroups_on") or service.events("job_limits_not_enforced"):
        pytest.skip("the service's delegated cgroup v2 subtree has no memory controller on this "
                    "host (a hybrid cgroup v1/v2 host): memory_max cannot be enforced here")
    job_id = submit(machine, s3, "hog.txt", b"hog memory")
    done = finished(machine, job_id)
    assert done["state"] == "failed" and "OOM" in done["error"], done
    assert done["counted_attempts"] == 0
    assert prop(machine, "ActiveState") == "active"  # the daemon is fine
    after = submit(machine, s3, "after-hog.txt", b"a,b\n1,2\n")
    assert finished(machine, after)["state"] == "succeeded"


def test_kill_9_restarts_and_the_interrupted_job_completes(service: Service, s3: Any) -> None:
    machine = service.box
    restarts = int(prop(machine, "NRestarts"))
    job_id = submit(machine, s3, "slow-kill.txt", b"slow words here")
    wait("job to run", lambda: job(machine, job_id)["state"] == "running")
    pid = main_pid(machine)
    machine.sh("kill", "-9", pid)
    wait("systemd to restart the daemon", lambda: int(prop(machine, "NRestarts")) > restarts
         and prop(machine, "ActiveState") == "active", timeout=60)
    done = finished(machine, job_id)
    assert done["state"] == "succeeded" and done["attempts"] == 2, done
    assert prop(machine, "MainPID") != pid


def test_a_stalled_loop_trips_the_watchdog(service: Service) -> None:
    machine = service.box
    restarts = int(prop(machine, "NRestarts"))
    pid = main_pid(machine)
    machine.sh("kill", "-STOP", pid)  # alive, but no more WATCHDOG=1
    wait("the watchdog to restart the daemon", lambda: int(prop(machine, "NRestarts")) > restarts
         and prop(machine, "ActiveState") == "active" and prop(machine, "MainPID") != pid, timeout=60)
    # systemd's own words, logged since this test began: the watchdog, not some other death.
    said = [str(e.get("MESSAGE", "")) for e in service.journal()]
    assert any("Watchdog timeout" in line for line in said), said[-20:]
    assert any("Failed with result 'watchdog'" in line for line in said), said[-20:]


def test_stop_drains_the_running_job_and_exits_cleanly(service: Service, s3: Any) -> None:
    machine = service.box
    job_id = submit(machine, s3, "slow-drain.txt", b"slow but steady")
    wait("job to run", lambda: job(machine, job_id)["state"] == "running")
    stopped = machine.sh("systemctl", "stop", "processor", timeout=120, check=False)
    assert stopped.returncode == 0, stopped.stderr
    assert prop(machine, "ActiveState") == "inactive"
    assert prop(machine, "Result") == "success" and prop(machine, "ExecMainStatus") == "0"
    assert job(machine, job_id)["state"] == "succeeded"


#: Where the volume is kept mounted while the test takes it away from /var/lib/processor.
ASIDE = "/run/processor-volume-aside"


@contextmanager
def volume_missing(box: Machine) -> Iterator[None]:
    """The volume unmounted from the state dir (kept mounted aside, and put back after)."""
    box.sh("mkdir", "-p", ASIDE)
    box.sh("mount", "--bind", STATE, ASIDE)
    box.sh("umount", STATE)
    try:
        yield
    finally:
        box.sh("mount", "--bind", ASIDE, STATE)
        box.sh("umount", ASIDE)


def test_the_unit_refuses_to_start_without_the_volume(stopped: Service) -> None:
    machine = stopped.box
    with volume_missing(machine):
        refused = machine.sh("systemctl", "start", "processor", check=False)
        assert refused.returncode != 0
        assert prop(machine, "ActiveState") != "active"
        why = refused.stderr + machine.sh("systemctl", "status", "processor", "--no-pager",
                                          check=False).stdout
        print(why)
        # AssertPathIsMountPoint= refused it (systemd 252's words; this test saw no other).
        assert "Assertion failed on job for processor.service" in refused.stderr, why
        leaked = machine.sh("ls", "-A", STATE, check=False).stdout.split()
        assert "ledger" not in leaked, "the daemon wrote to the root disk"
