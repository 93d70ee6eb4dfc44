"""Recording an attempt (worker.runner.recorder): the policy's move, written to the ledger and the bucket."""

from __future__ import annotations

from pathlib import Path

import structlog

from tests.support.pipeline import COPY_UPPER, OUT, claim, make
from worker.jobs.outcome import Attempt, Outcome
from worker.jobs.states import JobState


def test_a_crash_of_the_runner_is_recorded_as_a_counted_retry(tmp_path: Path) -> None:
    """What the daemon and the queue consumer do when ``Pipeline.run`` raises."""
    pipeline, ledger, store = make(tmp_path, COPY_UPPER, max_attempts=2)
    job = claim(ledger, store, "k")
    with structlog.testing.capture_logs() as logs:
        queued = pipeline.crash(job, RuntimeError("bug")).job
    assert queued.state is JobState.QUEUED and queued.counted_attempts == 1
    assert queued.error == "internal error: RuntimeError: bug"
    assert queued.next_attempt_at > pipeline.clock()
    (event,) = [e for e in logs if e["event"] == "job_retry_scheduled"]
    assert event["counted_attempts"] == 1 and not event["storage"] and not event["space"]
    (crash,) = [e for e in logs if e["event"] == "job_crashed"]
    assert crash["job_id"] == job.id and isinstance(crash["exc_info"], RuntimeError)

    pipeline.clock.offset += 100_000  # type: ignore[attr-defined]
    again = ledger.claim_next()
    assert again is not None
    failed = pipeline.crash(again, RuntimeError("bug")).job
    assert failed.state is JobState.FAILED and failed.counted_attempts == 2
    assert failed.error == "internal error: RuntimeError: bug; gave up after 2 attempts"
    record = store.json(OUT, "results/k/_failed.json")
    assert record["error"] == failed.error and record["job_id"] == job.id


def test_only_what_an_attempt_found_out_replaces_the_rows_earlier_values(tmp_path: Path) -> None:
    pipeline, ledger, store = make(tmp_path, COPY_UPPER)
    job = claim(ledger, store, "k")
    first = pipeline.record(job, Attempt(Outcome.RETRY, "exit 75", exit_code=75, stderr_tail="slow")).job
    assert (first.exit_code, first.stderr_tail, first.error) == (75, "slow", "exit 75")
    pipeline.clock.offset += 100_000  # type: ignore[attr-defined]
    second = ledger.claim_next()
    assert second is not None
    # A shutdown says nothing about the job: the last run's details and error stay.
    requeued = pipeline.record(second, Attempt(Outcome.REQUEUE, "interrupted by daemon shutdown",
                                               bytes_in=5)).job
    assert (requeued.exit_code, requeued.stderr_tail, requeued.error) == (75, "slow", "exit 75")
    assert (requeued.counted_attempts, requeued.bytes_in, requeued.finished_at) == (1, 5, None)
    assert requeued.next_attempt_at <= ledger.history(job.id)[-1]["at"]  # due at once


def test_a_crash_that_cannot_be_recorded_leaves_the_job_for_recovery(tmp_path: Path) -> None:
    pipeline, ledger, store = make(tmp_path, COPY_UPPER)
    job = claim(ledger, store, "k")
    ledger.close()  # the write fails: the job stays running, and start-up recovery requeues it
    with structlog.testing.capture_logs() as logs:
        ended = pipeline.crash(job, RuntimeError("bug"))
    assert ended.job is job and ended.move is None
    assert [e["event"] for e in logs] == ["job_crashed", "job_not_recorded"]


def test_record_returns_the_move_it_wrote_with_the_result_prefix_worked_out_once(tmp_path: Path) -> None:
    """The fleet consumer settles a message from this move, not from the row read back."""
    pipeline, ledger, store = make(tmp_path, COPY_UPPER, max_attempts=1)
    job = claim(ledger, store, "k")
    ended = pipeline.record(job, Attempt(Outcome.RETRY, "exit 75"))
    move = ended.move
    assert move is not None and move.target is JobState.FAILED and move.outcome is Outcome.RETRY
    assert move.result_prefix == "results/k/" == ended.job.result_prefix
    assert (ended.job.state, ended.job.counted_attempts) == (move.target, move.counted_attempts)
    assert store.json(OUT, move.result_prefix + "_failed.json")["job_id"] == job.id
    # A requeue carries no result location.
    other = claim(ledger, store, "k2")
    requeued = pipeline.record(other, Attempt(Outcome.REQUEUE, "interrupted by daemon shutdown")).move
    assert requeued is not None and requeued.result_prefix is None
    assert requeued.next_attempt_at == ledger.get(other.id).next_attempt_at
