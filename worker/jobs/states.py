"""Job states and the transition table: pure, no I/O.

Apart from worker.jobs.job so that the ledger (and so ``processorctl submit``) can
use them without importing ``dataclasses``, which ``Job`` needs and which
costs a short-lived process more than everything else it imports here.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from worker.errors import InvalidTransition


class JobState(str, enum.Enum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


class Phase(str, enum.Enum):
    """What a job is doing right now (shown by `processorctl show` and `status`).

    The first three while it runs; the waits while it is queued with a
    ``next_attempt_at`` in the future (written by worker.runner.recorder).
    """

    NONE = ""
    DOWNLOADING = "downloading"
    RUNNING = "running"
    UPLOADING = "uploading"
    WAITING_FOR_STORAGE = "waiting for storage"
    WAITING_FOR_SPACE = "waiting for space"
    WAITING_TO_RETRY = "waiting to retry"


#: The only legal moves. RUNNING -> QUEUED is a retryable failure or an
#: interrupted run; QUEUED -> FAILED is a job that can never run (its object
#: is gone before the first attempt, or an operator gives up on it).
#: FAILED and CANCELLED go back to QUEUED only through `processorctl retry`
#: (Ledger.retry) or, for a queue job the fleet record says runs again, a new
#: claim of its message (QueueLedger.claim_for_message).
_NEXT: Mapping[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    JobState.RUNNING: frozenset(
        {JobState.QUEUED, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset({JobState.QUEUED}),
    JobState.CANCELLED: frozenset({JobState.QUEUED}),
}

#: States a job never leaves on its own.
TERMINAL: frozenset[JobState] = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
)


def can_transition(current: JobState, target: JobState) -> bool:
    """Whether the transition table allows ``current -> target``."""
    return target in _NEXT[current]


def check_transition(job_id: str, current: JobState, target: JobState) -> None:
    """Raise InvalidTransition unless ``current -> target`` is legal."""
    if not can_transition(current, target):
        raise InvalidTransition(job_id, current.value, target.value)
