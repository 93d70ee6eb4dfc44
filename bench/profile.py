"""Where a job's time goes inside the daemon: py-spy samples of the running daemon.

py-spy attaches to ``processor run`` (``--idle``: waits count, so the figures
are wall time, not only CPU) while it drains N queued jobs, and writes the
collapsed stacks. Samples of the job threads (stacks through
``Slots._run_job``) are put in buckets by the step they are in; samples of
the ``daemon-loop`` thread (``Daemon._loop``) that are not idle in ``select`` show the
dispatch loop's own cost. pyinstrument is not used for this: it profiles only
the thread that started it, and the daemon does its work in job threads.

``--fleet``: the same for one fleet daemon draining a work queue (section 10 of
the suite): messages sent before it starts, and the receiver thread's and the
fleet steps' (claim, manifest check, settle, delete) time per job as well.

Usage: python -m bench.profile [--concurrency 1] [--jobs 200] [--fleet]
                              [--out bench/profiles/daemon-c1.txt.gz]
"""

from __future__ import annotations

import argparse
import collections
import gzip
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.common import (
    BIN,
    KIB,
    REPO,
    Daemon,
    create_buckets,
    finished_count,
    moto_server,
    put_small_objects,
    read_ledger,
    wait_for,
    write_config,
)
from bench.overhead import COPY, prefill

#: Sampling rate (Hz); each sample of a thread stands for 1/RATE s of its wall time.
RATE = 250

#: Job-thread buckets, first match wins; a needle is a substring of the collapsed stack.
BUCKETS: Sequence[tuple[str, Sequence[str]]] = (
    ("ledger writes (set_progress, transitions; BEGIN IMMEDIATE + fsync)", ("(worker/state/ledger.py",)),
    ("logging (structlog -> JSON -> file + stderr)", ("structlog/", "logging/__init__.py")),
    ("HEAD before the download (S3Store.head)", ("S3Store.head ",)),
    ("download (one GET below 32 MiB, else ranged GETs)", ("S3Store.download ",)),
    ("verify the download (hash)", ("verify_download ",)),
    ("processing command (fork/exec/wait of cp)", ("run_command ",)),
    ("hash the outputs", ("digest_file ",)),
    ("upload (one PUT below 32 MiB, else multipart)", ("S3Store.upload_file ",)),
    ("DELETE _failed.json (only after a failure of the key)", ("S3Store.delete ",)),
    ("PUT _manifest.json", ("S3Store.put_json ",)),
    ("work dir create/remove", ("shutil.py", "pathlib.py")),
)


#: A fleet daemon's steps outside the pipeline, first match wins: in the receiver
#: thread (``QueueConsumer._receive_loop``) and in the slot thread around the pipeline.
FLEET_BUCKETS: Sequence[tuple[str, Sequence[str]]] = (
    ("receiver: SQS receive", ("SQSQueue.receive ",)),
    ("receiver: claim in the job table (DynamoDB)", ("FleetClaims.claim ",)),
    ("receiver: ledger claim, start the slot, log", ("QueueConsumer._take ",)),
    ("manifest check (GET _manifest.json under the key and under _by-id/)",
     ("QueueConsumer._already_processed ",)),
    ("settle: the job record (DynamoDB)", ("FleetClaims.settle ",)),
    ("settle: delete the message", ("QueueConsumer._delete ",)),
)

#: A slot thread claiming its next job itself (claim_next's fsync'd transaction).
CLAIM = "slot thread: claim of the next job (claim_next, fsync)"


def record(concurrency: int, jobs: int, out: Path, *, fleet: bool = False) -> tuple[int, float]:
    """Drain ``jobs`` jobs under py-spy; return (jobs, drain window in seconds)."""
    with moto_server() as endpoint, tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        client = create_buckets(endpoint)
        objects = put_small_objects(client, jobs, 64 * KIB)
        if fleet:
            from bench.queue_common import create_work_queue, fleet_config, send_jobs, sqs_client

            queue = create_work_queue(endpoint, "bench-profile", visibility_s=60)
            send_jobs(sqs_client(endpoint), queue.url, objects)
            config = fleet_config(Path(tmp) / "daemon", endpoint, COPY, queue, holder="profile",
                                  concurrency=concurrency, output_prefix="", visibility_s=60, wait_s=2)
        else:
            config = write_config(Path(tmp) / "daemon", endpoint, COPY, concurrency=concurrency)
            prefill(config, objects)
        with Daemon(config) as daemon:
            spy = subprocess.Popen(
                [str(BIN / "py-spy"), "record", "--pid", str(daemon.proc.pid), "--rate", str(RATE),
                 "--format", "raw", "--idle", "--threads", "--output", str(Path(tmp) / "raw.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            wait_for(lambda: finished_count(config) >= jobs, 600, "the daemon to drain", 0.2)
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        rows = read_ledger(config, "SELECT started_at, finished_at FROM jobs")
        _fold_threads(Path(tmp) / "raw.txt", out)
    return len(rows), max(r["finished_at"] for r in rows) - min(r["started_at"] for r in rows)


def _fold_threads(raw: Path, out: Path) -> None:
    """Drop the per-thread first frame (``thread (tid): slot-N``, one per slot thread) and re-aggregate.

    What is left is the usual collapsed-stack format (flamegraph.pl, speedscope), a
    few hundred kB instead of megabytes; gzip'd when ``out`` ends in .gz.
    """
    folded: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        _, _, rest = stack.partition(";")
        if rest:
            folded[rest] += int(count)
    text = "".join(f"{stack} {n}\n" for stack, n in folded.most_common())
    if out.suffix == ".gz":
        out.write_bytes(gzip.compress(text.encode()))
    else:
        out.write_text(text)


def summarize(path: Path, jobs: int) -> list[tuple[str, float]]:
    """(bucket, milliseconds per job) for the job threads, plus the main loop's busy time."""
    per_bucket: collections.Counter[str] = collections.Counter()
    data = path.read_bytes()
    for line in (gzip.decompress(data) if path.suffix == ".gz" else data).decode().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        fleet = next((label for label, needles in FLEET_BUCKETS if any(n in stack for n in needles)), None)
        if fleet is not None and "Slots.wait_for_slot " not in stack:
            per_bucket[fleet] += samples
        elif "Slots._run_job " in stack:
            name = next((label for label, needles in BUCKETS if any(n in stack for n in needles)),
                        "other pipeline steps")
            per_bucket[name] += samples
        elif "Slots.claim " in stack and "Slots._thread " in stack:
            per_bucket[CLAIM] += samples
        elif "Daemon._loop " in stack:
            if stack.rsplit(";", 1)[-1].startswith("Daemon._sleep "):  # in select()
                per_bucket["(main loop idle in select)"] += samples
            else:
                per_bucket["main loop busy (claim_next, counts, next_due_at, status)"] += samples
    ms = 1000.0 / RATE / jobs
    order = [label for label, _ in FLEET_BUCKETS] + [label for label, _ in BUCKETS] + [
        "other pipeline steps", CLAIM, "main loop busy (claim_next, counts, next_due_at, status)"]
    return [(label, per_bucket[label] * ms) for label in order if per_bucket[label]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--fleet", action="store_true",
                        help="one fleet daemon draining a work queue instead of its ledger")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    name = "fleet" if args.fleet else "daemon"
    out = args.out or REPO / "bench" / "profiles" / f"{name}-c{args.concurrency}.txt.gz"
    out.parent.mkdir(parents=True, exist_ok=True)
    jobs, window = record(args.concurrency, args.jobs, out, fleet=args.fleet)
    print(f"{jobs} jobs in {window:.2f} s ({1000 * window / jobs:.1f} ms/job), concurrency "
          f"{args.concurrency}; job-thread wall time per job:")
    for label, value in summarize(out, jobs):
        print(f"  {value:7.2f} ms  {label}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
