"""Record how an attempt ended: the move ``worker.outcome.decide`` picks, written to the ledger.

The pipeline, the daemon (a crash of the pipeline itself) and the queue
consumer all end a running job here, so one policy decides every outcome of an
attempt. (A local job a dead daemon left running is requeued at the next
start by ``Ledger.requeue_interrupted``, which counts the death itself; a queue
job is handed back by ``Ledger.hand_back_queue_jobs``.)
A failure is also written to the output bucket as ``_failed.json``, so
downstream consumers see it without host access.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from processor_layout import FAILED_NAME
from processor_layout import result_prefix as layout_result_prefix
from worker import __version__
from worker.config import Settings
from worker.errors import StorageError
from worker.job import Job
from worker.ledger import Ledger
from worker.outcome import Attempt, Outcome, decide
from worker.states import TERMINAL, JobState, Phase
from worker.storage.base import ObjectStore


def job_logger(job: Job) -> Any:
    """The pipeline's logger, bound to the job and its attempt."""
    return structlog.get_logger("processor.pipeline").bind(
        job_id=job.id, bucket=job.bucket, key=job.key, attempt=job.attempts
    )


#: What a queued job waits for, by the outcome that put it back (shown until its next attempt).
_WAITS = {Outcome.WAIT_FOR_STORAGE: Phase.WAITING_FOR_STORAGE,
          Outcome.WAIT_FOR_SPACE: Phase.WAITING_FOR_SPACE}


@dataclass
class Recorder:
    settings: Settings
    store: ObjectStore
    ledger: Ledger
    clock: Callable[[], float] = time.time

    def record(self, job: Job, attempt: Attempt, log: Any = None) -> Job:
        """Move the running ``job`` to where ``attempt``'s outcome takes it, and return it."""
        log = job_logger(job) if log is None else log
        now = self.clock()
        move = decide(job, attempt, self.settings.processing, now)
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
        if attempt.result_prefix is not None:
            fields["result_prefix"] = attempt.result_prefix
        elif move.target is JobState.FAILED:
            fields["result_prefix"] = self.result_prefix(job)
        updated = self.ledger.transition(
            job.id, move.target, expect=JobState.RUNNING, reason=move.reason, **fields
        )
        if move.target is JobState.FAILED:
            self.write_failure_record(updated, log)
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
        return updated

    def result_prefix(self, job: Job) -> str:
        """Where this job's outcome lands (processor_layout)."""
        return self.result_prefix_of(job.key, job.id)

    def result_prefix_of(self, key: str, job_id: str) -> str:
        """Where the outcome of job ``job_id`` on ``key`` lands (processor_layout)."""
        return layout_result_prefix(self.settings.s3.output_prefix, key, job_id)

    def write_failure_record(self, failed: Job, log: Any) -> bool:
        """Write ``_failed.json`` for a failed job; False when S3 would not take it.

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
            self.store.put_json(
                self.settings.s3.output_bucket, self.result_prefix(failed) + FAILED_NAME, record
            )
        except StorageError as exc:
            log.warning("failure_record_not_written", error=str(exc))
            return False
        return True
