"""Job logs are bounded (issue 19): a command that wrote 200 MiB left a 200 MiB log on the
state volume. logging.job_log_max_mb keeps the head and the tail with a marker, processorctl
logs says the log was cut, and logging.job_log_retention_days expires old logs."""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import pytest

from tests.support.pipeline import claim, make
from worker.ctl.cli import main as processorctl
from worker.jobs.identity import Identity
from worker.jobs.states import JobState
from worker.runner.joblog import CUT_MARKER, JobLog, expire, was_cut

MIB = 1024 * 1024

#: 200 MiB on stdout in 1 MiB lines of one letter each ('a', 'b', … cycling), a last line on stderr.
FLOOD = [sys.executable, "-c",
         "import sys, string\n"
         "for n in range(200):\n"
         "    sys.stdout.buffer.write(string.ascii_lowercase[n % 26].encode() * (1024 * 1024 - 1) + b'\\n')\n"
         "sys.stdout.flush(); sys.stderr.write('the end\\n')\n",
         "{input}", "{output_dir}"]


def _config(tmp_path: Path, **logging: object) -> Path:
    lines = ['[s3]', 'output_bucket = "out"', '[processing]',
             f'command = ["{sys.executable}", "{{input}}"]',
             '[paths]', f'state_dir = "{tmp_path / "state"}"', f'socket = "{tmp_path / "s.sock"}"',
             '[logging]', 'journald = false', *(f"{k} = {v}" for k, v in logging.items())]
    path = tmp_path / "processor.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_200_mib_log_is_capped_head_and_tail_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline, ledger, store = make(tmp_path, FLOOD)
    pipeline.settings = pipeline.settings._replace(
        logging=pipeline.settings.logging._replace(job_log_max_mb=4))
    done = pipeline.run(claim(ledger, store, "k"))
    assert done.state is JobState.SUCCEEDED  # no outputs, and that is fine: the point is its log
    log = pipeline.settings.paths.job_log(done.id)
    data = log.read_bytes()
    assert 4 * MIB <= len(data) <= 4 * MIB + 512, len(data)
    assert data.startswith(b"a" * (MIB - 1) + b"\n" + b"b" * 1000)  # the head: the first 2 MiB
    assert b"the end" in data[-2 * MIB:]  # the tail: the last 2 MiB (stderr, pumped beside stdout)
    assert data.rstrip().endswith(b"r" * 1000) or data.rstrip().endswith(b"the end")
    assert (b"r" * 1000) in data[-2 * MIB:]  # line 199 is 'r' (198 % 26 = 16 -> 'q', 199 -> 'r')
    assert data.count(CUT_MARKER) == 1 and b"bytes left out here" in data
    assert not list(log.parent.glob("*.tail"))  # the ring file leaves nothing behind
    # processorctl logs prints it and says it was cut.
    config = _config(tmp_path, job_log_max_mb=4)
    out = io.StringIO()
    assert processorctl(["--config", str(config), "logs", done.id], out=out) == 0
    assert "[processor: log cut:" in out.getvalue()
    assert "this log was cut" in capsys.readouterr().err


def test_a_log_under_the_cap_is_whole_and_not_reported_cut(tmp_path: Path) -> None:
    log = JobLog(tmp_path / "j.log", 1000)
    for _ in range(9):
        log.write(b"x" * 100)
    log.close()
    assert (tmp_path / "j.log").read_bytes() == b"x" * 900 and not log.cut
    assert not was_cut(tmp_path / "j.log")


def test_the_ring_keeps_exactly_the_newest_bytes(tmp_path: Path) -> None:
    log = JobLog(tmp_path / "j.log", 10)
    stream = bytes(range(48, 48 + 70))  # '0', '1', … written in uneven pieces
    for start, end in ((0, 3), (3, 4), (4, 20), (20, 21), (21, 50), (50, 70)):
        log.write(stream[start:end])
    log.close()
    data = (tmp_path / "j.log").read_bytes()
    assert data.startswith(stream[:5]) and data.endswith(stream[-5:]) and log.cut
    assert b"60 bytes left out here" in data


def test_logs_of_jobs_ended_long_ago_expire(tmp_path: Path) -> None:
    pipeline, ledger, store = make(tmp_path, [*FLOOD[:2], "pass", "{input}"])
    pipeline.settings = pipeline.settings._replace(
        logging=pipeline.settings.logging._replace(job_log_retention_days=7))
    logs = pipeline.settings.paths.job_logs
    logs.mkdir(parents=True, exist_ok=True)
    job = claim(ledger, store, "k")
    waiting, _ = ledger.submit(Identity("in", "waiting", None, "e"))
    old = time.time() - 8 * 86400
    for name in ("j-ended-long-ago", waiting.id, "j-recent"):
        (logs / f"{name}.log").write_text("x")
        if name != "j-recent":
            os.utime(logs / f"{name}.log", (old, old))
    done = pipeline.run(job)  # expiry runs after a job
    remaining = sorted(p.name for p in logs.iterdir())
    assert remaining == sorted([f"{waiting.id}.log", "j-recent.log", f"{done.id}.log"])
    assert expire(logs, 0, keep=lambda _: False) != []  # 0 days: everything old enough goes
