"""The SQLite ledger: durable submit, one row per identity, checked transitions."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.daemon import processorctl, write_config
from worker.errors import InvalidTransition, JobNotFound, LedgerError
from worker.jobs.identity import Identity
from worker.jobs.states import JobState, Phase
from worker.state.ledger import Ledger
from worker.state.schema import SCHEMA_VERSION


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(tmp_path: Path, clock: Clock) -> Ledger:
    with Ledger(tmp_path / "ledger" / "ledger.db", clock=clock) as opened:
        yield opened


def test_submit_is_idempotent_per_identity(ledger: Ledger) -> None:
    ident = Identity("in", "a.csv", None, "etag1")
    job, created = ledger.submit(ident)
    again, created_again = ledger.submit(ident)
    assert created and not created_again
    assert again.id == job.id and again.state is JobState.QUEUED
    assert len(ledger.list_jobs()) == 1
    assert ledger.history(job.id) == [
        {"from_state": None, "to_state": "queued", "at": 1000.0, "attempt": 0, "reason": "submitted"}
    ]


def _rows(ledger: Ledger) -> list[list[tuple[object, ...]]]:
    return [[tuple(r) for r in ledger._db.execute(f"SELECT * FROM {table} ORDER BY rowid")]
            for table in ("jobs", "transitions")]


def test_enqueue_records_exactly_what_submit_records(tmp_path: Path, clock: Clock) -> None:
    """processorctl submit uses enqueue (no Job built): same rows, same answers."""
    ident = Identity("in", "a.csv", None, "etag1")
    with Ledger(tmp_path / "a" / "ledger.db", clock=clock) as by_submit, \
            Ledger(tmp_path / "b" / "ledger.db", clock=clock) as by_enqueue:
        job, created = by_submit.submit(ident)
        assert created and job.id == ident.job_id()
        assert by_enqueue.enqueue(ident) == (job.id, JobState.QUEUED, True)
        assert by_enqueue.enqueue(ident) == (job.id, JobState.QUEUED, False)
        by_submit.submit(ident)
        assert _rows(by_submit) == _rows(by_enqueue)
        by_enqueue.claim_next()
        assert by_enqueue.enqueue(ident) == (job.id, JobState.RUNNING, False)


def test_duplicate_of_a_finished_job_returns_it_unchanged(ledger: Ledger) -> None:
    job, _ = ledger.submit(Identity("in", "a", "v1"))
    ledger.claim_next()
    ledger.transition(job.id, JobState.SUCCEEDED, finished_at=1.0)
    again, created = ledger.submit(Identity("in", "a", "v1"))
    assert not created and again.state is JobState.SUCCEEDED
    # A new version of the same key is a new job.
    newer, created = ledger.submit(Identity("in", "a", "v2"))
    assert created and newer.id != job.id


def test_claim_counts_attempts_and_respects_due_time(ledger: Ledger, clock: Clock) -> None:
    first, _ = ledger.submit(Identity("in", "first", None, "e"))
    clock.now += 1
    second, _ = ledger.submit(Identity("in", "second", None, "e"))
    claimed = ledger.claim_next()
    assert claimed is not None and claimed.id == first.id
    assert claimed.state is JobState.RUNNING and claimed.attempts == 1
    # Retry later: not due yet, so the other job goes first.
    ledger.transition(first.id, JobState.QUEUED, next_attempt_at=clock.now + 60, reason="retry")
    claimed = ledger.claim_next()
    assert claimed is not None and claimed.id == second.id
    assert ledger.claim_next() is None
    assert ledger.next_due_at() == clock.now + 60
    clock.now += 61
    again = ledger.claim_next()
    assert again is not None and again.id == first.id and again.attempts == 2


def test_illegal_transition_raises_and_changes_nothing(ledger: Ledger) -> None:
    job, _ = ledger.submit(Identity("in", "k", None, "e"))
    with pytest.raises(InvalidTransition):
        ledger.transition(job.id, JobState.SUCCEEDED)
    assert ledger.get(job.id).state is JobState.QUEUED
    assert len(ledger.history(job.id)) == 1
    with pytest.raises(InvalidTransition):
        ledger.transition(job.id, JobState.CANCELLED, expect=JobState.RUNNING)
    with pytest.raises(JobNotFound):
        ledger.transition("j-nope", JobState.RUNNING)


def test_interrupted_jobs_are_requeued_on_start(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "l.db"
    with Ledger(path, clock=clock) as first:
        job, _ = first.submit(Identity("in", "k", None, "e"))
        first.claim_next()
    # A new process (a restarted daemon) opens the same file.
    with Ledger(path, clock=clock) as second:
        requeued = second.requeue_interrupted("restart")
        assert [j.id for j in requeued] == [job.id]
        state = second.get(job.id)
        assert state.state is JobState.QUEUED and state.attempts == 1
        assert second.history(job.id)[-1]["reason"] == "restart"


def test_counts_cover_every_state(ledger: Ledger) -> None:
    ledger.submit(Identity("in", "a", None, "e"))
    assert ledger.counts() == {"queued": 1, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0}


def test_ledger_is_wal_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    with Ledger(path) as ledger:
        job, _ = ledger.submit(Identity("in", "k", None, "e"))
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    with Ledger(path) as ledger:
        assert ledger.get(job.id).key == "k"


def test_only_claims_and_progress_are_committed_without_an_fsync(ledger: Ledger) -> None:
    """Submits and transitions commit with synchronous=FULL; a claim and progress with
    NORMAL, and the connection is back to FULL afterwards, so the next commit is durable."""
    statements: list[str] = []

    def traced(call: Callable[[], object]) -> list[str]:
        statements.clear()
        ledger._db.set_trace_callback(statements.append)
        try:
            call()
        finally:
            ledger._db.set_trace_callback(None)
        assert "COMMIT" in statements
        return list(statements)

    def unsynced(trace: list[str]) -> bool:
        assert ledger._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again
        return trace[0] == "PRAGMA synchronous=NORMAL" and trace[-1] == "PRAGMA synchronous=FULL"

    job, _ = ledger.submit(Identity("in", "k", None, "e"))
    assert not unsynced(traced(lambda: ledger.submit(Identity("in", "k2", None, "e"))))
    assert unsynced(traced(ledger.claim_next))
    assert unsynced(traced(lambda: ledger.set_progress(job.id, phase=Phase.DOWNLOADING, bytes_total=10)))
    final = traced(lambda: ledger.transition(job.id, JobState.SUCCEEDED, expect=JobState.RUNNING))
    assert not any("synchronous" in s for s in final)
    assert ledger.get(job.id).bytes_total == 10  # the progress was written


def test_progress_never_waits_behind_another_transaction(ledger: Ledger) -> None:
    """A job thread's progress is left for the transaction holding the write lock (an
    fsync'd transition of another job) to write when it lets go, not waited for."""
    job, _ = ledger.submit(Identity("in", "k", None, "e"))
    other, _ = ledger.submit(Identity("in", "other", None, "e"))
    ledger.claim_next()
    inside, release = threading.Event(), threading.Event()

    def transition_of_another_job() -> None:
        with ledger._write() as db:
            db.execute("UPDATE jobs SET error = 'x' WHERE id = ?", (other.id,))
            inside.set()
            release.wait(10)

    holder = threading.Thread(target=transition_of_another_job)
    holder.start()
    assert inside.wait(10)
    writer = threading.Thread(target=ledger.set_progress, args=(job.id,),
                              kwargs={"phase": Phase.UPLOADING, "bytes_total": 7})
    writer.start()
    writer.join(5)
    assert not writer.is_alive()  # returned while the lock was held
    assert ledger.get(job.id).phase is Phase.NONE  # not written yet
    release.set()
    holder.join(10)
    assert ledger.get(job.id).phase is Phase.UPLOADING and ledger.get(job.id).bytes_total == 7


def test_late_progress_does_not_touch_a_finished_job(ledger: Ledger) -> None:
    job, _ = ledger.submit(Identity("in", "k", None, "e"))
    ledger.claim_next()
    ledger.transition(job.id, JobState.SUCCEEDED, expect=JobState.RUNNING)
    ledger.set_progress(job.id, phase=Phase.UPLOADING, bytes_done=5)
    done = ledger.get(job.id)
    assert done.phase is Phase.NONE and done.bytes_done == 0


def test_unwritable_location_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    with pytest.raises(LedgerError, match="cannot open ledger"):
        Ledger(blocker / "ledger.db")


def _submit_many(path: str, worker: int) -> list[str]:
    ids = []
    with Ledger(Path(path)) as ledger:
        for i in range(30):
            job, _ = ledger.submit(Identity("in", f"key-{i}", None, "e"))
            ids.append(job.id)
    return ids


def test_concurrent_submitters_in_separate_processes(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    Ledger(path).close()
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.starmap(_submit_many, [(str(path), n) for n in range(4)])
    assert all(r == results[0] for r in results)
    with Ledger(path) as ledger:
        assert len(ledger.list_jobs()) == 30


def test_processorctl_submit_works_with_the_daemon_down(short_tmp: Path) -> None:
    config = write_config(short_tmp)
    done = processorctl(config, "submit", "--bucket", "in-bucket", "--key=-rf $(reboot)", "--etag", '"abc"')
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    dup = processorctl(config, "submit", "--bucket", "in-bucket", "--key=-rf $(reboot)", "--etag", "abc",
                       "--json")
    assert dup.returncode == 0 and f'"job_id": "{job_id}"' in dup.stdout and '"created": false' in dup.stdout
    with Ledger(short_tmp / "state" / "ledger" / "ledger.db") as ledger:
        job = ledger.get(job_id)
    assert job.key == "-rf $(reboot)" and job.etag == "abc" and job.state is JobState.QUEUED


def test_a_version_1_ledger_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE jobs (id TEXT PRIMARY KEY, bucket TEXT NOT NULL, key TEXT NOT NULL,
            version TEXT NOT NULL, version_id TEXT, etag TEXT, state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, updated_at REAL NOT NULL,
            next_attempt_at REAL NOT NULL DEFAULT 0, phase TEXT NOT NULL DEFAULT '',
            bytes_total INTEGER NOT NULL DEFAULT 0, bytes_done INTEGER NOT NULL DEFAULT 0,
            exit_code INTEGER, error TEXT, stderr_tail TEXT, started_at REAL, finished_at REAL,
            result_prefix TEXT, UNIQUE (bucket, key, version));
        CREATE TABLE transitions (seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL,
            from_state TEXT, to_state TEXT NOT NULL, at REAL NOT NULL, attempt INTEGER NOT NULL,
            reason TEXT);
        INSERT INTO jobs (id, bucket, key, version, state, attempts, created_at, updated_at)
            VALUES ('j-old', 'b', 'k', 'e:x', 'queued', 2, 1.0, 1.0);
        PRAGMA user_version = 1;
    """)
    old.close()
    with Ledger(path) as ledger:
        job = ledger.get("j-old")
        assert job.attempts == 2 and job.counted_attempts == 0 and job.state is JobState.QUEUED
        assert job.origin == "local"  # schema 3: jobs of older ledgers came from processorctl
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_progress_a_ledger_cannot_take_is_dropped_with_a_warning(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    """Progress is for display: a ledger that refuses the write (full disk, read-only)
    must not fail the transfer reporting it; transitions still raise LedgerError."""
    job, _ = ledger.submit(Identity("in", "k", None, "e"))
    ledger.claim_next()
    ledger._db.execute("PRAGMA query_only=ON")
    with caplog.at_level("WARNING", logger="processor.ledger"):
        ledger.set_progress(job.id, phase=Phase.UPLOADING, bytes_total=5)
    assert "progress_not_recorded" in caplog.text and ledger._progress == {}
    with pytest.raises(LedgerError):
        ledger.transition(job.id, JobState.SUCCEEDED, expect=JobState.RUNNING)
    ledger._db.execute("PRAGMA query_only=OFF")
    assert ledger.get(job.id).phase is Phase.NONE
