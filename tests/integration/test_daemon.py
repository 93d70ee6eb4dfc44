"""The real daemon (`processor run`) as a child process, on the emulator and a real ledger."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import daemon, log_events, processorctl, submit, wait_state, write_config
from tests.support.emulator import CREDENTIALS, with_buckets
from tests.support.waiting import wait_until
from worker import exitcodes
from worker.state.ledger import Ledger

IN, OUT = "daemon-in", "daemon-out"


@pytest.fixture
def s3(aws: Callable[[str], Any]) -> Any:
    return with_buckets(aws("s3"), IN, OUT)


def test_submitted_job_is_processed_and_listed(s3: Any, moto_endpoint: str, short_tmp: Path) -> None:
    config = write_config(short_tmp, output_bucket=OUT, endpoint=moto_endpoint)
    etag = s3.put_object(Bucket=IN, Key="reports/q3.csv", Body=b"a,b\n1,2\n3,4\n")["ETag"]
    with daemon(config, short_tmp / "p.sock") as proc:
        job_id = submit(config, IN, "reports/q3.csv", etag)
        job = wait_state(config, job_id, {"succeeded", "failed"})
        assert job["state"] == "succeeded", job
        manifest = json.loads(s3.get_object(Bucket=OUT, Key="reports/q3.csv/_manifest.json")["Body"].read())
        assert manifest["job_id"] == job_id
        summary = json.loads(s3.get_object(Bucket=OUT, Key="reports/q3.csv/summary.json")["Body"].read())
        assert summary["rows"] == 2
        listing = processorctl(config, "list")
        assert job_id in listing.stdout and "succeeded" in listing.stdout
        listed = json.loads(processorctl(config, "list", "--json", "--state", "succeeded").stdout)
        assert [j["id"] for j in listed] == [job_id]
        status = json.loads(processorctl(config, "status", "--json").stdout)
        assert status["daemon"]["pid"] == proc.pid and status["counts"]["succeeded"] == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finished = log_events(config, "job_finished")
    assert finished and finished[0]["job_id"] == job_id and finished[0]["state"] == "succeeded"


def test_jobs_submitted_while_down_run_when_the_daemon_starts(
    s3: Any, moto_endpoint: str, short_tmp: Path
) -> None:
    config = write_config(short_tmp, output_bucket=OUT, endpoint=moto_endpoint)
    ids = []
    for n in range(3):
        etag = s3.put_object(Bucket=IN, Key=f"while-down/{n}.txt", Body=b"word " * n)["ETag"]
        ids.append(submit(config, IN, f"while-down/{n}.txt", etag))
    with daemon(config, short_tmp / "p.sock"):
        for job_id in ids:
            assert wait_state(config, job_id, {"succeeded", "failed"})["state"] == "succeeded"


def test_kill_9_mid_job_is_requeued_and_completes(s3: Any, moto_endpoint: str, short_tmp: Path) -> None:
    marker = short_tmp / "attempts"
    # Slow on the first attempt only, so the kill lands while the command runs.
    body = (
        f"import sys, time, pathlib; m = pathlib.Path({str(marker)!r});"
        "n = len(m.read_text()) if m.exists() else 0;"
        "m.write_text('x' * (n + 1)); time.sleep(30 if n == 0 else 0);"
        "(pathlib.Path(sys.argv[2]) / 'done.txt').write_text(str(n + 1))"
    )
    config = write_config(short_tmp, output_bucket=OUT, endpoint=moto_endpoint,
                          command=[sys.executable, "-c", body, "{input}", "{output_dir}"])
    etag = s3.put_object(Bucket=IN, Key="crash.txt", Body=b"x")["ETag"]
    job_id = submit(config, IN, "crash.txt", etag)
    with daemon(config, short_tmp / "p.sock") as proc:
        wait_state(config, job_id, {"running"})
        wait_until(marker.exists, stall_s=60, describe="the command never started")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert json.loads(processorctl(config, "show", job_id, "--json").stdout)["state"] == "running"
    with daemon(config, short_tmp / "p.sock"):
        job = wait_state(config, job_id, {"succeeded", "failed"})
    assert job["state"] == "succeeded" and job["attempts"] == 2
    reasons = [t["reason"] for t in job["transitions"]]
    assert "interrupted: daemon restarted" in reasons
    assert s3.get_object(Bucket=OUT, Key="crash.txt/done.txt")["Body"].read() == b"2"
    assert not any((short_tmp / "state" / "work").iterdir())


def test_unknown_config_key_stops_the_daemon_with_a_clear_error(short_tmp: Path) -> None:
    config = write_config(short_tmp)
    config.write_text(config.read_text().replace("[processing]", "[processing]\nconcurency = 4"))
    done = subprocess.run([sys.executable, "-m", "worker", "run", "--config", str(config)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "processing.concurency" in done.stderr
    bad = processorctl(config, "list")
    assert bad.returncode == 2 and "processing.concurency" in bad.stderr


def test_unusable_ledger_makes_the_daemon_exit_non_zero(short_tmp: Path) -> None:
    config = write_config(short_tmp)
    ledger = short_tmp / "state" / "ledger" / "ledger.db"
    ledger.parent.mkdir(parents=True)
    ledger.write_bytes(b"this is not an SQLite database" * 100)
    done = subprocess.run([sys.executable, "-m", "worker", "run", "--config", str(config)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "cannot use state dir" in done.stderr


# Blocks until the test creates the release file, so the job is surely running
# while a second daemon is started; records each attempt.
HOLD = (
    "import sys, time, pathlib; d = pathlib.Path(sys.argv[3]);"
    "(d / 'attempts').open('a').write('x');"
    "[time.sleep(0.05) for _ in iter(lambda: (d / 'release').exists(), True)];"
    "(pathlib.Path(sys.argv[2]) / 'done.txt').write_text('ok')"
)


@pytest.mark.parametrize("other_socket", [False, True], ids=["same-socket", "other-socket"])
def test_a_second_daemon_on_a_live_state_dir_exits_and_touches_nothing(
    s3: Any, moto_endpoint: str, short_tmp: Path, other_socket: bool
) -> None:
    config = write_config(short_tmp, output_bucket=OUT, endpoint=moto_endpoint,
                          command=[sys.executable, "-c", HOLD, "{input}", "{output_dir}", str(short_tmp)])
    etag = s3.put_object(Bucket=IN, Key="live.txt", Body=b"x")["ETag"]
    job_id = submit(config, IN, "live.txt", etag)
    with daemon(config, short_tmp / "p.sock") as first:
        wait_state(config, job_id, {"running"})
        wait_until((short_tmp / "attempts").exists, stall_s=60, describe="the command never started")
        env = {**os.environ, **CREDENTIALS}
        if other_socket:
            env["PROCESSOR_PATHS_SOCKET"] = str(short_tmp / "other.sock")
        try:
            second = subprocess.run([sys.executable, "-m", "worker", "run", "--config", str(config)],
                                    env=env, capture_output=True, text=True, timeout=60)
        finally:
            (short_tmp / "release").touch()  # let the job finish whatever happened
        assert second.returncode == exitcodes.STATE_DIR_LOCKED, second.stderr[-3000:]
        assert f"pid {first.pid}" in second.stderr, second.stderr
        assert str(short_tmp / "state" / "daemon.lock") in second.stderr, second.stderr
        assert not (short_tmp / "other.sock").exists()
        wait_state(config, job_id, {"succeeded", "failed"})
        assert first.poll() is None
    with Ledger(short_tmp / "state" / "ledger" / "ledger.db") as ledger:
        job = ledger.get(job_id)
        reasons = [t["reason"] for t in ledger.history(job_id)]
    assert job.state.value == "succeeded" and job.attempts == 1, (job, reasons)
    assert not any("interrupted" in (r or "") for r in reasons), reasons
    assert (short_tmp / "attempts").read_text() == "x"  # the command ran once, never killed
    assert s3.get_object(Bucket=OUT, Key="live.txt/done.txt")["Body"].read() == b"ok"


def test_processorctl_submits_while_the_daemon_holds_the_lock(
    s3: Any, moto_endpoint: str, short_tmp: Path
) -> None:
    config = write_config(short_tmp, output_bucket=OUT, endpoint=moto_endpoint)
    with daemon(config, short_tmp / "p.sock"):
        etag = s3.put_object(Bucket=IN, Key="ctl.txt", Body=b"one two")["ETag"]
        job_id = submit(config, IN, "ctl.txt", etag)  # must not wait for, or take, the daemon's lock
        assert wait_state(config, job_id, {"succeeded", "failed"})["state"] == "succeeded"


def test_signals_through_processor_run_hup_ignored_term_drains_a_second_stops_at_once(
    s3: Any, moto_endpoint: str, short_tmp: Path
) -> None:
    """The real signal path (worker.cli + worker.daemon.signals): SIGHUP is ignored, SIGTERM
    starts the drain (the job may finish), SIGINT during it stops at once; the exit
    status says jobs were interrupted, and the job is left queued for the next start."""
    config = write_config(short_tmp, output_bucket=OUT, endpoint=moto_endpoint,
                          command=[sys.executable, "-c", HOLD, "{input}", "{output_dir}", str(short_tmp)])
    etag = s3.put_object(Bucket=IN, Key="held.txt", Body=b"x")["ETag"]
    job_id = submit(config, IN, "held.txt", etag)
    with daemon(config, short_tmp / "p.sock") as proc:
        wait_state(config, job_id, {"running"})
        wait_until((short_tmp / "attempts").exists, stall_s=60, describe="the command never started")
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: log_events(config, "signal_ignored"), stall_s=60, describe="SIGHUP not acted on")
        assert proc.poll() is None and not log_events(config, "drain_started")
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: log_events(config, "drain_started"), stall_s=60,
                   describe="SIGTERM did not start a drain")
        assert proc.poll() is None  # draining: the job has drain_timeout_s (60) to finish
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == exitcodes.INTERRUPTED
    assert log_events(config, "drain_started")[0]["reason"] == "signal SIGTERM"
    assert log_events(config, "fast_stop")[0]["reason"] == "second stop signal (SIGINT)"
    assert log_events(config, "daemon_stopped")[0]["exit_status"] == exitcodes.INTERRUPTED
    shown = json.loads(processorctl(config, "show", job_id, "--json").stdout)
    assert shown["state"] == "queued" and (short_tmp / "attempts").read_text() == "x"
