"""The fleet path's per-job cost: one daemon draining a work queue against a textbook SQS loop.

A = one fleet daemon (``processor run`` with ``[queue]``, concurrency c) draining
N messages sent to a fresh work queue before it started (a fresh job table,
state dir and output prefix each run): from its first job's ledger
``started_at`` (set as it takes the first message it received, after the
claim in the job table) to the log time of its last ``queue_message_deleted``
(the last job's manifest is in the bucket, its record settled, its message
deleted).
B = ``bench.sqs_bare`` with c threads doing receive 1 -> download_file ->
command -> upload_file -> manifest put_object -> delete_message on its own
fresh queue holding the same N messages: from the first receive's return to
the last delete's end.

Both run ``/bin/cp {input} {output_dir}`` on the same objects against the same
moto server, back to back; the side that goes first alternates along the sweep
and between rounds. The figure per concurrency is the median over rounds of
the ratio of a pair (bench/overhead.py explains why).

Usage: python -m bench.queue_overhead [--jobs 200] [--rounds 3] [--concurrency 1 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    ENV,
    KIB,
    PYTHON,
    REPO,
    Figure,
    byte_compile,
    create_buckets,
    finished_count,
    moto_server,
    put_small_objects,
    read_ledger,
    wait_for,
)
from bench.overhead import COPY
from bench.queue_common import (
    WorkQueue,
    create_work_queue,
    daemons,
    fleet_config,
    log_events,
    send_jobs,
    sqs_client,
)

GOAL = 1.10
#: Long poll of both sides; the lease, far above a 64 KiB job.
WAIT_S = 2
VISIBILITY_S = 60


@dataclass(frozen=True)
class Run:
    side: str  # "daemon" or "loop"
    concurrency: int
    jobs: int
    window_s: float
    round: int


def _queue(endpoint: str, name: str, objects: Sequence[tuple[str, str]]) -> WorkQueue:
    """A fresh queue (and job table) holding one message per object."""
    queue = create_work_queue(endpoint, name, visibility_s=VISIBILITY_S)
    send_jobs(sqs_client(endpoint), queue.url, objects)
    return queue


def run_daemon(endpoint: str, objects: Sequence[tuple[str, str]], concurrency: int, tmp: Path,
               round_: int) -> Run:
    name = f"qdaemon-c{concurrency}-r{round_}"
    queue = _queue(endpoint, name, objects)
    config = fleet_config(tmp / name, endpoint, COPY, queue, holder=name, concurrency=concurrency,
                          output_prefix=f"{name}/", visibility_s=VISIBILITY_S, wait_s=WAIT_S)
    with daemons([config]):
        wait_for(lambda: _deleted(config) >= len(objects) and finished_count(config) >= len(objects), 600,
                 "the fleet daemon to drain its queue", 0.2)
    rows = read_ledger(config, "SELECT state, started_at FROM jobs")
    bad = [r["state"] for r in rows if r["state"] != "succeeded"]
    if bad or len(rows) != len(objects):
        raise RuntimeError(f"fleet daemon c={concurrency}: {len(rows)} jobs, not succeeded: {bad[:3]}")
    deleted = log_events(config, "queue_message_deleted")
    window = max(e["at"] for e in deleted) - min(r["started_at"] for r in rows)
    return Run("daemon", concurrency, len(rows), window, round_)


def _deleted(config: Path) -> int:
    path = config.parent / "state" / "logs" / "processor.jsonl"
    return path.read_text().count('"queue_message_deleted"') if path.exists() else 0


def run_loop(endpoint: str, objects: Sequence[tuple[str, str]], concurrency: int, tmp: Path,
             round_: int) -> Run:
    name = f"qloop-c{concurrency}-r{round_}"
    url = _queue(endpoint, name, objects).url
    done = subprocess.run(
        [PYTHON, "-m", "bench.sqs_bare", endpoint, url, str(concurrency), str(len(objects)), str(WAIT_S),
         f"{name}/", "--", *COPY],
        env=ENV, cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"SQS loop c={concurrency} failed: {done.stderr[-2000:]} {done.stdout[-2000:]}")
    result = json.loads(done.stdout)
    return Run("loop", concurrency, len(result["durations"]), result["last_end"] - result["first_receive"],
               round_)


def sweep(endpoint: str, objects: Sequence[tuple[str, str]], concurrencies: Sequence[int], *,
          rounds: int) -> list[Run]:
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as name:
        tmp = Path(name)
        for round_ in range(rounds):
            for i, c in enumerate(concurrencies):
                order = (run_loop, run_daemon) if (round_ + i) % 2 == 0 else (run_daemon, run_loop)
                for fn in order:
                    started = time.monotonic()
                    run = fn(endpoint, objects, c, tmp, round_)
                    runs.append(run)
                    print(f"  queue-overhead r{round_}: {run.side:6} c={c}: {run.window_s:6.2f} s "
                          f"({1000 * run.window_s / run.jobs:5.1f} ms/job; run took "
                          f"{time.monotonic() - started:.1f} s)", flush=True)
    return runs


def figures(runs: Sequence[Run]) -> list[Figure]:
    rows = []
    for c in sorted({r.concurrency for r in runs}):
        pairs: dict[int, dict[str, Run]] = {}
        for r in runs:
            if r.concurrency == c:
                pairs.setdefault(r.round, {})[r.side] = r
        ratios = [p["daemon"].window_s / p["loop"].window_s for _, p in sorted(pairs.items())]
        ratio = statistics.median(ratios)
        daemon_s = statistics.median(p["daemon"].window_s for p in pairs.values())
        loop_s = statistics.median(p["loop"].window_s for p in pairs.values())
        jobs = next(iter(pairs.values()))["daemon"].jobs
        rows.append(Figure(
            f"11. fleet path per-job cost, c={c}: one fleet daemon / textbook SQS loop, {jobs} jobs of "
            f"64 KiB, median of {len(ratios)}",
            f"**{ratio:.2f}** (rounds: {', '.join(f'{x:.2f}' for x in ratios)}; median windows "
            f"{daemon_s:.2f} s vs {loop_s:.2f} s, {1000 * daemon_s / jobs:.1f} vs "
            f"{1000 * loop_s / jobs:.1f} ms/job)",
            f"≤ {GOAL}", ratio <= GOAL))
    return rows


def measure(jobs: int, concurrencies: Sequence[int], rounds: int) -> list[Figure]:
    """A moto server of its own, ``jobs`` objects of 64 KiB, the sweep; the figures."""
    with moto_server() as endpoint:
        client = create_buckets(endpoint)
        objects = put_small_objects(client, jobs, 64 * KIB)
        return figures(sweep(endpoint, objects, concurrencies, rounds=rounds))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args(argv)
    byte_compile()
    for row in measure(args.jobs, args.concurrency, args.rounds):
        print(row.row())
    return 0


if __name__ == "__main__":
    sys.exit(main())
