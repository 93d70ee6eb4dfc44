"""An S3 outage longer than the retry budget: jobs must wait it out, not die.

tests/integration/test_s3_faults.py covers 15 % random faults and an outage
shorter than ``max_attempts``. Here the outage outlasts four attempts' worth of
backoff with ``max_attempts = 2``: a storage outage is the environment's fault,
not the job's, so the job must stay queued and complete once S3 answers again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.daemon import daemon, processorctl, submit, wait_state, write_config
from tests.support.emulator import with_buckets
from tests.support.faultproxy import FaultProxy
from tests.support.report import REPORT
from tests.support.waiting import wait_until

IN, OUT = "outage-in", "outage-out"
MAX_ATTEMPTS = 2
#: The outage lasts until this many attempts have hit it (or the job gave up).
OUTAGE_ATTEMPTS = 4
#: Fails only if no further attempt hits the outage for this long (backoff is 1 s).
STALL_S = 60


def _attempts_hit(config: Path, job_id: str) -> tuple[int, str]:
    shown = processorctl(config, "show", job_id, "--json")
    assert shown.returncode == 0, shown.stderr
    job = json.loads(shown.stdout)
    ended = [t for t in job["transitions"] if t["from_state"] == "running"]
    return len(ended), job["state"]


def test_outage_longer_than_the_attempt_budget_leaves_jobs_queued_until_s3_returns(
    short_tmp: Path, aws: Callable[[str], Any], moto_endpoint: str
) -> None:
    s3 = with_buckets(aws("s3"), IN, OUT)
    etag = s3.put_object(Bucket=IN, Key="long-outage.txt", Body=b"waits for S3\n")["ETag"]
    with FaultProxy(moto_endpoint, rate=0.0) as proxy:
        config = write_config(short_tmp, output_bucket=OUT, endpoint=proxy.endpoint,
                              retry_base_s=1, retry_max_s=1, max_attempts=MAX_ATTEMPTS)
        proxy.outage.set()
        job_id = submit(config, IN, "long-outage.txt", etag)
        started = time.monotonic()
        with daemon(config, short_tmp / "p.sock"):
            seen: dict[str, Any] = {"hit": 0, "state": "queued"}

            def outage_done() -> bool:
                seen["hit"], seen["state"] = _attempts_hit(config, job_id)
                return seen["hit"] >= OUTAGE_ATTEMPTS or seen["state"] in ("failed", "succeeded")

            wait_until(outage_done, stall_s=STALL_S, progress=lambda: seen["hit"], interval=0.2,
                       describe=lambda: seen)
            hit = int(seen["hit"])
            outage_s = time.monotonic() - started
            proxy.outage.clear()
            job = wait_state(config, job_id, {"succeeded", "failed"}, stall_s=60)
        REPORT.append(f"s3 outage: {outage_s:.1f}s, {hit} attempt(s) hit it with max_attempts="
                      f"{MAX_ATTEMPTS}, {proxy.counts['outage']} requests refused; job ended "
                      f"{job['state']}")
    assert job["state"] == "succeeded", job
