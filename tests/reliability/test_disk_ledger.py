"""A full state volume leaves the ledger intact and loses no committed job.

Reuses the 24 MiB tmpfs of tests/integration/test_disk_full.py (root only).
While the volume is 100 % full, a submission either commits (exit 0) or
says the ledger is unavailable (exit 4, nothing recorded); the daemon keeps
serving; jobs claimed while it is full wait for space (attempts unspent); once
space is back, work resumes; and SQLite's integrity check of the ledger says "ok".
"""

from __future__ import annotations

import errno
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.daemon import daemon, processorctl, wait_state, write_config
from tests.support.emulator import with_buckets
from tests.support.probes import integrity
from tests.support.report import REPORT
from worker import exitcodes
from worker.ctl.control_client import request
from worker.state.ledger import Ledger

IN, OUT = "full-in", "full-out"
MIB = 1024 * 1024

#: Writes 64 MiB of output onto the 24 MiB volume unless the input starts with "small".
FILLER = (
    "import sys, pathlib; data = pathlib.Path(sys.argv[1]).read_bytes();"
    "out = pathlib.Path(sys.argv[2]) / 'result.bin';"
    "n = 1 if data.startswith(b'small') else 64;"
    "f = open(out, 'wb'); [f.write(b'x' * (1 << 20)) for _ in range(n)]; f.close()"
)


def _fill(path: Path) -> int:
    """Write ``path`` until the volume is full; return the bytes written."""
    written = 0
    with path.open("wb", buffering=0) as fh:
        for size in (MIB, 64 * 1024, 4096, 512, 1):
            while True:
                try:
                    written += fh.write(b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    return written


def test_full_volume_keeps_the_ledger_intact_and_loses_no_committed_job(
    small_volume: Path, short_tmp: Path, aws: Callable[[str], Any], moto_endpoint: str
) -> None:
    s3 = with_buckets(aws("s3"), IN, OUT)
    config = write_config(short_tmp, output_bucket=OUT, endpoint=moto_endpoint,
                          command=[sys.executable, "-c", FILLER, "{input}", "{output_dir}"])
    config.write_text(config.read_text().replace("[logging]", "min_free_mb = 1\n[logging]"))
    socket = short_tmp / "p.sock"

    def submit(key: str, body: bytes) -> tuple[int, str, str]:
        etag = s3.put_object(Bucket=IN, Key=key, Body=body)["ETag"]
        done = processorctl(config, "submit", "--bucket", IN, f"--key={key}", f"--etag={etag}")
        return done.returncode, done.stdout.strip(), done.stderr

    accepted: dict[str, str] = {}
    refused: list[str] = []
    with daemon(config, socket) as proc:
        for n in range(3):
            code, job_id, err = submit(f"before/{n}.txt", b"small before")
            assert code == 0, err
            accepted[f"before/{n}.txt"] = job_id
        code, filler_job, err = submit("fills-disk.bin", b"x" * MIB)
        assert code == 0, err
        accepted["fills-disk.bin"] = filler_job
        assert wait_state(config, filler_job, {"succeeded", "failed"}, stall_s=60)["state"] == "failed"

        ballast = small_volume / "ballast"
        filled = _fill(ballast)
        for n in range(3):
            code, job_id, err = submit(f"while-full/{n}.txt", b"small while full")
            if code == exitcodes.OK:
                accepted[f"while-full/{n}.txt"] = job_id
            else:  # how it refuses is the next test's business
                refused.append(f"while-full/{n}.txt")
        time.sleep(1.5)  # let the daemon meet the full disk (progress, logs, claims)
        assert proc.poll() is None, "the daemon died on a full volume"
        assert request(socket, "ping", timeout=5)["pid"] == proc.pid

        ballast.unlink()
        for n in range(2):
            code, job_id, err = submit(f"after/{n}.txt", b"small after")
            assert code == 0, err
            accepted[f"after/{n}.txt"] = job_id
        finals = {key: wait_state(config, job_id, {"succeeded", "failed"}, stall_s=60)
                  for key, job_id in accepted.items()}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0

    ledger_path = small_volume / "ledger" / "ledger.db"
    verdict = integrity(ledger_path)
    with Ledger(ledger_path) as ledger:
        recorded = {job.key: job.id for job in ledger.list_jobs()}
    REPORT.append(f"disk full: volume filled with {filled // 1024} KiB of ballast; {len(accepted)} "
                  f"submissions committed, {len(refused)} refused with exit 4 while full; "
                  f"integrity_check={verdict}")
    assert verdict == "ok"
    assert recorded == accepted  # every committed job is there, nothing refused got in
    for key, job in finals.items():
        if key == "fills-disk.bin":
            continue
        # Claimed while full, a job waits for space (it never fails for it) and runs once there is some.
        assert job["state"] == "succeeded" and job["counted_attempts"] == 0, job
    assert list((small_volume / "work").iterdir()) == []


def test_submit_on_a_full_volume_is_refused_with_exit_4_not_a_traceback(
    small_volume: Path, short_tmp: Path
) -> None:
    config = write_config(short_tmp)
    first = processorctl(config, "submit", "--bucket", "bkt", "--key=first.txt")
    assert first.returncode == 0, first.stderr
    # An open connection (the daemon's, on a host) keeps the WAL file, so a commit must grow it.
    with Ledger(small_volume / "ledger" / "ledger.db") as held:
        assert len(held.list_jobs()) == 1
        _fill(small_volume / "ballast")
        results = [processorctl(config, "submit", "--bucket", "bkt", f"--key=full-{n}.txt")
                   for n in range(3)]
        (small_volume / "ballast").unlink()
    # The full volume refused at least one commit (a run in which all of them fit proves nothing).
    assert exitcodes.LEDGER_UNAVAILABLE in {done.returncode for done in results}, \
        [(done.returncode, done.stderr) for done in results]
    for done in results:
        assert done.returncode in (exitcodes.OK, exitcodes.LEDGER_UNAVAILABLE), done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        if done.returncode:
            assert "ledger unavailable" in done.stderr, done.stderr
    assert integrity(small_volume / "ledger" / "ledger.db") == "ok"
