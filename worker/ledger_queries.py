"""The ledger's read side: jobs, counts and histories (mixed into ``worker.ledger.Ledger``).

Queries use the ledger's reading connection (WAL readers never wait for a
writer); the two row look-ups are shared with the write side.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from worker.errors import JobNotFound
from worker.identity import Identity
from worker.ledger_schema import ORIGIN_LOCAL, job_from_row
from worker.states import JobState

if TYPE_CHECKING:
    from worker.job import Job


class JobQueries:
    """Reading jobs back: one, by identity, by state, counts, what is due, histories."""

    if TYPE_CHECKING:
        def _reading(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def get(self, job_id: str) -> Job:
        with self._reading() as db:
            return job_from_row(self._row(db, job_id))

    def find(self, identity: Identity) -> Job | None:
        with self._reading() as db:
            row = self._row_by_identity(db, identity)
            return None if row is None else job_from_row(row)

    def list_jobs(
        self, state: JobState | None = None, limit: int | None = None, origin: str | None = None
    ) -> list[Job]:
        sql = "SELECT * FROM jobs WHERE 1"
        args: list[Any] = []
        if state is not None:
            sql += " AND state = ?"
            args.append(state.value)
        if origin is not None:
            sql += " AND origin = ?"
            args.append(origin)
        sql += " ORDER BY created_at, id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with self._reading() as db:
            return [job_from_row(r) for r in db.execute(sql, args)]

    def counts(self) -> dict[str, int]:
        with self._reading() as db:
            rows = db.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
            found = {r["state"]: r["n"] for r in rows}
        return {s.value: found.get(s.value, 0) for s in JobState}

    def next_due_at(self) -> float | None:
        """When the earliest queued job becomes due (None when the queue is empty)."""
        with self._reading() as db:
            row = db.execute(
                "SELECT MIN(next_attempt_at) AS t FROM jobs WHERE state = ? AND origin = ?",
                (JobState.QUEUED.value, ORIGIN_LOCAL),
            ).fetchone()
        return None if row["t"] is None else float(row["t"])

    def has_failed(self, bucket: str, key: str) -> bool:
        """Whether any job for this object key (any version) has ever ended failed here.

        Only a failure writes ``_failed.json``, so a success need not delete one
        unless this is true.
        """
        with self._reading() as db:
            row = db.execute(
                "SELECT 1 FROM jobs j JOIN transitions t ON t.job_id = j.id"
                " WHERE j.bucket = ? AND j.key = ? AND t.to_state = ? LIMIT 1",
                (bucket, key, JobState.FAILED.value),
            ).fetchone()
        return row is not None

    def history(self, job_id: str) -> list[Mapping[str, Any]]:
        with self._reading() as db:
            self._row(db, job_id)
            rows = db.execute(
                "SELECT from_state, to_state, at, attempt, reason FROM transitions"
                " WHERE job_id = ? ORDER BY seq", (job_id,),
            )
            return [dict(r) for r in rows]

    @staticmethod
    def _row(db: sqlite3.Connection, job_id: str) -> sqlite3.Row:
        row: sqlite3.Row | None = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return row

    @staticmethod
    def _row_by_identity(db: sqlite3.Connection, identity: Identity) -> sqlite3.Row | None:
        row: sqlite3.Row | None = db.execute(
            "SELECT * FROM jobs WHERE bucket = ? AND key = ? AND version = ?",
            (identity.bucket, identity.key, identity.version),
        ).fetchone()
        return row
