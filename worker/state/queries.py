"""The ledger's read side: jobs, counts and histories (``LedgerReader``, which
``worker.state.ledger.Ledger`` extends with the writes).

Queries use a reading connection of their own (WAL readers never wait for a
writer), opened on first use: ``processorctl submit`` never needs it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.errors import LedgerError
from worker.jobs.identity import Identity
from worker.jobs.states import JobState
from worker.state.schema import ORIGIN_LOCAL, connect, job_from_row, select_row, select_row_by_identity

if TYPE_CHECKING:
    from worker.jobs.job import Job


class LedgerReader:
    """Reading jobs back: one, by identity, by state, counts, what is due, histories."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()

    def close(self) -> None:
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._read_lock:
            if self._reader is None:
                try:
                    self._reader = connect(self.path)
                except sqlite3.Error as exc:
                    raise LedgerError(f"cannot open ledger {self.path}: {exc}") from exc
            yield self._reader

    def get(self, job_id: str) -> Job:
        with self._reading() as db:
            return job_from_row(select_row(db, job_id))

    def find(self, identity: Identity) -> Job | None:
        with self._reading() as db:
            row = select_row_by_identity(db, identity)
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

    def select_jobs(
        self, *, states: Collection[JobState] = (), bucket: str | None = None, key_prefix: str = "",
        since: float | None = None, until: float | None = None, limit: int | None = None,
    ) -> list[Job]:
        """Jobs matching every filter given, newest first (by submission time).

        ``since``/``until`` bound the submission time; ``key_prefix`` matches the
        start of the key. Each filter has an index (worker.state.schema), so a
        page of the newest jobs stays quick in a ledger of 100,000.
        """
        where, args = _where(states, bucket, key_prefix, since, until)
        sql = f"SELECT * FROM jobs WHERE {where} ORDER BY created_at DESC, id DESC"  # noqa: S608
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with self._reading() as db:
            return [job_from_row(r) for r in db.execute(sql, args)]

    def count_jobs(
        self, *, states: Collection[JobState] = (), bucket: str | None = None, key_prefix: str = "",
        since: float | None = None, until: float | None = None,
    ) -> int:
        """How many jobs ``select_jobs`` with the same filters would return without a limit."""
        where, args = _where(states, bucket, key_prefix, since, until)
        with self._reading() as db:
            return int(db.execute(f"SELECT COUNT(*) FROM jobs WHERE {where}", args).fetchone()[0])  # noqa: S608

    def ids_starting_with(self, prefix: str, limit: int = 10) -> list[str]:
        """Job ids that start with ``prefix`` (at most ``limit``), in order."""
        low, high = _prefix_range(prefix)
        with self._reading() as db:
            rows = db.execute("SELECT id FROM jobs WHERE id >= ? AND (? IS NULL OR id < ?)"
                              " AND substr(id, 1, ?) = ? ORDER BY id LIMIT ?",
                              (low, high, high, len(prefix), prefix, limit))
            return [r["id"] for r in rows]

    def jobs_of_object(self, bucket: str, key: str) -> list[Job]:
        """Every job (one per version) of the object ``s3://bucket/key``, newest first."""
        with self._reading() as db:
            rows = db.execute("SELECT * FROM jobs WHERE bucket = ? AND key = ?"
                              " ORDER BY created_at DESC, id DESC", (bucket, key))
            return [job_from_row(r) for r in rows]

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
            select_row(db, job_id)  # JobNotFound for an unknown id
            rows = db.execute(
                "SELECT from_state, to_state, at, attempt, reason FROM transitions"
                " WHERE job_id = ? ORDER BY seq", (job_id,),
            )
            return [dict(r) for r in rows]


def _prefix_range(prefix: str) -> tuple[str, str | None]:
    """``[low, high)`` holding every text that starts with ``prefix`` (high None: no bound).

    SQLite compares text by its UTF-8 bytes, which orders like code points, so
    the bound is the prefix with its last character's successor.
    """
    if not prefix:
        return "", None
    last = ord(prefix[-1])
    if last >= 0x10FFFF or 0xD7FF <= last < 0xE000:
        return prefix, None  # no encodable successor: the range stays open (substr decides)
    return prefix, prefix[:-1] + chr(last + 1)


def _where(
    states: Collection[JobState], bucket: str | None, key_prefix: str,
    since: float | None, until: float | None,
) -> tuple[str, list[Any]]:
    clauses, args = ["1"], list[Any]()
    if states:
        clauses.append(f"state IN ({', '.join('?' * len(states))})")
        args += [state.value for state in states]
    if bucket is not None:
        clauses.append("bucket = ?")
        args.append(bucket)
    if key_prefix:
        low, high = _prefix_range(key_prefix)
        clauses.append("key >= ?")
        args.append(low)
        if high is not None:
            clauses.append("key < ?")
            args.append(high)
        clauses.append("substr(key, 1, ?) = ?")
        args += [len(key_prefix), key_prefix]
    if since is not None:
        clauses.append("created_at >= ?")
        args.append(since)
    if until is not None:
        clauses.append("created_at < ?")
        args.append(until)
    return " AND ".join(clauses), args
