"""Submit cost, dispatch latency, and both again with 10,000 jobs queued.

Two daemons run side by side against the same emulator, each with a free
slot: E on a fresh ledger, Q on a ledger holding QUEUE_DEPTH queued jobs that
are not due yet (``next_attempt_at`` in the future), so every trial job is the
one the daemon picks. Trials alternate E and Q and wait for the previous job
to finish, so each submit finds an idle daemon:

- submit: the wall time of ``processorctl submit`` (a fresh interpreter, the
  ledger commit and the wake-up on the socket), against ``python3 -c pass``
  with the same interpreter, run alternately;
- dispatch: from processorctl's return to the processing command's start (the
  command writes ``date +%s.%N`` first thing). It covers the wake-up, the
  claim, the HEAD and the 64 KiB download, which come before the command.

Also timed in-process: ``Ledger.claim_next`` on an empty ledger and on one
with QUEUE_DEPTH not-due jobs.
"""

from __future__ import annotations

import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import (
    BIN,
    ENV,
    INPUT_BUCKET,
    PYTHON,
    Daemon,
    ledger_path,
    wait_for,
    write_config,
)

QUEUE_DEPTH = 10_000



def stamp_command(starts: Path) -> tuple[str, ...]:
    """First thing the command does is record when it started (epoch seconds), in starts/<job id>."""
    return ("/bin/sh", "-c", 'date +%s.%N > "$0/$PROCESSOR_JOB_ID"; exec /bin/cp "$1" "$2/"',
            str(starts), "{input}", "{output_dir}")


@dataclass
class Side:
    name: str
    config: Path
    starts: Path
    submit_s: list[float] = field(default_factory=list)
    dispatch_s: list[float] = field(default_factory=list)
    claim_s: list[float] = field(default_factory=list)  # submit return -> ledger started_at


def fill_not_due(ledger_file: Path, depth: int, *, prefix: str = "queued/") -> None:
    """``depth`` queued jobs through Ledger.submit, then pushed a day into the future.

    The fill commits without fsync (the same rows, written faster); the
    daemon reopens the ledger with its own settings.
    """
    from worker.jobs.identity import Identity
    from worker.state.ledger import Ledger

    with Ledger(ledger_file) as ledger:
        ledger._db.execute("PRAGMA synchronous=OFF")
        for i in range(depth):
            ledger.submit(Identity(INPUT_BUCKET, f"{prefix}{i:06d}.bin", None, f"{i:032x}"))
        ledger._db.execute("UPDATE jobs SET next_attempt_at = ? WHERE state = 'queued'",
                           (time.time() + 86400,))


def claim_next_cost(tmp: Path, depth: int, trials: int) -> tuple[list[float], list[float]]:
    """Seconds per Ledger.claim_next of one due job: empty ledger vs ``depth`` not-due jobs."""
    from worker.jobs.identity import Identity
    from worker.jobs.states import JobState
    from worker.state.ledger import Ledger

    empty_file, deep_file = tmp / "claim-empty" / "l.db", tmp / "claim-deep" / "l.db"
    fill_not_due(deep_file, depth)
    results: tuple[list[float], list[float]] = ([], [])
    with Ledger(empty_file) as empty, Ledger(deep_file) as deep:
        for i in range(trials):
            for ledger, out in ((empty, results[0]), (deep, results[1])):
                ledger.submit(Identity(INPUT_BUCKET, f"due/{i:05d}.bin", None, f"{i:032x}"))
                started = time.perf_counter()
                job = ledger.claim_next()
                out.append(time.perf_counter() - started)
                assert job is not None and job.key == f"due/{i:05d}.bin", job
                ledger.transition(job.id, JobState.SUCCEEDED, finished_at=time.time())
    return results


def counts_cost(tmp: Path, trials: int = 50) -> tuple[float, float]:
    """Median seconds of Ledger.counts() (run by the daemon's loop on every wake): empty vs deep."""
    from worker.state.ledger import Ledger

    out = []
    for name in ("claim-empty", "claim-deep"):
        with Ledger(tmp / name / "l.db") as ledger:
            times = []
            for _ in range(trials):
                started = time.perf_counter()
                ledger.counts()
                times.append(time.perf_counter() - started)
            out.append(sorted(times)[len(times) // 2])
    return out[0], out[1]


def _trial(side: Side, key: str, etag: str, db: sqlite3.Connection) -> None:
    started = time.perf_counter()
    done = subprocess.run([str(BIN / "processorctl"), "--config", str(side.config), "submit",
                           "--bucket", INPUT_BUCKET, f"--key={key}", f"--etag={etag}"],
                          env=ENV, capture_output=True, text=True, check=True)
    returned_at = time.time()
    side.submit_s.append(time.perf_counter() - started)
    job_id = done.stdout.strip()
    stamp = side.starts / job_id
    wait_for(lambda: stamp.exists() and stamp.stat().st_size > 0, 60, f"{job_id} to start", 0.001)
    side.dispatch_s.append(float(stamp.read_text()) - returned_at)

    def finished() -> bool:
        row = db.execute("SELECT state, started_at FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row is not None and row[0] not in ("queued", "running")

    wait_for(finished, 60, f"{job_id} to finish", 0.005)
    state, claimed = db.execute("SELECT state, started_at FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if state != "succeeded":
        raise RuntimeError(f"{side.name}: {job_id} ended {state}")
    side.claim_s.append(claimed - returned_at)


def python_pass_s() -> float:
    started = time.perf_counter()
    subprocess.run([PYTHON, "-c", "pass"], env=ENV, check=True)
    return time.perf_counter() - started


@dataclass
class Result:
    empty: Side
    deep: Side
    python_pass_s: list[float]
    claim_empty_s: list[float]
    claim_deep_s: list[float]
    counts_empty_s: float
    counts_deep_s: float


def run(endpoint: str, objects: Sequence[tuple[str, str]], *, trials: int, deep_trials: int,
        depth: int = QUEUE_DEPTH, log: bool = True) -> Result:
    with tempfile.TemporaryDirectory(prefix="bench-submit-") as name:
        tmp = Path(name)
        sides = []
        for side_name in ("empty", "deep"):
            starts = tmp / f"{side_name}-starts"
            starts.mkdir()
            config = write_config(tmp / side_name, endpoint, stamp_command(starts), concurrency=2,
                                  output_prefix=f"dispatch-{side_name}/")
            sides.append(Side(side_name, config, starts))
        empty, deep = sides
        started = time.monotonic()
        fill_not_due(ledger_path(deep.config), depth)
        if log:
            print(f"  submit/dispatch: {depth} not-due jobs queued in {time.monotonic() - started:.1f} s",
                  flush=True)
        passes: list[float] = []
        with Daemon(empty.config), Daemon(deep.config):
            dbs = {s.name: sqlite3.connect(f"file:{ledger_path(s.config)}?mode=ro", uri=True, timeout=30)
                   for s in sides}
            try:
                for i, (key, etag) in enumerate(objects[:trials]):
                    order = (empty, deep) if i % 2 == 0 else (deep, empty)
                    for side in order:
                        if side is deep and i >= deep_trials:
                            continue
                        _trial(side, key, etag, dbs[side.name])
                    passes.append(python_pass_s())
            finally:
                for db in dbs.values():
                    db.close()
        claim_empty, claim_deep = claim_next_cost(tmp, depth, 100)
        counts_empty, counts_deep = counts_cost(tmp)
    return Result(empty, deep, passes, claim_empty, claim_deep, counts_empty, counts_deep)
