"""`processor local`'s state dir and stop signals: a second stack never resets a running one's
state; one Ctrl-C drains and says what was left (exit 130), a second forces; ``--once``
interrupted says so instead of reporting jobs MISSING."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.emulator import CREDENTIALS
from tests.support.local import PROCESSOR, Running, free_port, running_local
from tests.support.waiting import wait_until
from worker.state.ledger import Ledger

pytestmark = pytest.mark.e2e

#: A processing command that takes a while (so a stop finds it running) and then succeeds.
SLOW = f"{sys.executable} -c 'import sys, time; time.sleep(float(sys.argv[2]))' {{input}} {{SECONDS}}"


def slow(seconds: float) -> str:
    return SLOW.replace("{SECONDS}", str(seconds))


def exit_status(running: Running, stall_s: float = 60) -> int:
    wait_until(lambda: running.proc.poll() is not None, stall_s=stall_s,
               progress=lambda: len(running.output()),
               describe=lambda: f"processor local did not exit:\n{running.output()}")
    return int(running.proc.returncode)


def jobs_in(ledger_path: Path) -> dict[str, str]:
    with Ledger(ledger_path) as ledger:
        return {job.key: job.state.value for job in ledger.list_jobs()}


def test_a_second_stack_on_the_same_state_dir_refuses_and_touches_nothing(tmp_path: Path) -> None:
    with running_local(tmp_path) as first:
        s3 = first.client("s3")
        s3.put_object(Bucket="processor-input", Key="before.csv", Body=b"a,b\n1,2\n")
        first.wait_for("succeeded: s3://processor-input/before.csv")
        state = tmp_path / "state"
        before = sorted(p.name for p in state.iterdir())
        for port in (free_port(), int(first.endpoint.rsplit(":", 1)[1])):
            second = subprocess.run(
                [PROCESSOR, "local", "--port", str(port), "--state-dir", str(state)],
                capture_output=True, text=True, timeout=120, cwd=tmp_path,
                env={**os.environ, **CREDENTIALS})
            assert second.returncode == 6, second.stdout + second.stderr
            assert f"in use by pid {first.proc.pid}" in second.stderr
        assert sorted(p.name for p in state.iterdir()) == before
        assert jobs_in(state / "ledger" / "ledger.db")["before.csv"] == "succeeded"
        # The first stack still works: a later upload is processed.
        s3.put_object(Bucket="processor-input", Key="after.csv", Body=b"a,b\n3,4\n")
        first.wait_for("succeeded: s3://processor-input/after.csv")


def test_one_ctrl_c_drains_and_says_what_was_left(tmp_path: Path) -> None:
    with running_local(tmp_path, "--command", slow(4)) as stack:
        s3 = stack.client("s3")
        for n in range(3):  # two slots: one job waits in the queue
            s3.put_object(Bucket="processor-input", Key=f"in/{n}.csv", Body=b"a\n1\n")
        ledger = tmp_path / "state" / "ledger" / "ledger.db"
        wait_until(lambda: sorted(jobs_in(ledger).values()) == ["queued", "running", "running"]
                   if ledger.exists() else False,
                   stall_s=60, progress=lambda: stack.output(), describe="two running, one queued")
        stack.proc.send_signal(signal.SIGINT)
        assert exit_status(stack) == 130, stack.output()
    out = stack.output()
    assert "Ctrl-C again to stop at once" in out
    assert "left 1 job(s) unfinished" in out and "(queued: in/" in out, out
    states = sorted(jobs_in(ledger).values())
    assert states == ["queued", "succeeded", "succeeded"], states  # the drain let both finish


def test_a_second_ctrl_c_stops_at_once(tmp_path: Path) -> None:
    with running_local(tmp_path, "--command", slow(600)) as stack:
        stack.client("s3").put_object(Bucket="processor-input", Key="long.csv", Body=b"a\n1\n")
        ledger = tmp_path / "state" / "ledger" / "ledger.db"
        wait_until(lambda: ledger.exists() and jobs_in(ledger).get("long.csv") == "running",
                   stall_s=60, progress=lambda: stack.output(), describe="the job never ran")
        stack.proc.send_signal(signal.SIGINT)
        stack.wait_for("stopping: draining")
        stack.proc.send_signal(signal.SIGINT)
        assert exit_status(stack) == 130, stack.output()
    out = stack.output()
    assert "stopped at once (second stop signal)" in out
    assert "left 1 job(s) unfinished" in out and "(queued: long.csv)" in out, out


def test_once_interrupted_reports_interrupted_not_missing(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [PROCESSOR, "local", "--once", "--port", str(free_port()), "--state-dir", str(tmp_path / "s"),
         "--command", slow(600)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        env={**os.environ, **CREDENTIALS})
    running = Running(proc, "")
    try:
        import threading

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                with running.lock:
                    running.lines.append(line.rstrip("\n"))

        threading.Thread(target=read, daemon=True).start()
        running.wait_for("upload  s3://processor-input/incoming/")
        proc.send_signal(signal.SIGINT)
        status = exit_status(running)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    out = running.output()
    assert status == 130, out
    assert "MISSING" not in out and "INTERRUPTED s3://processor-input/incoming/" in out, out
    assert "summary: interrupted;" in out
