"""S3 faults between the daemon and the emulator: 5xx, SlowDown, dropped connections."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.daemon import daemon, log_events, submit, wait_state, write_config
from tests.support.emulator import with_buckets
from tests.support.faultproxy import FaultProxy
from tests.support.waiting import wait_until

IN, OUT = "faults-in", "faults-out"


def test_jobs_succeed_through_a_flaky_s3_and_the_retries_are_logged(
    short_tmp: Path, aws: Callable[[str], Any], moto_endpoint: str
) -> None:
    s3 = with_buckets(aws("s3"), IN, OUT)
    bodies = {f"flaky/{n:02d}.txt": f"word{n} " * (n + 1) for n in range(12)}
    etags = {key: s3.put_object(Bucket=IN, Key=key, Body=body.encode())["ETag"]
             for key, body in bodies.items()}
    with FaultProxy(moto_endpoint, rate=0.15, seed=3) as proxy:
        config = write_config(short_tmp, output_bucket=OUT, endpoint=proxy.endpoint,
                              retry_base_s=1, retry_max_s=2, max_attempts=5)
        ids = {}
        for key, etag in etags.items():
            ids[key] = submit(config, IN, key, etag)
        with daemon(config, short_tmp / "p.sock"):
            for job_id in ids.values():
                job = wait_state(config, job_id, {"succeeded", "failed"}, stall_s=120)
                assert job["state"] == "succeeded", job
        injected = proxy.counts["slowdown"] + proxy.counts["internal"] + proxy.counts["drop"]
    assert injected >= 5, proxy.counts
    for key, body in bodies.items():
        summary = json.loads(s3.get_object(Bucket=OUT, Key=f"{key}/summary.json")["Body"].read())
        assert summary["words"] == len(body.split())
    events = [line["event"] for line in log_events(config)]
    assert events.count("s3_request_failed") + events.count("s3_call_retry") >= injected // 2


def test_s3_outage_requeues_and_jobs_complete_when_it_returns(
    short_tmp: Path, aws: Callable[[str], Any], moto_endpoint: str
) -> None:
    s3 = with_buckets(aws("s3"), IN, OUT)
    etag = s3.put_object(Bucket=IN, Key="outage.txt", Body=b"during an outage")["ETag"]
    with FaultProxy(moto_endpoint, rate=0.0) as proxy:
        config = write_config(short_tmp, output_bucket=OUT, endpoint=proxy.endpoint,
                              retry_base_s=1, retry_max_s=1, max_attempts=20)
        proxy.outage.set()
        job_id = submit(config, IN, "outage.txt", etag)
        with daemon(config, short_tmp / "p.sock"):
            # Back in the queue after a failed attempt (waiting for "queued" alone
            # would return at once: the job starts queued).
            job = wait_until(lambda: (lambda j: j if j["attempts"] >= 1 else None)(
                wait_state(config, job_id, {"queued"}, stall_s=120)), stall_s=120, interval=0.1,
                describe="the job never came back to the queue after a failed attempt")
            assert "503" in (job["error"] or "") and job["state"] == "queued", job
            proxy.outage.clear()
            job = wait_state(config, job_id, {"succeeded", "failed"}, stall_s=120)
        assert job["state"] == "succeeded" and job["attempts"] >= 2, job
