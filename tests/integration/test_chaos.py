"""Crash safety under load: the daemon is kill -9'd again and again while it works.

Every job must end succeeded exactly once in the ledger, with correct results
and one manifest, and no work files or processing commands left behind.
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

from tests.conftest import processorctl, write_config
from tests.integration.test_daemon import daemon
from worker.job import JobState
from worker.ledger import Ledger

IN, OUT = "chaos-in", "chaos-out"
JOBS = 60
KILLS = 8

#: Sleeps a little (so kills land mid-command), then writes the input's SHA-256.
COMMAND = (
    "MARKER = 'chaos-command'; import hashlib, sys, time, pathlib;"
    "data = pathlib.Path(sys.argv[1]).read_bytes();"
    "time.sleep(0.05 + (data[0] % 5) / 20);"
    "(pathlib.Path(sys.argv[2]) / 'sha256.txt').write_text(hashlib.sha256(data).hexdigest())"
)


def test_repeated_kill_9_loses_nothing_and_duplicates_nothing(
    short_tmp: Path, aws: Callable[[str], Any], moto_endpoint: str
) -> None:
    rng = random.Random(20261129)
    s3 = aws("s3")
    s3.create_bucket(Bucket=IN)
    s3.create_bucket(Bucket=OUT)
    config = write_config(short_tmp, output_bucket=OUT, endpoint=moto_endpoint,
                          command=[sys.executable, "-c", COMMAND, "{input}", "{output_dir}"],
                          concurrency=2, retry_base_s=1, retry_max_s=2, max_attempts=KILLS + 5)
    bodies = {f"chaos/{n:03d}.bin": rng.randbytes(rng.randint(1, 4096)) for n in range(JOBS)}
    etags = {k: s3.put_object(Bucket=IN, Key=k, Body=b)["ETag"] for k, b in bodies.items()}
    pending = list(bodies)

    def submit_some(count: int) -> None:
        for _ in range(min(count, len(pending))):
            key = pending.pop(0)
            done = processorctl(config, "submit", "--bucket", IN, f"--key={key}", f"--etag={etags[key]}")
            assert done.returncode == 0, done.stderr
            # A duplicate delivery, as S3/Lambda/SSM may send.
            if rng.random() < 0.2:
                again = processorctl(config, "submit", "--bucket", IN, f"--key={key}",
                                     f"--etag={etags[key]}")
                assert again.stdout == done.stdout

    submit_some(10)  # while the daemon is down
    for _ in range(KILLS):
        with daemon(config, short_tmp / "p.sock") as proc:
            submit_some(6)
            time.sleep(rng.uniform(0.2, 1.0))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        submit_some(2)  # while it is down again
    submit_some(len(pending))
    with daemon(config, short_tmp / "p.sock") as proc:
        deadline = time.monotonic() + 180
        with Ledger(short_tmp / "state" / "ledger" / "ledger.db") as ledger:
            while ledger.counts()["succeeded"] + ledger.counts()["failed"] < JOBS:
                assert time.monotonic() < deadline, ledger.counts()
                time.sleep(0.2)
            jobs = ledger.list_jobs()
            interrupted = sum(1 for j in jobs for t in ledger.history(j.id)
                              if t["reason"] == "interrupted: daemon restarted")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0

    assert len(jobs) == JOBS and {j.key for j in jobs} == set(bodies)
    assert [j for j in jobs if j.state is not JobState.SUCCEEDED] == []
    assert interrupted >= 1  # the kills did land mid-job
    for key, body in bodies.items():
        got = s3.get_object(Bucket=OUT, Key=f"{key}/sha256.txt")["Body"].read().decode()
        assert got == hashlib.sha256(body).hexdigest(), key
        manifest = json.loads(s3.get_object(Bucket=OUT, Key=f"{key}/_manifest.json")["Body"].read())
        assert [o["path"] for o in manifest["outputs"]] == ["sha256.txt"]
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=OUT)
            for o in page.get("Contents", [])]
    assert len(keys) == 2 * JOBS and not any(k.endswith("_failed.json") for k in keys)
    assert list((short_tmp / "state" / "work").iterdir()) == []
    leftover = subprocess.run(["pgrep", "-f", "chaos-command"], capture_output=True, text=True)
    assert leftover.returncode == 1, f"processing commands outlived the daemon: {leftover.stdout}"
