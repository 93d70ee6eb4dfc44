"""A job stays inside its box under the real daemon (`processor run`, fallback mode: no
delegated cgroup): a drain that runs out of time stops a command whose children escaped
its process group, and none of them survives the daemon's exit (issue 19)."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import daemon, submit, wait_state, write_config
from tests.support.emulator import with_buckets
from tests.support.escapees import ESCAPE, alive, kill_listed
from tests.support.waiting import wait_until
from worker import exitcodes

IN, OUT = "box-in", "box-out"


@pytest.fixture
def s3(aws: Callable[[str], Any]) -> Any:
    return with_buckets(aws("s3"), IN, OUT)


def test_a_drain_past_its_timeout_leaves_no_process_of_the_job(
    s3: Any, moto_endpoint: str, short_tmp: Path
) -> None:
    pids = short_tmp / "pids"
    pids.touch()
    command = [sys.executable, "-c", ESCAPE, "{input}", "{output_dir}", str(pids), "hang"]
    config = write_config(short_tmp, output_bucket=OUT, endpoint=moto_endpoint, command=command,
                          drain_timeout_s=1, kill_grace_s=1)
    etag = s3.put_object(Bucket=IN, Key="escape.txt", Body=b"x")["ETag"]
    try:
        _drain(config, short_tmp, pids, etag)
    finally:
        kill_listed(pids)  # whatever happened, no escapee outlives the test


def _drain(config: Path, short_tmp: Path, pids: Path, etag: str) -> None:
    with daemon(config, short_tmp / "p.sock") as proc:
        job_id = submit(config, IN, "escape.txt", etag)
        wait_until(lambda: len(pids.read_text().split()) >= 3, stall_s=60, describe="no escapees")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == exitcodes.INTERRUPTED  # stopped with a job interrupted
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) == 3 and [pid for pid in started if alive(pid)] == []
    job = wait_state(config, job_id, {"queued"})  # left for the next start, not counted
    assert job["counted_attempts"] == 0
