"""The ledger's operations for work-queue jobs (mixed into ``worker.ledger.Ledger``).

A queue job (``origin`` 'queue') exists in this ledger so that processorctl
shows it and its transitions are recorded, but the queue, not the ledger, is
its durable record: it runs only while this daemon holds its message, the
local dispatch never claims it, and after a restart it is handed back (left
queued) for its message to come back through the queue rather than run again
from here — so one job never runs on two instances at once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from worker.identity import Identity
from worker.ledger_schema import ORIGIN_QUEUE, job_from_row
from worker.states import JobState, Phase

if TYPE_CHECKING:
    from worker.job import Job


class QueueJobs:
    """Claiming a job for a received message, and handing queue jobs back on start."""

    if TYPE_CHECKING:
        _clock: Callable[[], float]

        def _write(self, *, durable: bool = True) -> AbstractContextManager[sqlite3.Connection]: ...

        @staticmethod
        def _row(db: sqlite3.Connection, job_id: str) -> sqlite3.Row: ...

        @staticmethod
        def _row_by_identity(db: sqlite3.Connection, identity: Identity) -> sqlite3.Row | None: ...

        @staticmethod
        def _log(db: sqlite3.Connection, job_id: str, current: JobState | None, target: JobState,
                 at: float, attempt: int, reason: str | None) -> None: ...

        def _move(self, db: sqlite3.Connection, row: sqlite3.Row, target: JobState,
                  values: Mapping[str, Any], reason: str | None, at: float, *,
                  attempt: int | None = None, expect: JobState | None = None) -> None: ...

    def claim_for_message(self, identity: Identity, attempts: int,
                          counted_attempts: int) -> tuple[Job, bool]:
        """Run the identity's job here for a message whose fleet claim this daemon won: ``(job, True)``.

        The ledger holds each identity once: a job already queued (handed back
        earlier, or submitted locally and not yet started) is the one claimed;
        one that failed or was cancelled here earlier is queued again first
        (the fleet record, which decides, says it runs again). ``attempts`` and
        ``counted_attempts`` come from the fleet record: they are the job's,
        fleet-wide, whatever instance spent them. ``(job, False)`` when the job
        is running here already or succeeded here.
        Committed without an fsync (as ``claim_next``): the message and the
        fleet record, not this row, are the job's durable record.
        """

        now = self._clock()
        with self._write(durable=False) as db:
            row = self._row_by_identity(db, identity)
            if row is None:
                job_id = identity.job_id()
                db.execute(
                    "INSERT INTO jobs (id, bucket, key, version, version_id, etag, state,"
                    " created_at, updated_at, origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (job_id, identity.bucket, identity.key, identity.version, identity.version_id,
                     identity.etag, JobState.QUEUED.value, now, now, ORIGIN_QUEUE),
                )
                self._log(db, job_id, None, JobState.QUEUED, now, 0, "received from the work queue")
            else:
                job_id = row["id"]
                state = JobState(row["state"])
                if state in (JobState.FAILED, JobState.CANCELLED):
                    self._move(db, row, JobState.QUEUED, {"next_attempt_at": now},
                               "claimed again through the fleet record", now)
                elif state is not JobState.QUEUED:
                    return job_from_row(row), False
            self._move(
                db, self._row(db, job_id), JobState.RUNNING,
                {"attempts": max(attempts, 1), "counted_attempts": counted_attempts,
                 "origin": ORIGIN_QUEUE, "started_at": now, "finished_at": None,
                 "phase": Phase.NONE.value, "bytes_done": 0, "bytes_total": 0, "bytes_in": 0,
                 "bytes_out": 0, "next_attempt_at": now},
                f"claimed for a work-queue message (fleet attempt {attempts}, "
                f"{counted_attempts} counted)", now,
            )
            return job_from_row(self._row(db, job_id)), True

    def hand_back_queue_jobs(self, reason: str) -> list[Job]:
        """On start: queue jobs a crash left running go back to queued, not to be run from here.

        Their messages come back through the queue once their lease runs out
        (to this instance or another); a later message claims the same row.
        """

        now = self._clock()
        with self._write() as db:
            rows = db.execute(
                "SELECT * FROM jobs WHERE state = ? AND origin = ?",
                (JobState.RUNNING.value, ORIGIN_QUEUE),
            ).fetchall()
            for row in rows:
                self._move(db, row, JobState.QUEUED, {"phase": Phase.NONE.value, "next_attempt_at": now},
                           reason, now)
            return [job_from_row(self._row(db, row["id"])) for row in rows]
