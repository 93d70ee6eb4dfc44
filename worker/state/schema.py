"""The ledger's tables, the steps that bring an older ledger up to date, rows <-> jobs,
the only two writes of a job row: ``move_row`` (the checked state change)
and ``update_row`` (every other column), and ``Transaction``: what every
writer of the ledger (``worker.state.ledger``, ``worker.state.queue``) does inside
one write transaction.

``worker.state.ledger`` calls ``migrate`` inside a write transaction when a ledger's
``user_version`` is not ``SCHEMA_VERSION``: a new file gets the whole schema,
an older one each step from its version on, and a newer one is refused.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.errors import InvalidTransition, JobNotFound, LedgerError
from worker.jobs.states import JobState, Phase, check_transition

if TYPE_CHECKING:
    from worker.jobs.identity import Identity
    from worker.jobs.job import Job

#: Bumped whenever the schema changes; older ledgers are migrated on open.
SCHEMA_VERSION = 5

#: Steps from each older schema version to the next (applied in order on open).
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: ("ALTER TABLE jobs ADD COLUMN retries_used INTEGER NOT NULL DEFAULT 0",),
    # Where the job came from: 'local' (processorctl submit, dispatched from the
    # ledger) or 'queue' (a work-queue message; runs only while its message is held).
    2: ("ALTER TABLE jobs ADD COLUMN origin TEXT NOT NULL DEFAULT 'local'",),
    # retries_used counted attempts (the last one too), not retries: named for
    # what it counts. The byte counts of the last attempt moved out of Job.extra.
    3: (
        "ALTER TABLE jobs RENAME COLUMN retries_used TO counted_attempts",
        "ALTER TABLE jobs ADD COLUMN bytes_in INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN bytes_out INTEGER NOT NULL DEFAULT 0",
    ),
    # When the running job entered its phase (for a transfer's rate and ETA), the
    # indexes `processorctl list` filters and sorts on (newest first, by state, by
    # key), and what the command of the last attempt that ran used (NULL: it never ran).
    4: (
        "ALTER TABLE jobs ADD COLUMN phase_started_at REAL",
        "CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created_at, id)",
        "CREATE INDEX IF NOT EXISTS jobs_by_state_created ON jobs (state, created_at, id)",
        "CREATE INDEX IF NOT EXISTS jobs_by_key ON jobs (key, created_at)",
        "ALTER TABLE jobs ADD COLUMN cpu_s REAL",
        "ALTER TABLE jobs ADD COLUMN peak_memory_bytes INTEGER",
    ),
}

#: Values of jobs.origin.
ORIGIN_LOCAL = "local"
ORIGIN_QUEUE = "queue"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id              TEXT PRIMARY KEY,
    bucket          TEXT NOT NULL,
    key             TEXT NOT NULL,
    version         TEXT NOT NULL,
    version_id      TEXT,
    etag            TEXT,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    counted_attempts INTEGER NOT NULL DEFAULT 0,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    phase           TEXT NOT NULL DEFAULT '',
    bytes_total     INTEGER NOT NULL DEFAULT 0,
    bytes_done      INTEGER NOT NULL DEFAULT 0,
    bytes_in        INTEGER NOT NULL DEFAULT 0,
    bytes_out       INTEGER NOT NULL DEFAULT 0,
    exit_code       INTEGER,
    error           TEXT,
    stderr_tail     TEXT,
    started_at      REAL,
    finished_at     REAL,
    result_prefix   TEXT,
    origin          TEXT NOT NULL DEFAULT 'local',
    phase_started_at REAL,
    cpu_s           REAL,
    peak_memory_bytes INTEGER,
    UNIQUE (bucket, key, version)
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, next_attempt_at, created_at);
CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created_at, id);
CREATE INDEX IF NOT EXISTS jobs_by_state_created ON jobs (state, created_at, id);
CREATE INDEX IF NOT EXISTS jobs_by_key ON jobs (key, created_at);
CREATE TABLE IF NOT EXISTS transitions (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id     TEXT NOT NULL REFERENCES jobs (id),
    from_state TEXT,
    to_state   TEXT NOT NULL,
    at         REAL NOT NULL,
    attempt    INTEGER NOT NULL,
    reason     TEXT
);
CREATE INDEX IF NOT EXISTS transitions_by_job ON transitions (job_id, seq);
"""


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Create or upgrade the schema; the caller holds a write transaction."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise LedgerError(
            f"ledger {path} has schema {version}, newer than this "
            f"processor ({SCHEMA_VERSION}); refusing to touch it"
        )
    if version == 0:
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
    else:
        for step in range(version, SCHEMA_VERSION):
            for statement in _MIGRATIONS[step]:
                db.execute(statement)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def move_row(
    db: sqlite3.Connection, job_id: str, current: JobState, target: JobState,
    values: Mapping[str, Any],
) -> None:
    """Move the job's row from ``current`` to ``target`` and set ``values``: the one state write.

    Raises InvalidTransition unless the transition table allows the move; the
    row must still be in ``current`` (the caller read it in this transaction).
    """
    check_transition(job_id, current, target)
    columns = ", ".join(f"{name} = ?" for name in ("state", *values))
    # Column names come from the ledger's writers (Transaction.move's callers), never from input.
    cursor = db.execute(f"UPDATE jobs SET {columns} WHERE id = ? AND state = ?",  # noqa: S608
                        (target.value, *values.values(), job_id, current.value))
    if cursor.rowcount != 1:
        raise LedgerError(f"job {job_id} is no longer {current.value}; not moved to {target.value}")


def update_row(
    db: sqlite3.Connection, job_id: str, values: Mapping[str, Any], *, state: JobState | None = None
) -> None:
    """Set ``values`` on the job's row (only if it is in ``state``, when given); never its state."""
    if "state" in values:
        raise ValueError(f"job {job_id}: a state is changed only by move_row, which checks it")
    columns = ", ".join(f"{name} = ?" for name in values)
    # Column names come from this module, never from input.
    if state is None:
        db.execute(f"UPDATE jobs SET {columns} WHERE id = ?", (*values.values(), job_id))  # noqa: S608
    else:
        db.execute(f"UPDATE jobs SET {columns} WHERE id = ? AND state = ?",  # noqa: S608
                   (*values.values(), job_id, state.value))


def job_from_row(row: sqlite3.Row) -> Job:
    # Imported here: worker.jobs.job needs dataclasses, and `processorctl submit`
    # (Ledger.enqueue) starts faster without it.
    from worker.jobs.job import Job

    return Job(
        id=row["id"], bucket=row["bucket"], key=row["key"], version_id=row["version_id"],
        etag=row["etag"], state=JobState(row["state"]), attempts=row["attempts"],
        counted_attempts=row["counted_attempts"],
        created_at=row["created_at"], updated_at=row["updated_at"],
        next_attempt_at=row["next_attempt_at"], phase=Phase(row["phase"]),
        bytes_total=row["bytes_total"], bytes_done=row["bytes_done"],
        bytes_in=row["bytes_in"], bytes_out=row["bytes_out"],
        exit_code=row["exit_code"], error=row["error"], stderr_tail=row["stderr_tail"],
        started_at=row["started_at"], finished_at=row["finished_at"],
        result_prefix=row["result_prefix"], origin=row["origin"],
        phase_started_at=row["phase_started_at"],
        cpu_s=row["cpu_s"], peak_memory_bytes=row["peak_memory_bytes"],
    )


def connect(path: Path) -> sqlite3.Connection:
    """A connection to the ledger file (the writer's, or a reader's)."""
    # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a writer
    # takes the lock up front instead of failing on upgrade mid-transaction.
    db = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    return db


def select_row(db: sqlite3.Connection, job_id: str) -> sqlite3.Row:
    """The job's row; JobNotFound when there is none."""
    row: sqlite3.Row | None = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise JobNotFound(job_id)
    return row


def select_row_by_identity(db: sqlite3.Connection, identity: Identity) -> sqlite3.Row | None:
    """The row of the identity's job (the ledger holds each identity once), if any."""
    row: sqlite3.Row | None = db.execute(
        "SELECT * FROM jobs WHERE bucket = ? AND key = ? AND version = ?",
        (identity.bucket, identity.key, identity.version),
    ).fetchone()
    return row


class Transaction:
    """One write transaction of the ledger (``worker.state.ledger.Ledger.transaction``).

    Every job it inserts or moves is logged in ``transitions`` at ``now``, and
    every move is checked against the transition table (``move_row``).
    """

    def __init__(self, db: sqlite3.Connection, now: float) -> None:
        #: The ledger's writing connection, inside ``BEGIN IMMEDIATE``.
        self.db = db
        #: When this transaction's changes happen (read once, before it began).
        self.now = now

    def row(self, job_id: str) -> sqlite3.Row:
        return select_row(self.db, job_id)

    def row_by_identity(self, identity: Identity) -> sqlite3.Row | None:
        return select_row_by_identity(self.db, identity)

    def job(self, job_id: str) -> Job:
        """The job as this transaction leaves it."""
        return job_from_row(self.row(job_id))

    def insert(self, identity: Identity, reason: str, *, origin: str = ORIGIN_LOCAL) -> str:
        """Record a new queued job for ``identity``; its id."""
        job_id = identity.job_id()
        self.db.execute(
            "INSERT INTO jobs (id, bucket, key, version, version_id, etag, state,"
            " created_at, updated_at, origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (job_id, identity.bucket, identity.key, identity.version, identity.version_id,
             identity.etag, JobState.QUEUED.value, self.now, self.now, origin),
        )
        self._log(job_id, None, JobState.QUEUED, 0, reason)
        return job_id

    def move(
        self, row: sqlite3.Row, target: JobState, values: Mapping[str, Any], reason: str | None,
        *, attempt: int | None = None, expect: JobState | None = None,
    ) -> None:
        """Every state change of a job: checked against the table, written, and logged in ``transitions``.

        ``row`` is the job as read in this transaction; ``expect`` guards against
        races (the move only happens from that state); ``attempt`` is the number
        the history records (default: ``attempts`` after the move).
        """
        current = JobState(row["state"])
        if expect is not None and current is not expect:
            raise InvalidTransition(row["id"], current.value, target.value)
        move_row(self.db, row["id"], current, target, {"updated_at": self.now, **values})
        if attempt is None:
            attempt = values.get("attempts", row["attempts"])
        self._log(row["id"], current, target, attempt, reason)

    def _log(self, job_id: str, current: JobState | None, target: JobState, attempt: int,
             reason: str | None) -> None:
        self.db.execute(
            "INSERT INTO transitions (job_id, from_state, to_state, at, attempt, reason)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (job_id, None if current is None else current.value, target.value, self.now, attempt, reason),
        )
