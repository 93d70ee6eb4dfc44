"""`processorctl list` and `show` with 100,000 jobs in the ledger, against an empty ledger.

The real console script (a fresh interpreter each run, byte-compiled like the
installed wheel) reads a ledger filled with ``JOBS`` jobs spread over 30 days:
keys under 100 prefixes, one in 20 failed, the rest succeeded, a few queued.
Each variant (the newest 50, ``--state failed``, ``--key PREFIX``, ``--since 1h``,
``show`` by id prefix and by ``s3://``) runs ``RUNS`` times alternated with the
same command on an empty ledger; a figure is the ratio of the medians. The
jobs are inserted with one SQL transaction (``Ledger.submit`` fsyncs each, and
the point is reading them back); the ledger's own schema and indexes are used.

    .venv/bin/python -m bench.list_jobs            # prints the rows
    .venv/bin/python -m bench.list_jobs --record   # and writes them into bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import random
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import BIN, ENV, REPO, Figure, byte_compile, median
from worker.jobs.identity import Identity
from worker.state.ledger import Ledger

JOBS = 100_000
RUNS = 7
#: The worst acceptable ratio to the same command on an empty ledger.
GOAL = 2.0
BUCKET = "in"


def fill(path: Path, jobs: int, seed: int = 7) -> tuple[str, str]:
    """``jobs`` jobs in the ledger at ``path``; the id and key of one of them (for ``show``)."""
    rng = random.Random(seed)
    now = time.time()
    with Ledger(path) as ledger:
        ledger.submit(Identity(BUCKET, "warm/0.csv", None, "e"))  # creates the schema
    import sqlite3

    db = sqlite3.connect(path)
    rows = []
    for n in range(jobs):
        created = now - rng.uniform(0, 30 * 86400)
        key = f"p{n % 100:02d}/file-{n:06d}.csv"
        state = "failed" if n % 20 == 0 else "queued" if n % 997 == 0 else "succeeded"
        done = state != "queued"
        rows.append((_job_id(n), BUCKET, key, f"e{n}", None, f"e{n}", state, 1 if done else 0,
                     created, created + 2, created + 1 if done else None, created + 2 if done else None,
                     "command exited with status 3" if state == "failed" else None))
    with db:
        db.executemany(
            "INSERT INTO jobs (id, bucket, key, version, version_id, etag, state, attempts, created_at,"
            " updated_at, started_at, finished_at, error) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    db.close()
    if not rows:
        return "", ""
    # Ids are hashes like real ones (worker.jobs.identity): 12 characters are unique among 100,000.
    return _job_id(jobs // 2)[:12], f"{BUCKET}/{rows[jobs // 2][2]}"


def _job_id(n: int) -> str:
    import hashlib

    return "j-" + hashlib.sha256(str(n).encode()).hexdigest()[:20]


def config(directory: Path) -> Path:
    path = directory / "processor.toml"
    path.write_text("\n".join([
        "[s3]", 'output_bucket = "out"', "[processing]", 'command = ["/bin/true", "{input}"]',
        "[paths]", f'state_dir = "{directory / "state"}"', f'socket = "{directory / "p.sock"}"',
        "[logging]", "journald = false", ""]))
    return path


def timed(cfg: Path, args: list[str]) -> float:
    began = time.perf_counter()
    done = subprocess.run([str(BIN / "processorctl"), "--config", str(cfg), *args],
                          capture_output=True, text=True, env=ENV, timeout=120)
    elapsed = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"processorctl {' '.join(args)}: {done.returncode}: {done.stderr}")
    return elapsed


def figures(jobs: int = JOBS, runs: int = RUNS) -> list[Figure]:
    byte_compile()
    with tempfile.TemporaryDirectory(prefix="bench-list-") as tmp:
        full, empty = Path(tmp) / "full", Path(tmp) / "empty"
        for d in (full, empty):
            (d / "state" / "ledger").mkdir(parents=True)
        prefix, obj = fill(full / "state" / "ledger" / "ledger.db", jobs)
        fill(empty / "state" / "ledger" / "ledger.db", 0)
        cfg_full, cfg_empty = config(full), config(empty)
        variants = {
            "list (the newest 50)": ["list"],
            "list --state failed": ["list", "--state", "failed"],
            "list --key p42/": ["list", "--key", "p42/"],
            "list --since 1h": ["list", "--since", "1h"],
            "list --state queued --all --json": ["list", "--state", "queued", "--all", "--json"],
            "show ID-PREFIX": ["show", prefix],
            "show s3://BUCKET/KEY": ["show", f"s3://{obj}"],
        }
        rows = []
        for name, args in variants.items():
            a, b = [], []
            for _ in range(runs):
                a.append(timed(cfg_full, args))
                b.append(timed(cfg_empty, args if not args[0] == "show" else ["list"]))
            ratio = median(a) / median(b)
            rows.append(Figure(
                f"9. `processorctl {name}` with {jobs:,} jobs / empty ledger (median of {runs})",
                f"**{ratio:.2f}** ({median(a) * 1000:.1f} ms vs {median(b) * 1000:.1f} ms)",
                f"≤ {GOAL}", ratio <= GOAL))
        rows += _without_indexes(full, cfg_full, cfg_empty, jobs, runs)
        return rows


def _without_indexes(full: Path, cfg_full: Path, cfg_empty: Path, jobs: int, runs: int) -> list[Figure]:
    """The same ledger without schema 5's list indexes: what they are worth (the last rows)."""
    import sqlite3

    db = sqlite3.connect(full / "state" / "ledger" / "ledger.db")
    for index in ("jobs_by_created", "jobs_by_state_created", "jobs_by_key"):
        db.execute(f"DROP INDEX {index}")
    db.close()
    rows = []
    variants = {"list (the newest 50)": ["list"], "list --key p42/": ["list", "--key", "p42/"]}
    for name, args in variants.items():
        a, b = [], []
        for _ in range(runs):
            a.append(timed(cfg_full, args))
            b.append(timed(cfg_empty, args))
        rows.append(Figure(
            f"9x. … `processorctl {name}` without the list indexes (as schema 4), for comparison",
            f"{median(a) / median(b):.2f} ({median(a) * 1000:.1f} ms vs {median(b) * 1000:.1f} ms)"))
    return rows


def record(rows: list[Figure], results: Path) -> None:
    """Replace the 9. rows of the results table (or add them after its last row)."""
    lines = results.read_text().splitlines()
    kept = [line for line in lines if not line.startswith(("| 9. ", "| 9x. "))]
    last = kept.index("| measure | value | goal | |")
    while last + 1 < len(kept) and kept[last + 1].startswith("| "):
        last += 1
    kept[last + 1:last + 1] = [row.row() for row in rows]
    results.write_text("\n".join(kept) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=JOBS)
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--record", action="store_true", help="write the rows into bench/RESULTS.md")
    args = parser.parse_args()
    rows = figures(args.jobs, args.runs)
    for row in rows:
        print(row.row())
    if args.record:
        record(rows, REPO / "bench" / "RESULTS.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
