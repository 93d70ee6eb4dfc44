"""Operator controls against the real daemon: timeout, cancel, retry, logs -f, drain."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import daemon, processorctl, upload_and_submit, wait_state, write_config
from tests.support.emulator import with_buckets

IN, OUT = "ops-in", "ops-out"

#: Behaviour chosen by the input's first word, so one daemon can show them all.
COMMAND = (
    "import sys, time, pathlib; word = pathlib.Path(sys.argv[1]).read_text().split()[0];"
    "print('starting', word, flush=True);"
    "time.sleep(60) if word == 'hang' else None;"
    "time.sleep(1.5) if word == 'slow' else None;"
    "flag = pathlib.Path(sys.argv[3]);"
    "sys.exit(4) if word == 'fragile' and not flag.exists() else None;"
    "(pathlib.Path(sys.argv[2]) / 'out.txt').write_text(word); print('done', word)"
)


@pytest.fixture
def ops(short_tmp: Path, aws: Callable[[str], Any], moto_endpoint: str) -> Any:
    s3 = with_buckets(aws("s3"), IN, OUT)
    flag = short_tmp / "fixed"
    config = write_config(short_tmp, output_bucket=OUT, endpoint=moto_endpoint,
                          command=[sys.executable, "-c", COMMAND, "{input}", "{output_dir}", str(flag)],
                          timeout_s=3, kill_grace_s=1, drain_timeout_s=20, concurrency=2)

    def submit(key: str, body: str) -> str:
        return upload_and_submit(s3, config, IN, key, body.encode())

    return s3, config, submit, flag


def test_timeout_kills_the_command_and_fails_the_job(ops: Any, short_tmp: Path) -> None:
    s3, config, submit, _ = ops
    with daemon(config, short_tmp / "p.sock"):
        job_id = submit("hang.txt", "hang forever")
        job = wait_state(config, job_id, {"succeeded", "failed"}, stall_s=60)
    assert job["state"] == "failed" and job["error"] == "timed out after 3s", job
    failed = json.loads(s3.get_object(Bucket=OUT, Key="hang.txt/_failed.json")["Body"].read())
    assert failed["error"] == "timed out after 3s"
    # The command's process group is gone: no sleeper is left behind.
    ps = subprocess.run(["pgrep", "-f", "word == 'hang'"], capture_output=True, text=True)
    assert ps.stdout.strip() == ""


def test_cancel_a_running_and_a_queued_job(ops: Any, short_tmp: Path) -> None:
    s3, config, submit, _ = ops
    config.write_text(config.read_text().replace("timeout_s = 3", "timeout_s = 120")
                      .replace("concurrency = 2", "concurrency = 1"))
    with daemon(config, short_tmp / "p.sock"):
        running = submit("hang-1.txt", "hang")
        wait_state(config, running, {"running"})
        queued = submit("hang-2.txt", "hang")
        done = processorctl(config, "cancel", queued)
        assert done.returncode == 0 and done.stdout.split() == [queued, "cancelled"], done.stderr
        started = time.monotonic()
        done = processorctl(config, "cancel", running, "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["state"] == "cancelled"
        assert time.monotonic() - started < 30
        again = processorctl(config, "cancel", running)  # idempotent
        assert again.returncode == 0 and again.stdout.split() == [running, "cancelled"]
    for key in ("hang-1.txt", "hang-2.txt"):
        listing = s3.list_objects_v2(Bucket=OUT, Prefix=key)
        assert "Contents" not in listing  # cancelled: neither results nor a failure record


def test_retry_a_failed_job_after_fixing_the_cause(ops: Any, short_tmp: Path) -> None:
    s3, config, submit, flag = ops
    with daemon(config, short_tmp / "p.sock"):
        job_id = submit("fragile.txt", "fragile input")
        job = wait_state(config, job_id, {"succeeded", "failed"})
        assert job["state"] == "failed" and job["exit_code"] == 4
        assert s3.get_object(Bucket=OUT, Key="fragile.txt/_failed.json")
        flag.write_text("fixed")
        done = processorctl(config, "retry", job_id)
        assert done.returncode == 0 and done.stdout.split() == [job_id, "queued"], done.stderr
        job = wait_state(config, job_id, {"succeeded", "failed"})
    assert job["state"] == "succeeded" and job["attempts"] == 1
    assert "retry requested by an operator" in [t["reason"] for t in job["transitions"]]
    listing = {o["Key"] for o in s3.list_objects_v2(Bucket=OUT, Prefix="fragile.txt/")["Contents"]}
    assert listing == {"fragile.txt/out.txt", "fragile.txt/_manifest.json"}  # _failed.json removed
    bad = processorctl(config, "retry", job_id)
    assert bad.returncode == 1 and "only failed or cancelled" in bad.stderr
    bad = processorctl(config, "cancel", job_id)
    assert bad.returncode == 1 and "only queued or running" in bad.stderr


def test_logs_follow_until_the_job_ends(ops: Any, short_tmp: Path) -> None:
    _, config, submit, _ = ops
    with daemon(config, short_tmp / "p.sock"):
        job_id = submit("slow.txt", "slow job")
        wait_state(config, job_id, {"running"})
        done = processorctl(config, "logs", job_id, "-f", timeout=60)
        assert done.returncode == 0
        assert "starting slow" in done.stdout and "done slow" in done.stdout


def test_sigterm_mid_job_lets_it_finish_and_exits_zero(ops: Any, short_tmp: Path) -> None:
    s3, config, submit, _ = ops
    with daemon(config, short_tmp / "p.sock") as proc:
        job_id = submit("slow-drain.txt", "slow")
        wait_state(config, job_id, {"running"})
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    job = json.loads(processorctl(config, "show", job_id, "--json").stdout)
    assert job["state"] == "succeeded" and job["attempts"] == 1
    assert s3.get_object(Bucket=OUT, Key="slow-drain.txt/out.txt")["Body"].read() == b"slow"
