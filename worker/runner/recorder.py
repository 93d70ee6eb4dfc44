"""Record how an attempt ended: the move ``worker.jobs.outcome.decide`` picks, written to the ledger.

The pipeline, the daemon (a crash of the pipeline itself) and the queue
consumer all end a running job here, so one policy decides every outcome of an
attempt. (A local job a dead daemon left running is requeued at the next
start by ``Ledger.requeue_interrupted``, which counts the death itself; a queue
job is handed back by ``worker.state.queue.QueueLedger.hand_back``.)
A failure is also written to the output bucket as ``_failed.json``, so
downstream consumers see it without host access. ``Recorder.record`` returns
what it wrote (``Recorded``: the move and the job as it ended), which the
queue consumer settles the job's message from.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import structlog

from processor_shared.layout import FAILED_NAME
from processor_shared.layout import result_prefix as layout_result_prefix
from worker import __version__
from worker.config.settings import Settings
from worker.errors import StorageError
from worker.jobs.job import Job
from worker.jobs.outcome import Attempt, Move, Outcome, decide
from worker.jobs.states import TERMINAL, JobState, Phase
from worker.state.ledger import Ledger
from worker.storage.base import ObjectStore


def job_logger(job: Job) -> Any:
    """The pipeline's logger, bound to the job and its attempt."""
    return structlog.get_logger("processor.pipeline").bind(
        job_id=job.id, bucket=job.bucket, key=job.key, attempt=job.attempts
    )


#: What a queued job waits for, by the outcome that put it back (shown until its next attempt).
_WAITS = {Outcome.WAIT_FOR_STORAGE: Phase.WAITING_FOR_STORAGE,
          Outcome.WAIT_FOR_SPACE: Phase.WAITING_FOR_SPACE}


@dataclass(frozen=True)
class Recorded:
    """How an attempt ended, as recorded: the move written and the job as it ended.

    ``move`` is None when nothing was written (the ledger would not take it, or the
    ledger's own word is all there is): the job is as it stood.
    """

    job: Job
    move: Move | None


@dataclass
class Recorder:
    settings: Settings
    store: ObjectStore
    ledger: Ledger
    clock: Callable[[], float] = time.time

    def record(self, job: Job, attempt: Attempt, log: Any = None) -> Recorded:
        """Move the running ``job`` to where ``attempt``'s outcome takes it; the move and the job."""
        log = job_logger(job) if log is None else log
        now = self.clock()
        move = decide(job, attempt, self.settings.processing, now)
        failed_at = None
        if move.target is JobState.FAILED:
            # Where the failure lands (the key-only rule: no outputs), worked out once and
            # carried in the move to the row, _failed.json and the fleet record alike.
            failed_at = move.result_prefix or layout_result_prefix(
                self.settings.s3.output_prefix, job.key, job.id)
            move = replace(move, result_prefix=failed_at)
        updated = self.ledger.transition(
            job.id, move.target, expect=JobState.RUNNING, reason=move.reason,
            **_fields(attempt, move, now),
        )
        if failed_at is not None:
            self.write_failure_record(updated, failed_at, log)
            log.error("job_failed", state=updated.state.value, error=move.error)
        elif move.target is not JobState.QUEUED:
            log.info("job_state_changed", state=updated.state.value)
        elif attempt.outcome is Outcome.REQUEUE:
            log.info("job_requeued", state=updated.state.value, reason=attempt.error)
        else:
            log.warning("job_retry_scheduled", state=updated.state.value, error=move.error,
                        delay_s=round(move.delay_s, 1), storage=attempt.outcome is Outcome.WAIT_FOR_STORAGE,
                        space=attempt.outcome is Outcome.WAIT_FOR_SPACE,
                        resources=attempt.outcome is Outcome.WAIT_FOR_RESOURCES,
                        counted_attempts=move.counted_attempts)
        return Recorded(updated, move)

    def write_failure_record(self, failed: Job, prefix: str, log: Any) -> bool:
        """Write ``_failed.json`` under ``prefix`` for a failed job; False when S3 would not take it.

        For a local job the ledger holds the failure and the bucket copy is a
        courtesy; a queue job's message goes to the dead-letter queue only once
        it is written.
        """
        record = {
            "job_id": failed.id,
            "source": {"bucket": failed.bucket, "key": failed.key, "version_id": failed.version_id,
                       "etag": failed.etag},
            "state": failed.state.value,
            "error": failed.error,
            "exit_code": failed.exit_code,
            "stderr_tail": failed.stderr_tail,
            "attempts": failed.attempts,
            "failed_at": failed.finished_at,
            "processor_version": __version__,
        }
        try:
            self.store.put_json(self.settings.s3.output_bucket, prefix + FAILED_NAME, record)
        except StorageError as exc:
            log.warning("failure_record_not_written", error=str(exc))
            return False
        return True


def _fields(attempt: Attempt, move: Move, now: float) -> dict[str, Any]:
    """The ledger columns the move writes besides the state."""
    fields: dict[str, Any] = {
        "counted_attempts": move.counted_attempts,
        "bytes_in": attempt.bytes_in, "bytes_out": attempt.bytes_out,
    }
    # Only what this attempt found out replaces what the row holds from an earlier one.
    if attempt.exit_code is not None:
        fields["exit_code"] = attempt.exit_code
    if attempt.stderr_tail is not None:
        fields["stderr_tail"] = attempt.stderr_tail
    if attempt.cpu_s is not None:
        fields["cpu_s"] = attempt.cpu_s
        fields["peak_memory_bytes"] = attempt.peak_memory_bytes
    if move.error is not None:
        fields["error"] = move.error
    if move.next_attempt_at is not None:
        fields["next_attempt_at"] = move.next_attempt_at
        if move.target is JobState.QUEUED and move.next_attempt_at > now:
            fields["phase"] = _WAITS.get(attempt.outcome, Phase.WAITING_TO_RETRY)
            fields["phase_started_at"] = now
    if move.target in TERMINAL:
        fields["finished_at"] = now
    if move.result_prefix is not None:
        fields["result_prefix"] = move.result_prefix
    return fields
