"""What an idle daemon costs: its CPU time and resident memory while no job is queued or running.

One ``processor run`` on its ledger alone (single instance) and one in fleet mode
long-polling an SQS queue on the same moto server (``wait_s`` 20), side by side.
After ``SETTLE_S`` (imports, the first poll), each daemon's own CPU seconds
(utime + stime from ``/proc/<pid>/stat``) are read over ``WINDOW_S`` of wall time:
CPU time, not wall time, so a busy machine does not flatter a spinning loop.
RSS is ``VmRSS`` at the end of the window. tests/integration/test_idle_cost.py
asserts the same bound (≤ 1 % of a core) in the suite.

``python -m bench.idle`` prints the rows; ``--update`` also writes them into
bench/RESULTS.md (replacing earlier rows 12./12b.); ``bench.suite`` includes them.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import Daemon, Figure, create_buckets, moto_server, status_kib, write_config

#: The window over which CPU time is read, and the settling time before it.
WINDOW_S = 30.0
SETTLE_S = 3.0
#: The goal: at most this share of one core.
GOAL_CPU_SHARE = 0.01

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
_IDLE_ROW = re.compile(r"^\| 9[a-z]?\. idle daemon")


@dataclass(frozen=True)
class Idle:
    mode: str
    cpu_s: float
    window_s: float
    rss_kib: int

    @property
    def share(self) -> float:
        return self.cpu_s / self.window_s


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def measure(window_s: float = WINDOW_S) -> list[Idle]:
    """Both daemons idle over the same window; one Idle per mode."""
    import boto3

    with moto_server() as endpoint, tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
        create_buckets(endpoint)
        sqs = boto3.session.Session().client("sqs", endpoint_url=endpoint, region_name="us-east-1")
        queue_url = sqs.create_queue(QueueName="bench-idle")["QueueUrl"]
        from worker.fleet.dynamo import table_definition

        boto3.session.Session().client("dynamodb", endpoint_url=endpoint, region_name="us-east-1") \
            .create_table(**table_definition("bench-idle-jobs"))
        command = ["/bin/cp", "{input}", "{output_dir}"]
        single = write_config(Path(tmp) / "single", endpoint, command)
        fleet = write_config(Path(tmp) / "fleet", endpoint, command)
        with fleet.open("a") as fh:
            fh.write(f'[queue]\nurl = "{queue_url}"\nendpoint_url = "{endpoint}"\nwait_s = 20\n'
                     'table = "bench-idle-jobs"\nholder = "bench-idle"\n')
        with Daemon(single) as one, Daemon(fleet) as many:
            time.sleep(SETTLE_S)
            pids = {"single instance": one.proc.pid, "fleet (SQS long polls)": many.proc.pid}
            before = {mode: _cpu_seconds(pid) for mode, pid in pids.items()}
            started = time.monotonic()
            time.sleep(window_s)
            window = time.monotonic() - started
            return [Idle(mode, _cpu_seconds(pid) - before[mode], window, status_kib(pid, "VmRSS"))
                    for mode, pid in pids.items()]


def figures(results: list[Idle]) -> list[Figure]:
    rows = []
    for n, idle in enumerate(results):
        label = "12." if n == 0 else f"12{'abcdefgh'[n - 1]}."
        rows.append(Figure(
            f"{label} idle daemon, {idle.mode}: CPU over {idle.window_s:.0f} s / RSS",
            f"**{100 * idle.share:.2f} %** of a core ({idle.cpu_s:.2f} CPU s); RSS "
            f"{idle.rss_kib / 1024:.1f} MiB",
            f"≤ {100 * GOAL_CPU_SHARE:g} %", idle.share <= GOAL_CPU_SHARE))
    return rows


def update_results(rows: list[Figure], path: Path = RESULTS) -> None:
    """Put ``rows`` at the end of the results table, replacing earlier idle rows."""
    lines = [line for line in path.read_text().splitlines() if not _IDLE_ROW.match(line)]
    last = max(n for n, line in enumerate(lines) if line.startswith("| ") and "|" in line[2:]
               and n < next(i for i, text in enumerate(lines) if text.startswith("![")))
    lines[last + 1:last + 1] = [row.row() for row in rows]
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=WINDOW_S, help="seconds of idle measured")
    parser.add_argument("--update", action="store_true", help="write the rows into bench/RESULTS.md")
    args = parser.parse_args()
    rows = figures(measure(args.window))
    for row in rows:
        print(row.row())
    if args.update:
        update_results(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
