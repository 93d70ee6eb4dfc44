"""What an idle daemon costs: CPU time, memory and descriptors while it waits for work.

Measured as the daemon's own CPU seconds (utime + stime from /proc) over a
window of wall time, so the bound holds on a busy machine: a loaded CPU slows a
spinning loop's wall-clock progress but not the CPU it burns. One daemon on its
ledger alone, one in fleet mode long-polling an SQS queue on the emulator; both
idle side by side over the same window (issue 19: the loop used to wake itself
about 3,000 times a second, a whole core).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import daemon, write_config
from tests.support.probes import memory_kib
from tests.support.report import REPORT
from tests.support.waiting import cpu_seconds
from worker.fleet.dynamo import table_definition

#: The idle window: long enough for a few watchdog ticks and long polls.
WINDOW_S = 20.0
#: At most 1 % of one core over the window.
MAX_CPU_SHARE = 0.01
#: Settling after start-up (imports, first poll) before the window opens.
SETTLE_S = 3.0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.timeout(180)
def test_an_idle_daemon_costs_nothing(short_tmp: Path, aws: Any, moto_endpoint: str) -> None:
    import time

    aws("s3").create_bucket(Bucket="idle-out")
    queue_url = aws("sqs").create_queue(QueueName="idle-work")["QueueUrl"]
    aws("dynamodb").create_table(**table_definition("idle-jobs"))
    single_dir, fleet_dir = short_tmp / "one", short_tmp / "fleet"
    single_dir.mkdir()
    fleet_dir.mkdir()
    single = write_config(single_dir, output_bucket="idle-out", endpoint=moto_endpoint)
    fleet = write_config(fleet_dir, output_bucket="idle-out", endpoint=moto_endpoint)
    with fleet.open("a") as fh:
        fh.write("[queue]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in {
            "url": queue_url, "endpoint_url": moto_endpoint, "wait_s": 20, "table": "idle-jobs",
            "holder": "idle"}.items()))
    with daemon(single, single_dir / "p.sock") as one, daemon(fleet, fleet_dir / "p.sock") as many:
        time.sleep(SETTLE_S)
        procs = {"single": one.pid, "fleet": many.pid}
        cpu0 = {name: cpu_seconds(pid) for name, pid in procs.items()}
        rss0 = {name: memory_kib(pid)["VmRSS"] for name, pid in procs.items()}
        fds0 = {name: _fds(pid) for name, pid in procs.items()}
        start = time.monotonic()
        time.sleep(WINDOW_S)
        wall = time.monotonic() - start
        for name, pid in procs.items():
            used = cpu_seconds(pid) - cpu0[name]
            rss = memory_kib(pid)["VmRSS"]
            REPORT.append(f"idle daemon ({name}): {used:.3f} CPU s over {wall:.0f} s "
                          f"({100 * used / wall:.2f} % of a core), RSS {rss / 1024:.0f} MiB, "
                          f"{_fds(pid)} fds")
            assert used <= MAX_CPU_SHARE * wall, (
                f"the idle {name} daemon used {used:.2f} CPU s in {wall:.0f} s "
                f"({100 * used / wall:.1f} % of a core; at most {100 * MAX_CPU_SHARE:g} %)")
            # Nothing accumulates while nothing happens.
            assert _fds(pid) <= fds0[name] + 2, (name, fds0[name], _fds(pid))
            assert rss <= rss0[name] + 4 * 1024, (name, rss0[name], rss)
