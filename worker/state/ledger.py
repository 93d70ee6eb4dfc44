"""The job ledger: SQLite in WAL mode on the state volume.

Every state change is one ``BEGIN IMMEDIATE`` transaction that updates the job
row and appends to ``transitions``, committed before the step it announces
starts, and fsync'd (``synchronous=FULL``) except a claim and progress (see
``claim_next``). ``processorctl submit`` writes here directly, so a job is
durable even while the daemon is stopped; the daemon and processorctl are
separate processes and SQLite's locking serialises them.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from worker.errors import InvalidTransition, LedgerError
from worker.jobs.identity import Identity
from worker.jobs.states import JobState, Phase
from worker.state.dirs import make_dirs
from worker.state.queries import LedgerReader
from worker.state.schema import (
    ORIGIN_LOCAL,
    SCHEMA_VERSION,
    Transaction,
    connect,
    job_from_row,
    migrate,
    update_row,
)

if TYPE_CHECKING:
    # Imported where a Job is built (worker.state.schema.job_from_row): worker.jobs.job needs ``dataclasses``,
    # and ``processorctl submit`` (``Ledger.enqueue``) starts faster without it.
    from worker.jobs.job import Job

_UPDATABLE = frozenset(
    {
        "next_attempt_at", "phase", "bytes_total", "bytes_done", "exit_code", "error",
        "stderr_tail", "started_at", "finished_at", "result_prefix", "etag", "version_id",
        "counted_attempts", "bytes_in", "bytes_out", "phase_started_at", "cpu_s",
        "peak_memory_bytes",
    }
)


class Enqueued(NamedTuple):
    """What ``Ledger.enqueue`` recorded, or found already recorded."""

    job_id: str
    state: JobState
    created: bool


class Ledger(LedgerReader):
    """Durable record of every job and every transition: the read side
    (``worker.state.queries.LedgerReader``) and the writes.

    Jobs from a work queue (``origin`` 'queue') are claimed and handed back by
    ``worker.state.queue.QueueLedger``, which holds a Ledger, and never claimed
    by ``claim_next``: they run only while their message is held. Every write
    is one ``transaction``, and every state change in it goes through
    ``Transaction.move`` (and so ``worker.state.schema.move_row``, which checks it).
    """

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(path)
        self._clock = clock
        #: Guards the writing connection; held through each write transaction.
        self._lock = threading.RLock()
        #: Progress waiting to be written: {job id: column values} (see set_progress).
        self._progress: dict[str, dict[str, Any]] = {}
        self._progress_lock = threading.Lock()
        try:
            make_dirs(path.parent)
            self._db = connect(path)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before submit returns 0 or a step starts.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except (sqlite3.Error, OSError) as exc:
            raise LedgerError(f"cannot open ledger {path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._flush_progress()
            self._db.close()
        super().close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions -------------------------------------------------------

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[Transaction]:
        """One write transaction (``_write``) and its checked row operations, all at one time.

        The time is read before the write lock is taken, as every writer here did.
        """
        now = self._clock()
        with self._write(durable=durable) as db:
            yield Transaction(db, now)

    @contextmanager
    def _write(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction under the write lock.

        ``durable``: fsync'd at COMMIT (``synchronous=FULL``). Without it the
        commit is atomic and survives the daemon's death (the WAL is in the page
        cache) but not a power cut until the next durable commit, which fsyncs
        the same WAL.
        """
        try:
            with self._lock:
                if not durable:
                    self._db.execute("PRAGMA synchronous=NORMAL")
                try:
                    try:
                        self._db.execute("BEGIN IMMEDIATE")
                    except sqlite3.Error as exc:
                        raise LedgerError(f"ledger {self.path} is not writable: {exc}") from exc
                    try:
                        yield self._db
                    except sqlite3.Error as exc:
                        self._rollback()
                        raise LedgerError(f"ledger {self.path}: {exc}") from exc
                    except BaseException:
                        self._rollback()
                        raise
                    else:
                        try:
                            self._db.execute("COMMIT")
                        except sqlite3.Error as exc:
                            self._rollback()
                            raise LedgerError(f"ledger {self.path}: commit failed: {exc}") from exc
                finally:
                    if not durable:
                        self._db.execute("PRAGMA synchronous=FULL")
        finally:
            # Progress other threads left while this transaction held the lock.
            self._drain_progress()

    def _rollback(self) -> None:
        # SQLite has already rolled back after some errors (SQLITE_FULL at COMMIT):
        # a second ROLLBACK would raise and hide the real error.
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _migrate(self) -> None:
        # Read first: a reader (processorctl show on a full disk) must not need to write.
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version == SCHEMA_VERSION:
            return
        with self._write() as db:
            migrate(db, self.path)

    # -- commands -----------------------------------------------------------

    def submit(self, identity: Identity) -> tuple[Job, bool]:
        """Record a job for this identity; return it and whether it is new.

        A duplicate submission of the same identity returns the existing job,
        whatever its state: the same object version is processed once.
        """
        row, created = self._submit(identity)
        return job_from_row(row), created

    def enqueue(self, identity: Identity) -> Enqueued:
        """``submit``, answering only what ``processorctl submit`` prints (no Job built)."""
        row, created = self._submit(identity)
        return Enqueued(row["id"], JobState(row["state"]), created)

    def _submit(self, identity: Identity) -> tuple[sqlite3.Row, bool]:
        with self.transaction() as txn:
            row = txn.row_by_identity(identity)
            if row is not None:
                return row, False
            return txn.row(txn.insert(identity, "submitted")), True

    def transition(
        self,
        job_id: str,
        target: JobState,
        *,
        reason: str | None = None,
        expect: JobState | None = None,
        **fields: Any,
    ) -> Job:
        """Move a job to ``target`` (checked against the table) and set ``fields``.

        ``expect`` guards against races: the move only happens from that state.
        """
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        with self.transaction() as txn:
            row = txn.row(job_id)
            attempts = row["attempts"] + (1 if target is JobState.RUNNING else 0)
            values: dict[str, Any] = {"attempts": attempts}
            if target is not JobState.RUNNING:
                values.setdefault("phase", Phase.NONE.value)
            for name, value in fields.items():
                values[name] = value.value if isinstance(value, Phase) else value
            txn.move(row, target, values, reason, expect=expect)
            return txn.job(job_id)

    def claim_next(self) -> Job | None:
        """Move the oldest due queued job to running (attempt counted) and return it.

        The claim is committed without an fsync of its own (see ``_write``): it
        survives a daemon crash, and so the poison-input guard of
        ``requeue_interrupted`` sees it; a power cut before the job's next
        durable commit leaves the job queued, which is where a crash would put a
        running job anyway (only that attempt goes uncounted). Every other
        transition, and every submit, is fsync'd.
        """
        with self.transaction(durable=False) as txn:
            row = txn.db.execute(
                "SELECT id FROM jobs WHERE state = ? AND origin = ? AND next_attempt_at <= ?"
                " ORDER BY next_attempt_at, created_at LIMIT 1",
                (JobState.QUEUED.value, ORIGIN_LOCAL, txn.now),
            ).fetchone()
            if row is None:
                return None
            job_id = row["id"]
            current = txn.row(job_id)
            txn.move(
                current, JobState.RUNNING,
                {
                    "attempts": current["attempts"] + 1, "started_at": txn.now, "finished_at": None,
                    "phase": Phase.NONE.value, "bytes_done": 0, "bytes_total": 0,
                    "bytes_in": 0, "bytes_out": 0, "phase_started_at": None,
                },
                "claimed",
            )
            return txn.job(job_id)

    def retry(self, job_id: str, reason: str = "retry requested by an operator") -> Job:
        """Put a failed or cancelled job back in the queue with a fresh attempt budget.

        It becomes a local job (whatever its origin): no queue message stands
        for it any more, so this daemon's own dispatch runs it.
        """
        with self.transaction() as txn:
            row = txn.row(job_id)
            # Only an ended job: QUEUED -> QUEUED is no move, RUNNING -> QUEUED is the daemon's.
            if JobState(row["state"]) not in (JobState.FAILED, JobState.CANCELLED):
                raise InvalidTransition(job_id, row["state"], JobState.QUEUED.value)
            txn.move(
                row, JobState.QUEUED,
                {"attempts": 0, "counted_attempts": 0, "next_attempt_at": txn.now, "error": None,
                 "exit_code": None, "stderr_tail": None, "finished_at": None, "phase": "",
                 "origin": ORIGIN_LOCAL},
                reason, attempt=0,
            )
            return txn.job(job_id)

    def requeue_interrupted(self, reason: str) -> list[Job]:
        """On start: every local job left running by a crash goes back to the queue.

        Queue jobs are not requeued here but handed back (``QueueLedger.hand_back``).

        The interrupted attempt spends one of the job's retries: an input that
        kills the daemon every time (a poison object) must not loop for ever.
        """
        with self.transaction() as txn:
            ids = [
                r["id"] for r in txn.db.execute(
                    "SELECT id FROM jobs WHERE state = ? AND origin = ?",
                    (JobState.RUNNING.value, ORIGIN_LOCAL),
                )
            ]
            for job_id in ids:
                row = txn.row(job_id)
                txn.move(
                    row, JobState.QUEUED,
                    {"phase": "", "next_attempt_at": txn.now,
                     "counted_attempts": row["counted_attempts"] + 1},
                    reason,
                )
            return [txn.job(job_id) for job_id in ids]

    def set_progress(
        self, job_id: str, *, phase: Phase | None = None,
        bytes_done: int | None = None, bytes_total: int | None = None,
    ) -> None:
        """Record what a running job is doing; not a transition, so not logged.

        Advisory (``requeue_interrupted`` resets it after a crash), so it is
        committed without an fsync of its own, and a ledger that cannot take it
        (full disk) drops it with a warning instead of raising.
        """
        values: dict[str, Any] = {"updated_at": self._clock()}
        if phase is not None:
            values["phase"] = phase.value
            values["phase_started_at"] = values["updated_at"]
        if bytes_done is not None:
            values["bytes_done"] = bytes_done
        if bytes_total is not None:
            values["bytes_total"] = bytes_total
        with self._progress_lock:
            self._progress.setdefault(job_id, {}).update(values)
        self._drain_progress()

    def _drain_progress(self) -> None:
        """Write pending progress unless another thread holds the write lock.

        A job thread never waits behind another job's fsync'd transition just to
        record its phase: whoever holds the lock drains the pending progress when
        it lets go (``_write``), and every writer of progress tries once itself.
        """
        while self._progress and self._lock.acquire(blocking=False):
            try:
                self._flush_progress()
            finally:
                self._lock.release()

    def _flush_progress(self) -> None:
        """One transaction with all pending progress; the caller holds ``_lock``.

        It commits without waiting for the disk (WAL with ``synchronous=NORMAL``):
        atomic, and it survives a daemon crash; the next fsync'd commit makes it
        survive a power cut too. Only rows still running are touched (a job may
        have finished since). A failure (a full disk) drops the values: progress
        is for display only.
        """
        with self._progress_lock:
            pending, self._progress = self._progress, {}
        if not pending:
            return
        try:
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for job_id, values in pending.items():
                    update_row(self._db, job_id, values, state=JobState.RUNNING)
                self._db.execute("COMMIT")
            finally:
                self._rollback()
                self._db.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            import logging  # only on this rare path: processorctl submit starts without it

            logging.getLogger("processor.ledger").warning(
                "progress_not_recorded: %d job(s): %s", len(pending), exc)
