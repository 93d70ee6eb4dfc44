"""`processorctl list`, `show` and bulk `retry` as scripts and people use them: the real
console script over a real ledger (newest first, limits, filters, columns, id prefixes,
s3:// look-ups, JSON errors, global options after the subcommand)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.daemon import processorctl, write_config
from worker import exitcodes
from worker.ctl.render import when
from worker.jobs.identity import Identity
from worker.jobs.states import JobState
from worker.state.ledger import Ledger

#: Submission times of the jobs the fixture records, oldest first (one minute apart).
T0 = 1_765_000_000.0


@pytest.fixture
def config(short_tmp: Path) -> Path:
    return write_config(short_tmp)


def ledger_of(config: Path) -> Ledger:
    return Ledger(config.parent / "state" / "ledger" / "ledger.db")


@pytest.fixture
def jobs(config: Path) -> list[str]:
    """Six jobs: a/1..a/3 and b/1 ended, c/2 running, c/1 queued; ids oldest first."""
    ids = []
    clock = {"now": T0}
    with Ledger(config.parent / "state" / "ledger" / "ledger.db", clock=lambda: clock["now"]) as ledger:
        for n, (key, end) in enumerate([("a/1.csv", JobState.SUCCEEDED), ("a/2.csv", JobState.FAILED),
                                        ("b/1.csv", JobState.FAILED), ("a/3.csv", JobState.CANCELLED),
                                        ("c/2.csv", JobState.RUNNING), ("c/1.csv", None)]):
            clock["now"] = T0 + 60 * n
            job, _ = ledger.submit(Identity("in", key, f"v{n}", None))
            ids.append(job.id)
            if end is None:
                continue
            claimed = ledger.claim_next()
            assert claimed is not None and claimed.id == job.id
            if end is JobState.RUNNING:
                continue
            clock["now"] += 7
            ledger.transition(job.id, end, finished_at=clock["now"],
                              error="exit 3\nsecond line" if end is JobState.FAILED else None)
    return ids


def listed(config: Path, *args: str) -> list[dict[str, object]]:
    done = processorctl(config, "list", "--json", *args)
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, object]] = json.loads(done.stdout)
    return rows


def test_list_is_newest_first_and_limit_keeps_the_newest(config: Path, jobs: list[str]) -> None:
    assert [r["id"] for r in listed(config)] == jobs[::-1]
    newest = processorctl(config, "list", "--json", "--limit", "2")
    assert [r["id"] for r in json.loads(newest.stdout)] == jobs[:-3:-1]
    assert "showing the 2 newest of 6 matching jobs" in newest.stderr


def test_list_has_a_default_limit_and_all_lifts_it(config: Path) -> None:
    with ledger_of(config) as ledger:
        for n in range(55):
            ledger.submit(Identity("in", f"k{n:03d}", None, f"e{n}"))
    default = processorctl(config, "list")
    assert len(default.stdout.splitlines()) == 1 + 50 and "of 55 matching" in default.stderr
    assert len(listed(config, "--all")) == 55
    assert processorctl(config, "list", "--all").stderr == ""


def test_list_filters_by_states_key_prefix_bucket_and_time(config: Path, jobs: list[str]) -> None:
    assert {r["id"] for r in listed(config, "--state", "failed,cancelled")} == {jobs[1], jobs[2], jobs[3]}
    assert [r["key"] for r in listed(config, "--key", "a/")] == ["a/3.csv", "a/2.csv", "a/1.csv"]
    assert [r["key"] for r in listed(config, "--key", "s3://in/b")] == ["b/1.csv"]
    assert listed(config, "--key", "s3://other/a") == []
    since = listed(config, "--since", f"@{T0 + 120}", "--until", f"@{T0 + 240}")
    assert [r["key"] for r in since] == ["a/3.csv", "b/1.csv"]
    assert len(listed(config, "--since", "2025-01-01T00:00Z")) == 6
    assert listed(config, "--since", "1h") == []  # the fixture's jobs are from 2025
    bad = processorctl(config, "list", "--state", "failed,lost")
    assert bad.returncode == exitcodes.USAGE and "unknown state lost" in bad.stderr
    bad = processorctl(config, "list", "--since", "yesterday")
    assert bad.returncode == exitcodes.USAGE and "--since 'yesterday': not a time" in bad.stderr


def test_list_columns_show_started_duration_and_the_first_line_of_the_error(
    config: Path, jobs: list[str]
) -> None:
    done = processorctl(config, "list", "--state", "failed")
    header, *rows = done.stdout.splitlines()
    assert header.split() == ["JOB", "STATE", "ATTEMPTS", "STARTED", "DURATION", "KEY", "ERROR"]
    started = when(T0 + 120).split()
    assert rows[0].split() == [jobs[2], "failed", "1", *started, "7s", "b/1.csv", "exit", "3"]
    assert "second line" not in done.stdout
    queued = processorctl(config, "list", "--state", "queued").stdout.splitlines()[1].split()
    assert queued[3:5] == ["-", "-"]
    assert next(r for r in listed(config) if r["id"] == jobs[2])["duration_s"] == 7.0


def test_show_takes_a_unique_id_prefix(config: Path, jobs: list[str]) -> None:
    prefix = next(jobs[0][:n] for n in range(3, 22) if sum(j.startswith(jobs[0][:n]) for j in jobs) == 1)
    done = processorctl(config, "show", prefix, "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["id"] == jobs[0]
    ambiguous = processorctl(config, "show", "j-")
    assert ambiguous.returncode == exitcodes.USAGE and "ambiguous" in ambiguous.stderr
    missing = processorctl(config, "show", "j-zzz")
    assert missing.returncode == exitcodes.NOT_FOUND


def test_show_by_object_gives_the_newest_version_or_all_of_them(config: Path) -> None:
    with ledger_of(config) as ledger:
        old, _ = ledger.submit(Identity("in", "data.csv", "v1", None))
        new, _ = ledger.submit(Identity("in", "data.csv", "v2", None))
    done = processorctl(config, "show", "s3://in/data.csv")
    assert done.returncode == 0 and "job:" in done.stdout and new.id in done.stdout
    assert old.id not in done.stdout
    every = json.loads(processorctl(config, "show", "s3://in/data.csv", "--all-versions", "--json").stdout)
    assert [j["id"] for j in every] == [new.id, old.id]
    missing = processorctl(config, "show", "s3://in/nothing.csv", "--json")
    assert missing.returncode == exitcodes.NOT_FOUND
    assert json.loads(missing.stdout)["error"]["kind"] == "not_found"


def test_global_options_after_the_subcommand_and_errors_as_json(config: Path, jobs: list[str]) -> None:
    import os
    import subprocess
    import sys

    ctl = str(Path(sys.executable).parent / "processorctl")
    after = subprocess.run([ctl, "list", "--json", "--config", str(config)], capture_output=True,
                           text=True, timeout=30)
    assert after.returncode == 0 and len(json.loads(after.stdout)) == 6
    usage = subprocess.run([ctl, "--config", str(config), "list", "--json", "--limit", "0"],
                           capture_output=True, text=True, timeout=30)
    assert usage.returncode == exitcodes.USAGE and "--limit" in usage.stderr
    assert json.loads(usage.stdout)["error"]["exit_code"] == exitcodes.USAGE
    env = {k: v for k, v in os.environ.items() if k != "PROCESSOR_CONFIG"}
    bare = subprocess.run([ctl, "list", "--json"], capture_output=True, text=True, timeout=30, env=env)
    assert bare.returncode == exitcodes.USAGE
    assert "PROCESSOR_CONFIG" in bare.stderr and "--config" in bare.stderr
    assert json.loads(bare.stdout)["error"]["kind"] == "config"


def test_bulk_retry_counts_then_retries_with_yes(config: Path, jobs: list[str]) -> None:
    dry = processorctl(config, "retry", "--state", "failed", "--key", "a/")
    assert dry.returncode == exitcodes.USAGE and "1 job(s) match; add --yes" in dry.stdout
    assert {r["id"] for r in listed(config, "--state", "failed")} == {jobs[1], jobs[2]}
    done = processorctl(config, "retry", "--state", "failed", "--yes", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["matched"] == 2 and set(report["retried"]) == {jobs[1], jobs[2]}
    assert listed(config, "--state", "failed") == []
    none = processorctl(config, "retry", "--state", "failed", "--yes")
    assert none.returncode == 0 and "retried 0 of 0" in none.stdout
    both = processorctl(config, "retry", jobs[3], "--state", "cancelled")
    assert both.returncode == exitcodes.USAGE and "not both" in both.stderr
    running = processorctl(config, "retry", "--state", "running", "--yes")
    assert running.returncode == exitcodes.USAGE and "only failed or cancelled" in running.stderr


@pytest.mark.parametrize(("where", "args", "sorted_by_index"), [
    ("1", (), True),
    ("state = ?", ("failed",), True),
    ("created_at >= ?", (0.0,), True),
    ("state IN (?, ?)", ("failed", "cancelled"), False),  # the matching rows only are sorted
    ("key >= ? AND key < ? AND substr(key, 1, 2) = ?", ("a/", "a0", "a/"), False),
])
def test_list_queries_use_an_index_not_a_scan_of_every_job(
    config: Path, where: str, args: tuple[object, ...], sorted_by_index: bool
) -> None:
    """What `list` filters and sorts on is indexed (bench/list_jobs.py measures it with 100,000 jobs)."""
    import sqlite3

    with ledger_of(config):
        pass  # creates the schema
    db = sqlite3.connect(config.parent / "state" / "ledger" / "ledger.db")
    plan = " / ".join(row[3] for row in db.execute(
        f"EXPLAIN QUERY PLAN SELECT * FROM jobs WHERE {where} ORDER BY created_at DESC, id DESC LIMIT 50",
        args))
    db.close()
    assert "USING INDEX" in plan, plan
    assert ("TEMP B-TREE" not in plan) == sorted_by_index, plan
