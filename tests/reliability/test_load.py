"""Load: a burst of uploads (400 here; 1,000 with PROCESSOR_TEST_BURST=1000) through the whole local pipeline.

S3 -> SQS -> the real Lambda -> the local SSM agent running the real submit
document -> processorctl -> the daemon. Every upload must end as one
succeeded job and one manifest, with nothing dropped on the way, and the
daemon's peak memory must stay bounded (the queue lives in the ledger, not
in memory).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.local import running_local
from tests.support.probes import daemon_pid, memory_kib, object_keys
from tests.support.report import REPORT
from tests.support.waiting import wait_until
from worker.jobs.states import JobState
from worker.state.ledger import Ledger

pytestmark = pytest.mark.e2e

#: Uploads in the burst. 300 keep the suite near 15 min on 2 cores (1,000 took about
#: 3 min of its 14); ``PROCESSOR_TEST_BURST=1000`` runs the full burst, and bench/burst.py
#: measures the 1,000-upload throughput.
EVENTS = int(os.environ.get("PROCESSOR_TEST_BURST", "300"))
#: The daemon's peak RSS must stay under this (it measured ~60 MiB; a queue held in memory would grow).
MAX_PEAK_RSS_MIB = 200
#: The burst fails only if no job finishes for this long; how fast it drains is a
#: bench figure (bench/burst.py), not a pass/fail line: on 2 busy cores it may take 3x longer.
STALL_S = 60


# The hang guard only, far above the 154-183 s this took on 2 shared cores: with
# two CPU hogs on a machine already shared it drained in 736 s (test 812 s).
@pytest.mark.timeout(1800)
def test_burst_of_uploads_all_processed_with_bounded_memory(tmp_path: Path) -> None:
    # A cheap processing command, so the figure measures the pipeline, not the summariser.
    with running_local(tmp_path, "--command", "cp {input} {output_dir}") as stack:
        state = tmp_path / "state"
        pid = daemon_pid(state / "processor.toml")
        idle = memory_kib(pid)
        s3 = stack.client("s3")
        bodies = {f"burst/{n:04d}.txt": f"object {n}\n".encode() for n in range(EVENTS)}
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(lambda kv: s3.put_object(Bucket="processor-input", Key=kv[0], Body=kv[1]),
                          bodies.items()))
        uploaded_s = time.monotonic() - started
        with Ledger(state / "ledger" / "ledger.db") as ledger:
            def finished() -> int:
                counts = ledger.counts()
                return counts["succeeded"] + counts["failed"] + counts["cancelled"]

            wait_until(lambda: finished() >= EVENTS, stall_s=STALL_S, progress=finished, interval=0.5,
                       describe=lambda: (ledger.counts(), stack.output()[-2000:]))
            drained_s = time.monotonic() - started
            jobs = ledger.list_jobs()
        peak = memory_kib(pid)
        keys = object_keys(s3, "processor-output")
        for key in list(bodies)[::97]:  # spot-check the results themselves
            assert s3.get_object(Bucket="processor-output", Key=f"{key}/input")["Body"].read() == bodies[key]
    assert len(jobs) == EVENTS and {j.key for j in jobs} == set(bodies)
    assert [j for j in jobs if j.state is not JobState.SUCCEEDED] == []
    output = stack.output()
    assert "InvalidParameters" not in output and " failed:" not in output, output[-2000:]
    assert sorted(k for k in keys if k.endswith("/_manifest.json")) == sorted(
        f"{k}/_manifest.json" for k in bodies)
    peak_mib = peak["VmHWM"] / 1024
    REPORT.append(
        f"load: {EVENTS} uploads in {uploaded_s:.1f}s, all {EVENTS} succeeded {drained_s:.1f}s after the "
        f"first upload ({EVENTS / drained_s:.1f} jobs/s); daemon RSS idle {idle['VmRSS'] / 1024:.0f} MiB, "
        f"peak (VmHWM) {peak_mib:.0f} MiB"
    )
    assert peak_mib < MAX_PEAK_RSS_MIB, peak
