"""How an attempt ended, and the one policy that turns that into the job's next move: pure, no I/O.

The pipeline ends every attempt with an ``Attempt`` (its ``Outcome`` and the
details the ledger keeps); ``decide`` maps (job, outcome, settings, now) to a
``Move``: the target state, when a requeued job is due again (backoff
included), the reason recorded, whether the attempt is counted against
``processing.max_attempts``, and where a success's or a failure's outcome
lands. ``worker.runner.recorder`` writes that move to the ledger and returns it (the
fleet consumer settles the job's message from the move itself); the daemon
and the queue consumer record through it too (a crash of the pipeline itself
is ``Outcome.RETRY``), so there is one policy, not one per caller.

What ``processing.max_attempts`` counts (``Job.counted_attempts``): attempts
that ended because of the job itself (``RETRY``: exit 75, a damaged download,
an internal error) and attempts the daemon died during (counted on the next
start by ``Ledger.requeue_interrupted``). Waiting for S3, for disk space or for
descriptors/memory and being interrupted by a shutdown are not counted: they say nothing about the
job. A job whose counted attempts reach ``max_attempts`` is failed, so with
``max_attempts = 3`` a command that always exits 75 runs exactly 3 times.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from processor_shared.aws_edge import backoff_delay
from worker.config.settings import ProcessingSettings
from worker.jobs.job import Job
from worker.jobs.states import JobState

#: A space wait's first retry delay (at most; processing.retry_base_s if lower):
#: the space is usually freed by a job of this daemon finishing, and this bounds
#: how long after that the waiting job starts.
SPACE_RETRY_FIRST_S = 5.0

#: The longest delay between two checks of a job waiting for space (at most
#: processing.retry_max_s): one HEAD and two ledger commits per check keep a
#: long wait cheap, and a freed disk is noticed within this.
SPACE_RETRY_MAX_S = 30.0

#: The first delay's ceiling is at least this (the delay is half to all of it),
#: even with retry_base_s = 0: no hot loop.
SPACE_RETRY_FLOOR_S = 1.0


def space_retry_bounds(retry_base_s: float, retry_max_s: float) -> tuple[float, float]:
    """(first, cap) of the backoff of a job waiting for space."""
    first = max(SPACE_RETRY_FLOOR_S, min(retry_base_s, SPACE_RETRY_FIRST_S))
    return first, max(first, min(retry_max_s, SPACE_RETRY_MAX_S))


class Outcome(str, enum.Enum):
    """How an attempt ended."""

    #: The results and their manifest are in the output bucket.
    SUCCEEDED = "succeeded"
    #: The job can never succeed as it is (exit status, timeout, bad output, ...).
    FAILED = "failed"
    #: An operator cancelled it, or a newer version of the object superseded it.
    CANCELLED = "cancelled"
    #: The job failed retryably (exit 75, a damaged download, an internal error):
    #: again after a backoff, counted; failed once the count reaches max_attempts.
    RETRY = "retry"
    #: S3 (or the network to it) failed, not the job: again after a backoff, not
    #: counted, so an outage delays jobs but never fails them.
    WAIT_FOR_STORAGE = "wait_for_storage"
    #: The state volume is too full for now: checked again soon, not counted.
    WAIT_FOR_SPACE = "wait_for_space"
    #: The host ran short of file descriptors, processes or memory (EMFILE, ENFILE,
    #: EAGAIN, ENOMEM): a passing shortage, like a full disk checked again soon, not counted.
    WAIT_FOR_RESOURCES = "wait_for_resources"
    #: A shutdown interrupted it: due again at once, not counted.
    REQUEUE = "requeue"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Attempt:
    """What the pipeline reports about one attempt; it changes no state itself."""

    outcome: Outcome
    #: Why it did not succeed (None for a success).
    error: str | None = None
    #: Set only when the command ran (otherwise the row keeps its earlier values).
    exit_code: int | None = None
    stderr_tail: str | None = None
    #: Where the results landed (a success), worked out once per attempt (when the
    #: outputs are known) and carried from here to the ledger, the bucket and the fleet record.
    result_prefix: str | None = None
    #: Bytes downloaded and (a success) uploaded by this attempt.
    bytes_in: int = 0
    bytes_out: int = 0
    #: Why, for the history, when the outcome is not a failure (a success that needed no run).
    note: str | None = None
    #: What the command used (set only when it ran): CPU seconds and peak memory in bytes.
    cpu_s: float | None = None
    peak_memory_bytes: int | None = None


@dataclass(frozen=True)
class Move:
    """The job's next transition, as ``decide`` worked it out."""

    target: JobState
    #: For the transitions history.
    reason: str | None
    #: For the job row (None: the row keeps its error).
    error: str | None
    #: The job's counted attempts after this one (see the module docstring).
    counted_attempts: int
    #: Whether this attempt was counted against processing.max_attempts.
    counted: bool = False
    #: When a requeued job is due again (None unless target is QUEUED), and the delay until then.
    next_attempt_at: float | None = None
    delay_s: float = 0.0
    #: The job failed because its counted attempts reached max_attempts.
    gave_up: bool = False
    #: The outcome this move follows from.
    outcome: Outcome | None = None
    #: Where the job's outcome lands: a success's from its attempt; a failure's, when
    #: the attempt did not say, worked out once by worker.runner.recorder. None otherwise.
    result_prefix: str | None = None


def decide(
    job: Job, attempt: Attempt, settings: ProcessingSettings, now: float,
    *, jitter: Callable[[], float] = random.random,
) -> Move:
    """The one policy from an attempt's outcome to the job's next move.

    ``jitter`` returns a number in [0, 1) (``random.random``); tests pass a constant.
    """
    move = _next_move(job, attempt, settings, now, jitter)
    return replace(move, outcome=attempt.outcome, result_prefix=attempt.result_prefix)


def _next_move(
    job: Job, attempt: Attempt, settings: ProcessingSettings, now: float, jitter: Callable[[], float],
) -> Move:
    outcome, error = attempt.outcome, attempt.error
    used = job.counted_attempts
    if outcome is Outcome.SUCCEEDED:
        return Move(JobState.SUCCEEDED, attempt.note, None, used)
    if outcome is Outcome.FAILED:
        return Move(JobState.FAILED, error, error, used)
    if outcome is Outcome.CANCELLED:
        return Move(JobState.CANCELLED, error, error, used)
    reason = _handed_back(job, error or outcome.value)
    if outcome is Outcome.REQUEUE:
        return Move(JobState.QUEUED, reason, None, used, next_attempt_at=now)
    if outcome is Outcome.RETRY:
        used += 1
        if used >= settings.max_attempts:
            gave_up = f"{error}; gave up after {used} attempts"
            return Move(JobState.FAILED, gave_up, gave_up, used, counted=True, gave_up=True)
        delay = backoff_delay(job.attempts, settings.retry_base_s, settings.retry_max_s, jitter)
        return Move(JobState.QUEUED, reason, error, used, counted=True,
                    next_attempt_at=now + delay, delay_s=delay)
    if outcome is Outcome.WAIT_FOR_STORAGE:
        delay = backoff_delay(job.attempts, settings.retry_base_s, settings.retry_max_s, jitter)
    else:
        # Grows with the checks made without spending budget (bounds and why: SPACE_RETRY_* above).
        first, cap = space_retry_bounds(settings.retry_base_s, settings.retry_max_s)
        delay = backoff_delay(job.attempts - used, first, cap, jitter)
    return Move(JobState.QUEUED, reason, error, used, next_attempt_at=now + delay, delay_s=delay)


def crashed(exc: Exception) -> Attempt:
    """The attempt of a job whose runner raised (a bug, not the job's fault alone): counted, retried."""
    return Attempt(Outcome.RETRY, f"internal error: {type(exc).__name__}: {exc}")


def out_of_attempts(job: Job, settings: ProcessingSettings) -> bool:
    """Whether the job has no counted attempt left before it runs.

    Only crash recovery brings such a job to a slot (every other path fails it
    at the limit): the daemon died during each of its last attempts.
    """
    return job.counted_attempts >= settings.max_attempts


def _handed_back(job: Job, reason: str) -> str:
    """A queue job goes back to its queue, not to this ledger's dispatch: say so."""
    return f"{reason}; handed back to the work queue" if job.origin == "queue" else reason
