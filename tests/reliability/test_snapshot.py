"""Restore from a snapshot taken while the daemon is busy.

An EBS snapshot is crash-consistent: the image a power cut at that instant
would leave. The test makes that image with ``cp -a`` of the whole state dir
(ledger, its WAL and shm, work files, logs) while jobs run, holding the daemon
with SIGSTOP for the few milliseconds of the copy -- a file-by-file copy of a
live SQLite WAL is otherwise not point-in-time, which a snapshot is. The
original daemon is then killed (the instance is lost) and a second daemon is
started on the copy with its own config and socket, writing to the same
output bucket: it must come up, requeue what was in flight and finish every
job, each result identical to what the input dictates.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.daemon import daemon, submit, write_config
from tests.support.emulator import with_buckets
from tests.support.probes import integrity
from tests.support.report import REPORT
from tests.support.waiting import wait_until
from worker.jobs.states import JobState
from worker.runner.process import reap_orphans
from worker.state.ledger import Ledger

IN, OUT = "snap-in", "snap-out"
JOBS = 40

COMMAND = (
    "import hashlib, sys, time, pathlib; data = pathlib.Path(sys.argv[1]).read_bytes();"
    "time.sleep(0.25);"
    "(pathlib.Path(sys.argv[2]) / 'sha256.txt').write_text(hashlib.sha256(data).hexdigest())"
)


def test_daemon_on_a_snapshot_copy_requeues_in_flight_jobs_and_finishes_all(
    short_tmp: Path, aws: Callable[[str], Any], moto_endpoint: str
) -> None:
    rng = random.Random(7)
    s3 = with_buckets(aws("s3"), IN, OUT)
    command = [sys.executable, "-c", COMMAND, "{input}", "{output_dir}"]
    original, restored = short_tmp / "a", short_tmp / "b"
    original.mkdir()
    restored.mkdir()
    config_a = write_config(original, output_bucket=OUT, endpoint=moto_endpoint, command=command)
    config_b = write_config(restored, output_bucket=OUT, endpoint=moto_endpoint, command=command)
    bodies = {f"snap/{n:02d}.bin": rng.randbytes(rng.randint(1, 2048)) for n in range(JOBS)}
    etags = {k: s3.put_object(Bucket=IN, Key=k, Body=b)["ETag"] for k, b in bodies.items()}
    for key, etag in etags.items():
        submit(config_a, IN, key, etag)

    ledger_a = original / "state" / "ledger" / "ledger.db"
    try:
        with daemon(config_a, original / "p.sock") as proc, Ledger(ledger_a) as watch:
            wait_until(lambda: watch.counts()["succeeded"] >= JOBS // 4 and watch.counts()["running"] > 0,
                       stall_s=60, progress=watch.counts, describe=watch.counts)
            proc.send_signal(signal.SIGSTOP)
            try:
                copied = subprocess.run(["cp", "-a", str(original / "state"), str(restored / "state")],
                                        capture_output=True, text=True, timeout=60)
            finally:
                proc.send_signal(signal.SIGCONT)
            assert copied.returncode == 0, copied.stderr
            proc.send_signal(signal.SIGKILL)  # the instance and its volume are gone
            proc.wait(timeout=10)
    finally:
        reap_orphans(original / "state" / "work")

    ledger_b = restored / "state" / "ledger" / "ledger.db"
    with Ledger(ledger_b) as snap:
        at_snapshot = snap.counts()
    started = time.monotonic()
    with daemon(config_b, restored / "p.sock") as proc, Ledger(ledger_b) as ledger:
        def finished() -> int:
            return ledger.counts()["succeeded"] + ledger.counts()["failed"]

        wait_until(lambda: finished() >= JOBS, stall_s=60, progress=finished, interval=0.1,
                   describe=ledger.counts)
        drained_s = time.monotonic() - started
        jobs = ledger.list_jobs()
        requeued = sum(1 for j in jobs for t in ledger.history(j.id)
                       if t["reason"] == "interrupted: daemon restarted")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0

    REPORT.append(f"snapshot restore: {JOBS} jobs; at the snapshot {at_snapshot['succeeded']} succeeded, "
                  f"{at_snapshot['running']} running, {at_snapshot['queued']} queued; the restored daemon "
                  f"requeued {requeued} and finished all in {drained_s:.1f}s")
    assert at_snapshot["running"] >= 1 and requeued == at_snapshot["running"]
    assert integrity(ledger_b) == "ok"
    assert len(jobs) == JOBS and {j.key for j in jobs} == set(bodies)
    assert [j for j in jobs if j.state is not JobState.SUCCEEDED] == []
    for key, body in bodies.items():
        digest = hashlib.sha256(body).hexdigest()
        manifest = json.loads(s3.get_object(Bucket=OUT, Key=f"{key}/_manifest.json")["Body"].read())
        assert manifest["source"]["sha256"] == digest and manifest["source"]["etag"] == etags[key].strip('"')
        result = s3.get_object(Bucket=OUT, Key=f"{key}/sha256.txt")["Body"].read()
        assert result.decode() == digest, key
        assert [o["sha256"] for o in manifest["outputs"]] == [hashlib.sha256(result).hexdigest()]
    assert list((restored / "state" / "work").iterdir()) == []
