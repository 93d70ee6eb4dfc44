"""A real fleet's makespan: N daemons on one work queue over the emulator, against the ideal schedule.

What bench/fleet.py simulates, run for real: N ``processor run`` daemons (child
processes, each its own state dir, concurrency 2, production's long poll of
20 s) share one SQS work queue, one DynamoDB job table and S3, all on one moto
server (its own process) on loopback. The daemons are up and idle before the
clock starts; then one message per job is sent, in order, as the Lambda words
them. Each job sleeps for its duration (the object holds the seconds) and
writes one output: jobs of mixed lengths from a fixed seed, lognormal around
``SHORT_S`` with 5 % of them ``LONG_FACTOR`` times longer, ``JOBS_PER_SLOT``
per slot of the fleet, so every slot is busy many times over.

Makespan: from just before the first message is sent to the last job's
ledger ``finished_at`` (written after its manifest is in the bucket), over the
ledgers of all daemons. Ideal: the greedy schedule of the same durations, in
the order sent, on all N x 2 slots as one pool (``bench.fleet.ideal_s``); also
given against the lower bound of any schedule, max(work / slots, longest job).
The jobs' own durations are the sleeps; everything the fleet adds (the
receive, the claim in the job table, the manifest check, the HEAD, download,
upload and manifest of each job, the start of ``sh``) is in the makespan, not
in the ideal.

Usage: python -m bench.fleet_real [--instances 3 10] [--jobs-per-slot 16] [--seed 7]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    INPUT_BUCKET,
    Figure,
    byte_compile,
    create_buckets,
    moto_server,
    read_ledger,
    wait_for,
)
from bench.fleet import Job, ideal_s, lower_bound_s
from bench.queue_common import create_work_queue, daemons, fleet_config, send_jobs, sqs_client

GOAL = 1.10
SLOTS = 2
#: Median of a short job (seconds), the lognormal spread, the share of long jobs and their factor.
SHORT_S = 2.5
SIGMA = 0.4
LONG_SHARE = 0.05
LONG_FACTOR = 5.0
JOBS_PER_SLOT = 16
#: Production's long poll; a lease far above the longest job (it is renewed anyway).
WAIT_S = 20
VISIBILITY_S = 60
#: The job: sleep for the seconds the object holds, write one output.
SCRIPT = 'read -r secs < "$1"\nsleep "$secs"\necho ok > "$2/out.txt"\n'


def workload(count: int, seed: int) -> list[Job]:
    """``count`` jobs in send order: many short ones, 5 % of them LONG_FACTOR x longer."""
    rng = random.Random(seed)
    durations = [round(rng.lognormvariate(math.log(SHORT_S), SIGMA), 2) for _ in range(count)]
    for index in rng.sample(range(count), max(1, round(count * LONG_SHARE))):
        durations[index] = round(durations[index] * LONG_FACTOR, 2)
    return [Job(f"fleet-real/{seed}/{i:04d}", d) for i, d in enumerate(durations)]


@dataclass(frozen=True)
class Result:
    instances: int
    jobs: list[Job]
    makespan_s: float
    ideal_s: float
    bound_s: float
    #: The greedy schedule of each job's ledger time (claim to finished_at) instead of its sleep.
    ideal_measured_s: float
    #: Median of (ledger time - sleep) over the jobs: what the fleet adds to each job.
    added_s: float
    #: How many jobs each daemon ran.
    per_daemon: list[int]

    @property
    def ratio(self) -> float:
        return self.makespan_s / self.ideal_s


def run(endpoint: str, client: Any, instances: int, jobs_per_slot: int, seed: int, tmp: Path) -> Result:
    jobs = workload(instances * SLOTS * jobs_per_slot, seed + instances)
    objects = []
    for job in jobs:
        body = f"{job.duration_s}\n".encode()
        etag = client.put_object(Bucket=INPUT_BUCKET, Key=job.key, Body=body)["ETag"]
        objects.append((job.key, etag.strip('"')))
    name = f"fleet-real-n{instances}"
    queue = create_work_queue(endpoint, name, visibility_s=VISIBILITY_S)
    script = tmp / "job.sh"
    script.write_text(SCRIPT)
    command = ["/bin/sh", str(script), "{input}", "{output_dir}"]
    configs = [
        fleet_config(tmp / f"n{instances}-d{n}", endpoint, command, queue, holder=f"n{instances}-d{n}",
                     concurrency=SLOTS, output_prefix=f"{name}/", visibility_s=VISIBILITY_S, wait_s=WAIT_S)
        for n in range(instances)
    ]
    sqs = sqs_client(endpoint)
    with daemons(configs):
        began = time.time()
        send_jobs(sqs, queue.url, objects)
        bound = lower_bound_s(jobs, instances * SLOTS)

        def done() -> bool:
            counts = [_states(c) for c in configs]
            failed = sum(c.get("failed", 0) + c.get("cancelled", 0) for c in counts)
            if failed:
                raise RuntimeError(f"fleet of {instances}: {failed} jobs did not succeed")
            return sum(c.get("succeeded", 0) for c in counts) >= len(jobs)

        wait_for(done, 10 * bound + 120, f"{len(jobs)} jobs on {instances} daemons", 0.25)
    rows = {c: read_ledger(c, "SELECT key, state, started_at, finished_at FROM jobs") for c in configs}
    ran = [r for found in rows.values() for r in found]
    if sorted(r["key"] for r in ran) != sorted(j.key for j in jobs):
        raise RuntimeError(f"fleet of {instances}: the ledgers do not hold each job exactly once")
    took = {r["key"]: r["finished_at"] - r["started_at"] for r in ran}
    return Result(
        instances, jobs, max(r["finished_at"] for r in ran) - began, ideal_s(jobs, instances * SLOTS), bound,
        ideal_s([Job(j.key, took[j.key]) for j in jobs], instances * SLOTS),
        statistics.median(took[j.key] - j.duration_s for j in jobs), [len(found) for found in rows.values()],
    )


def _states(config: Path) -> dict[str, int]:
    if not (config.parent / "state" / "ledger" / "ledger.db").exists():
        return {}
    rows = read_ledger(config, "SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
    return {r["state"]: int(r["n"]) for r in rows}


def figure(result: Result) -> Figure:
    jobs = result.jobs
    long_jobs = sum(1 for j in jobs if j.duration_s > SHORT_S * LONG_FACTOR / 2)
    return Figure(
        f"10. fleet makespan (real daemons), {result.instances} daemons x {SLOTS} slots, {len(jobs)} "
        f"sleep jobs (median {statistics.median(j.duration_s for j in jobs):.1f} s, {long_jobs} "
        f"≈ {LONG_FACTOR:.0f}× longer): makespan / ideal greedy schedule",
        f"**{result.ratio:.2f}** ({result.makespan_s:.1f} s vs {result.ideal_s:.1f} s); against the lower "
        f"bound ({result.bound_s:.1f} s) {result.makespan_s / result.bound_s:.2f}; a job's ledger time is "
        f"its sleep + {1000 * result.added_s:.0f} ms (median), and makespan / the greedy schedule of those "
        f"times {result.makespan_s / result.ideal_measured_s:.2f}; jobs per daemon "
        f"{min(result.per_daemon)}–{max(result.per_daemon)}",
        f"≤ {GOAL}", result.ratio <= GOAL)


def measure(instances: Sequence[int], jobs_per_slot: int = JOBS_PER_SLOT, seed: int = 7) -> list[Figure]:
    """A moto server of its own; one fleet per size, one after the other."""
    rows = []
    with moto_server() as endpoint, tempfile.TemporaryDirectory(prefix="bench-fleet-") as name:
        client = create_buckets(endpoint)
        for count in instances:
            started = time.monotonic()
            result = run(endpoint, client, count, jobs_per_slot, seed, Path(name))
            print(f"  fleet-real n={count}: makespan {result.makespan_s:.1f} s, ideal {result.ideal_s:.1f} s "
                  f"({result.ratio:.2f}); run took {time.monotonic() - started:.0f} s", flush=True)
            rows.append(figure(result))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--jobs-per-slot", type=int, default=JOBS_PER_SLOT)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    byte_compile()
    for row in measure(args.instances, args.jobs_per_slot, args.seed):
        print(row.row())
    return 0


if __name__ == "__main__":
    sys.exit(main())
