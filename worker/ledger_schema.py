"""The ledger's tables, and the steps that bring an older ledger up to date.

``worker.ledger`` calls ``migrate`` inside a write transaction when a ledger's
``user_version`` is not ``SCHEMA_VERSION``: a new file gets the whole schema,
an older one each step from its version on, and a newer one is refused.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from worker.errors import LedgerError

#: Bumped whenever the schema changes; older ledgers are migrated on open.
SCHEMA_VERSION = 3

#: Steps from each older schema version to the next (applied in order on open).
_MIGRATIONS: dict[int, str] = {
    1: "ALTER TABLE jobs ADD COLUMN retries_used INTEGER NOT NULL DEFAULT 0",
    # Where the job came from: 'local' (processorctl submit, dispatched from the
    # ledger) or 'queue' (a work-queue message; runs only while its message is held).
    2: "ALTER TABLE jobs ADD COLUMN origin TEXT NOT NULL DEFAULT 'local'",
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
    retries_used    INTEGER NOT NULL DEFAULT 0,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    phase           TEXT NOT NULL DEFAULT '',
    bytes_total     INTEGER NOT NULL DEFAULT 0,
    bytes_done      INTEGER NOT NULL DEFAULT 0,
    exit_code       INTEGER,
    error           TEXT,
    stderr_tail     TEXT,
    started_at      REAL,
    finished_at     REAL,
    result_prefix   TEXT,
    origin          TEXT NOT NULL DEFAULT 'local',
    UNIQUE (bucket, key, version)
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, next_attempt_at, created_at);
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
            db.execute(_MIGRATIONS[step])
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
