"""The outcome policy (worker.jobs.outcome.decide): every outcome x every job situation, no I/O.

The expected moves are written out by hand (settings below, jitter fixed at
0 so a delay is exactly half its ceiling), not computed by the code under test.
"""

from __future__ import annotations

import itertools

import pytest

from processor_shared.aws_edge import backoff_delay
from worker.config.settings import ProcessingSettings
from worker.jobs.job import Job
from worker.jobs.outcome import Attempt, Move, Outcome, crashed, decide, out_of_attempts
from worker.jobs.states import JobState

SETTINGS = ProcessingSettings(max_attempts=3, retry_base_s=30, retry_max_s=900)
NOW = 10_000.0
ERROR = "boom"

#: name -> (attempts, counted_attempts) of a RUNNING job.
SITUATIONS = {
    "first attempt": (1, 0),
    "one counted failure behind it": (2, 1),
    "its last counted attempt": (3, 2),
    "after many uncounted waits for S3": (6, 1),
    "out of attempts (the daemon died during each)": (4, 3),
}

Q, S, F, C = JobState.QUEUED, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED

#: (outcome, situation) -> (target, counted_attempts after, counted, delay_s or None, gave_up).
#: RETRY / WAIT_FOR_STORAGE back off on ``attempts`` (base 30, cap 900: ceiling 30 * 2^(n-1));
#: WAIT_FOR_SPACE on the uncounted attempts (attempts - counted), within worker.runner.space's 5..30 s.
EXPECTED: dict[tuple[Outcome, str], tuple[JobState, int, bool, float | None, bool]] = {
    (Outcome.RETRY, "first attempt"): (Q, 1, True, 15.0, False),
    (Outcome.RETRY, "one counted failure behind it"): (Q, 2, True, 30.0, False),
    (Outcome.RETRY, "its last counted attempt"): (F, 3, True, None, True),
    (Outcome.RETRY, "after many uncounted waits for S3"): (Q, 2, True, 450.0, False),
    (Outcome.RETRY, "out of attempts (the daemon died during each)"): (F, 4, True, None, True),
    (Outcome.WAIT_FOR_STORAGE, "first attempt"): (Q, 0, False, 15.0, False),
    (Outcome.WAIT_FOR_STORAGE, "one counted failure behind it"): (Q, 1, False, 30.0, False),
    (Outcome.WAIT_FOR_STORAGE, "its last counted attempt"): (Q, 2, False, 60.0, False),
    (Outcome.WAIT_FOR_STORAGE, "after many uncounted waits for S3"): (Q, 1, False, 450.0, False),
    (Outcome.WAIT_FOR_STORAGE, "out of attempts (the daemon died during each)"): (Q, 3, False, 120.0, False),
    (Outcome.WAIT_FOR_SPACE, "first attempt"): (Q, 0, False, 2.5, False),
    (Outcome.WAIT_FOR_SPACE, "one counted failure behind it"): (Q, 1, False, 2.5, False),
    (Outcome.WAIT_FOR_SPACE, "its last counted attempt"): (Q, 2, False, 2.5, False),
    (Outcome.WAIT_FOR_SPACE, "after many uncounted waits for S3"): (Q, 1, False, 15.0, False),
    (Outcome.WAIT_FOR_SPACE, "out of attempts (the daemon died during each)"): (Q, 3, False, 2.5, False),
    # A shortage of descriptors or memory waits like a full disk (the same short checks).
    **{(Outcome.WAIT_FOR_RESOURCES, name): value for (outcome, name), value in {
        (Outcome.WAIT_FOR_SPACE, "first attempt"): (Q, 0, False, 2.5, False),
        (Outcome.WAIT_FOR_SPACE, "one counted failure behind it"): (Q, 1, False, 2.5, False),
        (Outcome.WAIT_FOR_SPACE, "its last counted attempt"): (Q, 2, False, 2.5, False),
        (Outcome.WAIT_FOR_SPACE, "after many uncounted waits for S3"): (Q, 1, False, 15.0, False),
        (Outcome.WAIT_FOR_SPACE, "out of attempts (the daemon died during each)"): (Q, 3, False, 2.5, False),
    }.items()},
    **{(Outcome.REQUEUE, name): (Q, counted, False, 0.0, False)
       for name, (_, counted) in SITUATIONS.items()},
    **{(outcome, name): (target, counted, False, None, False)
       for outcome, target in ((Outcome.SUCCEEDED, S), (Outcome.FAILED, F), (Outcome.CANCELLED, C))
       for name, (_, counted) in SITUATIONS.items()},
}


def running(attempts: int, counted: int, origin: str = "local") -> Job:
    return Job(id="j-1", bucket="in", key="k", version_id=None, etag="e", state=JobState.RUNNING,
               attempts=attempts, created_at=1.0, updated_at=2.0, counted_attempts=counted,
               origin=origin)


def test_the_table_covers_every_outcome_in_every_situation() -> None:
    assert set(EXPECTED) == set(itertools.product(Outcome, SITUATIONS))


@pytest.mark.parametrize("origin", ["local", "queue"])
@pytest.mark.parametrize(("outcome", "situation"), sorted(EXPECTED, key=str))
def test_every_outcome_in_every_situation(outcome: Outcome, situation: str, origin: str) -> None:
    target, counted_after, counted, delay, gave_up = EXPECTED[outcome, situation]
    attempts, counted_before = SITUATIONS[situation]
    error = None if outcome is Outcome.SUCCEEDED else ERROR
    move = decide(running(attempts, counted_before, origin), Attempt(outcome, error), SETTINGS, NOW,
                  jitter=lambda: 0.0)

    assert (move.target, move.counted_attempts, move.counted, move.gave_up) == (
        target, counted_after, counted, gave_up)
    if delay is None:
        assert move.next_attempt_at is None and move.delay_s == 0.0
    else:
        assert move.delay_s == delay and move.next_attempt_at == NOW + delay
    handed_back = "; handed back to the work queue" if origin == "queue" else ""
    if gave_up:
        expected_error = f"{ERROR}; gave up after {counted_after} attempts"
        assert (move.reason, move.error) == (expected_error, expected_error)
    elif target is S:
        assert (move.reason, move.error) == (None, None)
    elif target in (F, C):
        assert (move.reason, move.error) == (ERROR, ERROR)
    elif outcome is Outcome.REQUEUE:  # the row keeps the error of the attempt before
        assert (move.reason, move.error) == (ERROR + handed_back, None)
    else:
        assert (move.reason, move.error) == (ERROR + handed_back, ERROR)


def test_a_command_that_always_exits_75_runs_max_attempts_times() -> None:
    """processing.max_attempts = 3: runs 1 and 2 are requeued, run 3 fails the job."""
    job, runs = running(0, 0), 0
    while True:
        job = running(job.attempts + 1, job.counted_attempts)  # claimed
        runs += 1
        move = decide(job, Attempt(Outcome.RETRY, "exit 75"), SETTINGS, NOW)
        job = running(job.attempts, move.counted_attempts)
        if move.target is not JobState.QUEUED:
            break
    assert (runs, move.target, move.counted_attempts) == (3, JobState.FAILED, 3)


def test_uncounted_outcomes_never_fail_a_job() -> None:
    """An S3 outage, a full disk or shutdowns delay a job for ever, never fail it."""
    for outcome in (Outcome.WAIT_FOR_STORAGE, Outcome.WAIT_FOR_SPACE, Outcome.WAIT_FOR_RESOURCES,
                    Outcome.REQUEUE):
        for attempts in (1, 10, 100, 5000):
            move = decide(running(attempts, 2), Attempt(outcome, ERROR), SETTINGS, NOW)
            assert move.target is JobState.QUEUED and move.counted_attempts == 2, (outcome, attempts)


@pytest.mark.parametrize("outcome", [Outcome.RETRY, Outcome.WAIT_FOR_STORAGE, Outcome.WAIT_FOR_SPACE])
def test_jitter_spans_the_upper_half_of_the_delay(outcome: Outcome) -> None:
    job = running(2, 0)
    low = decide(job, Attempt(outcome, ERROR), SETTINGS, NOW, jitter=lambda: 0.0)
    high = decide(job, Attempt(outcome, ERROR), SETTINGS, NOW, jitter=lambda: 0.999)
    assert low.delay_s < high.delay_s < 2 * low.delay_s


def test_backoff_ceiling_doubles_then_caps() -> None:
    assert [backoff_delay(n, 30, 900, lambda: 1.0) for n in (0, 1, 2, 5, 6, 7)] == [
        30, 30, 60, 480, 900, 900]


def test_a_crash_of_the_runner_is_a_counted_retry() -> None:
    attempt = crashed(KeyError("x"))
    assert attempt == Attempt(Outcome.RETRY, "internal error: KeyError: 'x'")
    move = decide(running(3, 2), attempt, SETTINGS, NOW)
    assert move == Move(JobState.FAILED, "internal error: KeyError: 'x'; gave up after 3 attempts",
                        "internal error: KeyError: 'x'; gave up after 3 attempts", 3,
                        counted=True, gave_up=True, outcome=Outcome.RETRY)


@pytest.mark.parametrize(("counted", "out"), [(0, False), (2, False), (3, True), (4, True)])
def test_a_job_is_out_of_attempts_once_its_counted_attempts_reach_max_attempts(
    counted: int, out: bool
) -> None:
    assert out_of_attempts(running(counted + 1, counted), SETTINGS) is out


def test_a_success_that_needed_no_run_keeps_its_note_in_the_history() -> None:
    """The fleet's "already processed" (its manifest exists) is a success through the same policy."""
    move = decide(running(1, 0, "queue"), Attempt(Outcome.SUCCEEDED, note="already processed"), SETTINGS, 5.0)
    assert (move.target, move.reason, move.error, move.counted) == (JobState.SUCCEEDED, "already processed",
                                                                    None, False)
    assert decide(running(1, 0), Attempt(Outcome.SUCCEEDED), SETTINGS, 5.0).reason is None
