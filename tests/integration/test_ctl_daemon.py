"""`processorctl` against the real daemon: what a job is doing now, a success's outputs and
duration, `status` exit 3 without a daemon, `logs -f` that stops when nothing can happen."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import daemon, processorctl, upload_and_submit, wait_state, write_config
from tests.support.emulator import with_buckets
from worker import exitcodes

IN, OUT = "ctl-in", "ctl-out"

#: "hang" sleeps (a running job to look at); anything else writes one output and succeeds.
COMMAND = (
    "import sys, time, pathlib; word = pathlib.Path(sys.argv[1]).read_text().split()[0];"
    "time.sleep(120) if word == 'hang' else None;"
    "(pathlib.Path(sys.argv[2]) / 'out.txt').write_text(word * 100)"
)


@pytest.fixture
def setup(short_tmp: Path, aws: Callable[[str], Any], moto_endpoint: str) -> Any:
    s3 = with_buckets(aws("s3"), IN, OUT)
    config = write_config(short_tmp, output_bucket=OUT, endpoint=moto_endpoint,
                          command=[sys.executable, "-c", COMMAND, "{input}", "{output_dir}"],
                          timeout_s=600, kill_grace_s=1, drain_timeout_s=1, concurrency=1)

    def submit(key: str, body: str) -> str:
        return upload_and_submit(s3, config, IN, key, body.encode())

    return config, submit


def test_show_and_status_say_what_a_running_job_is_doing(setup: Any, short_tmp: Path) -> None:
    config, submit = setup
    with daemon(config, short_tmp / "p.sock"):
        job_id = submit("hang.txt", "hang")
        wait_state(config, job_id, {"running"})
        shown = processorctl(config, "show", job_id[:8])
        assert shown.returncode == 0, shown.stderr
        out = shown.stdout
        assert re.search(r"started: +\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ \(\d+s ago\)", out), out
        assert re.search(r"elapsed: +\d+s", out)
        assert re.search(r"deadline: +\S+ \S+Z \(in (9m\d\ds|10m00s); processing.timeout_s 600\)", out)
        assert re.search(r"phase: +(running|downloading|starting)", shown.stdout), shown.stdout
        facts = json.loads(processorctl(config, "show", job_id, "--json").stdout)["activity"]
        assert facts["deadline_at"] == pytest.approx(facts["started_at"] + 600)
        status = processorctl(config, "status")
        assert status.returncode == 0
        line = rf"{job_id}  hang.txt: \w+.*started \d+s ago, deadline"
        assert re.search(line, status.stdout), status.stdout
        live = json.loads(processorctl(config, "status", "--json").stdout)["daemon"]
        assert live["running"][0]["activity"]["deadline_at"] == pytest.approx(facts["deadline_at"])
    # The daemon is gone (killed): status says so and exits 3, like `systemctl is-active`.
    down = processorctl(config, "status")
    assert down.returncode == exitcodes.DAEMON_NOT_RUNNING == 3
    assert "daemon: not running" in down.stdout and "1 running" in down.stdout


def test_show_of_a_success_lists_its_outputs_and_duration(setup: Any, short_tmp: Path) -> None:
    config, submit = setup
    with daemon(config, short_tmp / "p.sock"):
        job_id = submit("data/a.txt", "alpha")
        wait_state(config, job_id, {"succeeded"})
    shown = processorctl(config, "show", f"s3://{IN}/data/a.txt")
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"duration: +\d+s", shown.stdout)
    assert "outputs (1):" in shown.stdout and f"s3://{OUT}/data/a.txt/out.txt  (500 B)" in shown.stdout
    as_json = json.loads(processorctl(config, "show", job_id, "--json").stdout)
    assert as_json["outputs"] == [{"key": "data/a.txt/out.txt", "size": 500}]
    # The run's own length (a duration that is always there would pass ">= 0" whatever it said).
    ran = as_json["finished_at"] - as_json["started_at"]
    assert ran > 0 and as_json["activity"]["duration_s"] == round(ran, 1), as_json


def test_logs_follow_stops_when_the_daemon_is_down_and_the_job_cannot_run(setup: Any) -> None:
    config, submit = setup
    job_id = submit("later.txt", "later")  # no daemon: it stays queued
    done = processorctl(config, "logs", job_id, "-f", timeout=60)
    assert done.returncode == exitcodes.DAEMON_UNAVAILABLE, done.stderr
    assert "the daemon is not running" in done.stderr
    assert "queued: it runs once the daemon starts" in done.stderr
