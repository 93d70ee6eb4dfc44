"""Every state write in the ledger goes through one checked move (worker.state.schema.move_row).

Behavioural: each operation that changes a state refuses a move the
transition table forbids (the table is narrowed for the test) and leaves the
ledger as it was. Structural: no other code in worker/ writes the state column.
"""

from __future__ import annotations

import ast
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import worker
from worker.errors import InvalidTransition
from worker.jobs import states
from worker.jobs.identity import Identity
from worker.jobs.states import JobState
from worker.state.ledger import Ledger
from worker.state.queue import QueueLedger
from worker.state.schema import SCHEMA_VERSION, move_row, update_row

Q, R, S, F, C = (JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED,
                 JobState.CANCELLED)
IDENT = Identity("in", "k", None, "e")


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger(tmp_path / "ledger.db", clock=lambda: 1000.0) as opened:
        yield opened


def _snapshot(ledger: Ledger) -> list[list[tuple[object, ...]]]:
    return [[tuple(r) for r in ledger._db.execute(f"SELECT * FROM {table} ORDER BY rowid")]
            for table in ("jobs", "transitions")]


def _queued(ledger: Ledger) -> None:
    ledger.submit(IDENT)


def _running(ledger: Ledger) -> None:
    ledger.submit(IDENT)
    assert ledger.claim_next() is not None


def _failed(ledger: Ledger) -> None:
    _running(ledger)
    ledger.transition(IDENT.job_id(), F, expect=R, error="x")


def _running_from_queue(ledger: Ledger) -> None:
    assert QueueLedger(ledger).claim_for_message(IDENT, 1, 0)[1]


Operation = tuple[Callable[[Ledger], None], tuple[JobState, JobState], Callable[[Ledger], object]]

#: operation -> (set-up, the move it makes, the operation).
OPERATIONS: dict[str, Operation] = {
    "claim_next": (_queued, (Q, R), lambda led: led.claim_next()),
    "transition": (_running, (R, S), lambda led: led.transition(IDENT.job_id(), S, expect=R)),
    "retry": (_failed, (F, Q), lambda led: led.retry(IDENT.job_id())),
    "requeue_interrupted": (_running, (R, Q), lambda led: led.requeue_interrupted("restarted")),
    "claim_for_message": (_queued, (Q, R), lambda led: QueueLedger(led).claim_for_message(IDENT, 2, 1)),
    "hand_back": (_running_from_queue, (R, Q), lambda led: QueueLedger(led).hand_back("restarted")),
}


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_each_operation_refuses_a_move_the_table_forbids(
    name: str, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_up, (current, target), operation = OPERATIONS[name]
    set_up(ledger)
    before = _snapshot(ledger)
    assert ledger.get(IDENT.job_id()).state is current
    monkeypatch.setitem(states._NEXT, current, states._NEXT[current] - {target})  # type: ignore[index]
    with pytest.raises(InvalidTransition) as info:
        operation(ledger)
    assert current.value in str(info.value) and target.value in str(info.value)
    assert _snapshot(ledger) == before  # nothing written, not even the history


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_each_operation_makes_its_move_when_the_table_allows_it(name: str, ledger: Ledger) -> None:
    set_up, (current, target), operation = OPERATIONS[name]
    set_up(ledger)
    operation(ledger)
    assert ledger.get(IDENT.job_id()).state is target
    last = ledger.history(IDENT.job_id())[-1]
    assert (last["from_state"], last["to_state"]) == (current.value, target.value)


def test_a_message_for_a_new_object_is_not_recorded_when_its_claim_is_refused(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(states._NEXT, Q, states._NEXT[Q] - {R})  # type: ignore[index]
    with pytest.raises(InvalidTransition):
        QueueLedger(ledger).claim_for_message(IDENT, 1, 0)
    assert ledger.find(IDENT) is None


def test_move_row_checks_the_table_and_the_current_state(ledger: Ledger) -> None:
    ledger.submit(IDENT)
    db = ledger._db
    with pytest.raises(InvalidTransition):
        move_row(db, IDENT.job_id(), Q, S, {})
    with pytest.raises(worker.errors.LedgerError, match="no longer running"):
        move_row(db, IDENT.job_id(), R, Q, {})  # legal, but the row is queued
    assert ledger.get(IDENT.job_id()).state is Q


def test_update_row_never_writes_a_state(ledger: Ledger) -> None:
    ledger.submit(IDENT)
    with pytest.raises(ValueError, match="move_row"):
        update_row(ledger._db, IDENT.job_id(), {"state": S.value})
    assert ledger.get(IDENT.job_id()).state is Q


def _sql_writes_to_jobs() -> dict[str, list[str]]:
    """Every function in worker/ with an ``UPDATE jobs`` statement: {module:function: [sql]}."""
    found: dict[str, list[str]] = {}
    root = Path(worker.__file__).parent
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                text = _text(node)
                if text is not None and "update jobs" in " ".join(text.lower().split()):
                    found.setdefault(f"{path.relative_to(root)}:{func.name}", []).append(text)
    return found


def _text(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values
                       if isinstance(v, (ast.Constant, ast.FormattedValue)))  # type: ignore[misc]
    return None


def test_only_the_checked_move_writes_the_state_column() -> None:
    writes = _sql_writes_to_jobs()
    assert set(writes) == {"state/schema.py:move_row", "state/schema.py:update_row"}, writes
    # update_row's columns are its caller's (it refuses "state"); move_row's only from the current state.
    assert any("WHERE id = ? AND state = ?" in sql for sql in writes["state/schema.py:move_row"])


def test_a_version_3_ledger_migrates_and_keeps_its_jobs(tmp_path: Path) -> None:
    """Schema 4 renames retries_used to counted_attempts and adds the byte counts."""
    path = tmp_path / "v3.db"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE jobs (id TEXT PRIMARY KEY, bucket TEXT NOT NULL, key TEXT NOT NULL,
            version TEXT NOT NULL, version_id TEXT, etag TEXT, state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0, retries_used INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL, updated_at REAL NOT NULL,
            next_attempt_at REAL NOT NULL DEFAULT 0, phase TEXT NOT NULL DEFAULT '',
            bytes_total INTEGER NOT NULL DEFAULT 0, bytes_done INTEGER NOT NULL DEFAULT 0,
            exit_code INTEGER, error TEXT, stderr_tail TEXT, started_at REAL, finished_at REAL,
            result_prefix TEXT, origin TEXT NOT NULL DEFAULT 'local', UNIQUE (bucket, key, version));
        CREATE INDEX jobs_by_state ON jobs (state, next_attempt_at, created_at);
        CREATE TABLE transitions (seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL
            REFERENCES jobs (id), from_state TEXT, to_state TEXT NOT NULL, at REAL NOT NULL,
            attempt INTEGER NOT NULL, reason TEXT);
        INSERT INTO jobs (id, bucket, key, version, etag, state, attempts, retries_used,
            created_at, updated_at, error, origin)
            VALUES ('j-old', 'b', 'k', 'e:x', 'x', 'queued', 4, 2, 1.0, 1.0, 'exit 75', 'queue');
        INSERT INTO transitions (job_id, from_state, to_state, at, attempt, reason)
            VALUES ('j-old', NULL, 'queued', 1.0, 0, 'submitted');
        PRAGMA user_version = 3;
    """)
    old.close()
    with Ledger(path, clock=lambda: 2.0) as ledger:
        job = ledger.get("j-old")
        assert (job.state, job.attempts, job.counted_attempts, job.error, job.origin) == (
            Q, 4, 2, "exit 75", "queue")
        assert (job.bytes_in, job.bytes_out) == (0, 0)
        assert [h["reason"] for h in ledger.history("j-old")] == ["submitted"]
        # The migrated ledger works: the old job runs and records its byte counts.
        QueueLedger(ledger).claim_for_message(Identity("b", "k", None, "x"), 5, 4)
        done = ledger.transition("j-old", S, expect=R, bytes_in=7, bytes_out=3)
        assert (done.bytes_in, done.bytes_out, done.counted_attempts) == (7, 3, 4)
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5


def test_a_claim_starts_the_byte_counts_of_the_new_attempt_at_zero(ledger: Ledger) -> None:
    _running(ledger)
    ledger.transition(IDENT.job_id(), Q, expect=R, bytes_in=9, bytes_out=0)
    claimed = ledger.claim_next()
    assert claimed is not None and (claimed.bytes_in, claimed.bytes_out) == (0, 0)
