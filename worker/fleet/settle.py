"""How a held message ends: from the move its job's attempt recorded (``Settler.settle``),
or from the fleet record of a job that ended elsewhere (``Settler.ended``).

- success or cancel: the message is deleted once the outcome is durable;
- failed for good: once ``_failed.json`` is written the message goes to the
  dead-letter queue with the reason as a message attribute;
- a wait (exit 75's backoff, S3 or disk space away, a drain): handed back as a
  **fresh message** (delayed by the backoff) and the old one deleted, so no
  wait spends a receive and nothing drifts toward the DLQ;
- not recorded (the job still running): released at once.

Each writes the attempt to the fleet record first (``FleetClaims.settle``).
Settled from the ``Move`` ``worker.runner.recorder`` wrote (target, counted attempts,
due time, result prefix), never from the ledger row read back.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from processor_shared.layout import FAILED_NAME
from worker.config.settings import Settings
from worker.errors import StorageError
from worker.fleet.breaker import Breaker
from worker.fleet.claims import FleetClaims
from worker.fleet.messages import Messages
from worker.fleet.record import ClaimPlan, FleetState
from worker.fleet.results import ManifestCheck, ResultChecks
from worker.fleet.workqueue import Received
from worker.jobs.job import Job
from worker.jobs.outcome import Move, Outcome
from worker.jobs.states import JobState
from worker.runner.process import StopToken
from worker.runner.recorder import Recorded

log = structlog.get_logger("processor.queue")


@dataclass
class Held:
    """A message this daemon holds while its job runs."""

    message_id: str
    receipt: str
    body: str
    receive_count: int
    job_id: str
    claim: ClaimPlan
    #: The consumer's clock at the receive or the last visibility extension.
    extended_at: float
    #: The "already processed" check, started as the message arrived.
    check: ManifestCheck | None = None
    #: Set once the message is deleted or released: no extension may follow
    #: (it would hide a released message again). Guarded by ``lock``.
    settled: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: The running job's stop token (set by the consumer's ``_run``): a lost claim stops the job.
    token: StopToken | None = None
    #: The consumer's clock (the claims' too) at the claim, made at the receive, or its last renewal.
    renewed_at: float = field(init=False)
    #: The claim went to another instance: this one neither writes the record
    #: nor touches the message any more.
    lost: bool = False

    def __post_init__(self) -> None:
        self.renewed_at = self.extended_at


class Settler:
    def __init__(self, settings: Settings, claims: FleetClaims, messages: Messages, results: ResultChecks,
                 breaker: Breaker, clock: Callable[[], float]) -> None:
        self._settings = settings
        self._claims = claims
        self._messages = messages
        self._results = results
        self._breaker = breaker
        self._clock = clock

    def settle(self, held: Held, ended: Recorded) -> None:
        """Write the attempt to the fleet record, then delete, dead-letter or hand back the message.

        Of the job as it ended only its id and error are read; the rest is the move's.
        """
        job, move = ended.job, ended.move
        if move is None:  # still running: its outcome could not be recorded
            self._messages.release(held.receipt, held.message_id, 0, "outcome not recorded", job.id)
            return
        claim, now, prefix = held.claim, self._clock(), move.result_prefix
        result = f"s3://{self._settings.s3.output_bucket}/{prefix}" if prefix else None
        if move.target in (JobState.SUCCEEDED, JobState.CANCELLED):
            self._claims.settle(claim, FleetState(move.target.value), move.counted_attempts, job.error,
                                result=result)
            self._messages.delete(held.receipt, held.message_id, job.id)
        elif move.target is JobState.FAILED:
            failed_at = f"{result}{FAILED_NAME}" if result else None
            self._claims.settle(claim, FleetState.FAILED, move.counted_attempts, job.error, result=failed_at)
            try:
                durable = prefix is not None and self._results.failure_written(job.id, prefix)
            except StorageError:
                durable = False
            if durable:
                self._messages.dead_letter(held.receipt, held.message_id, held.body,
                                           job.error or "failed", job.id)
            else:
                # Back after the backoff; the next receive writes _failed.json, then dead-letters it.
                self._messages.hand_back(held.receipt, held.message_id, held.body,
                                         int(self._settings.processing.retry_base_s),
                                         "_failed.json not written yet", job.id)
        else:  # queued again: back to the work queue, after the move's delay
            due = now if move.next_attempt_at is None else move.next_attempt_at
            delay = max(0, math.ceil(due - now))
            state = FleetState.WAITING if delay > 0 else FleetState.QUEUED
            self._claims.settle(claim, state, move.counted_attempts, job.error,
                                waiting_until=now + delay if delay > 0 else None)
            if move.outcome is Outcome.WAIT_FOR_STORAGE:
                self._breaker.open("storage", job.error or "S3 unavailable")
            self._messages.hand_back(held.receipt, held.message_id, held.body, delay,
                                     job.error or "handed back", job.id)

    def ended(self, message: Received, claim: ClaimPlan) -> None:
        """A message for a job that has ended fleet-wide."""
        record = claim.record
        bound = log.bind(job_id=record.job_id, message_id=message.message_id, state=record.state.value)
        if record.state is not FleetState.FAILED:
            bound.info("queue_duplicate_dropped", reason=claim.reason)
            self._messages.delete(message.receipt, message.message_id, record.job_id)
            return
        # Failed for good: its message belongs in the DLQ once _failed.json is durable.
        prefix = self._results.result_prefix(record.key, record.job_id)
        try:
            existed = self._results.failure_written(record.job_id, prefix)
            durable = existed or self._results.write_failure_from_record(record, prefix)
        except StorageError as exc:
            bound.warning("queue_message_kept", error=str(exc))
            self._messages.hand_back(message.receipt, message.message_id, message.body,
                                     int(self._settings.processing.retry_max_s),
                                     "_failed.json not durable yet", record.job_id)
            return
        if existed:
            bound.info("queue_duplicate_dropped", reason=claim.reason)
            self._messages.delete(message.receipt, message.message_id, record.job_id)
        elif durable:
            self._messages.dead_letter(message.receipt, message.message_id, message.body,
                                       record.error or "failed", record.job_id)


def as_found(job: Job) -> Recorded:
    """A job this ledger would not claim, settled on the ledger's own word: succeeded here
    (the fleet record was lost) as that success; running (no move) released."""
    if job.state is not JobState.SUCCEEDED:
        return Recorded(job, None)
    return Recorded(job, Move(JobState.SUCCEEDED, None, None, job.counted_attempts,
                              outcome=Outcome.SUCCEEDED, result_prefix=job.result_prefix))
