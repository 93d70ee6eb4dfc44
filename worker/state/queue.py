"""The ledger's operations for work-queue jobs: ``QueueLedger``, which holds a ``worker.state.ledger.Ledger``.

A queue job (``origin`` 'queue') exists in this ledger so that processorctl
shows it and its transitions are recorded, but the queue, not the ledger, is
its durable record: it runs only while this daemon holds its message, the
local dispatch never claims it, and after a restart it is handed back (left
queued) for its message to come back through the queue rather than run again
from here — so one job never runs on two instances at once. Built by those
who need it: the fleet consumer (claims) and start-up recovery (hand-backs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from worker.jobs.states import JobState, Phase
from worker.state.schema import ORIGIN_QUEUE, job_from_row

if TYPE_CHECKING:
    from worker.jobs.identity import Identity
    from worker.jobs.job import Job
    from worker.state.ledger import Ledger


class QueueLedger:
    """Claiming a job for a received message, and handing queue jobs back on start."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

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

        with self.ledger.transaction(durable=False) as txn:
            now = txn.now
            row = txn.row_by_identity(identity)
            if row is None:
                job_id = txn.insert(identity, "received from the work queue", origin=ORIGIN_QUEUE)
            else:
                job_id = row["id"]
                state = JobState(row["state"])
                if state in (JobState.FAILED, JobState.CANCELLED):
                    txn.move(row, JobState.QUEUED, {"next_attempt_at": now},
                             "claimed again through the fleet record")
                elif state is not JobState.QUEUED:
                    return job_from_row(row), False
            txn.move(
                txn.row(job_id), JobState.RUNNING,
                {"attempts": max(attempts, 1), "counted_attempts": counted_attempts,
                 "origin": ORIGIN_QUEUE, "started_at": now, "finished_at": None,
                 "phase": Phase.NONE.value, "bytes_done": 0, "bytes_total": 0, "bytes_in": 0,
                 "bytes_out": 0, "next_attempt_at": now},
                f"claimed for a work-queue message (fleet attempt {attempts}, "
                f"{counted_attempts} counted)",
            )
            return txn.job(job_id), True

    def hand_back(self, reason: str) -> list[Job]:
        """On start: queue jobs a crash left running go back to queued, not to be run from here.

        Their messages come back through the queue once their lease runs out
        (to this instance or another); a later message claims the same row.
        """

        with self.ledger.transaction() as txn:
            rows = txn.db.execute(
                "SELECT * FROM jobs WHERE state = ? AND origin = ?",
                (JobState.RUNNING.value, ORIGIN_QUEUE),
            ).fetchall()
            for row in rows:
                txn.move(row, JobState.QUEUED, {"phase": Phase.NONE.value, "next_attempt_at": txn.now},
                         reason)
            return [txn.job(row["id"]) for row in rows]
