"""Jobs and their states: pure data and the transition table, no I/O.

A job is identified by ``(bucket, key, version)`` where *version* is the S3
version id when the bucket is versioned, else the object's ETag. The same
identity is processed once however often S3, Lambda or SSM deliver it; a new
version of the same key is a new job. The job id is derived from the identity
so every delivery of one object version maps to the same id.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

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
    """What a running job is doing right now (shown by `processorctl show`)."""

    NONE = ""
    DOWNLOADING = "downloading"
    RUNNING = "running"
    UPLOADING = "uploading"


#: The only legal moves. RUNNING -> QUEUED is a retryable failure or an
#: interrupted run; QUEUED -> FAILED is a job that can never run (its object
#: is gone before the first attempt, or an operator gives up on it).
#: FAILED and CANCELLED go back to QUEUED only through `processorctl retry`.
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


@dataclass(frozen=True)
class Identity:
    """What makes two deliveries the same job."""

    bucket: str
    key: str
    version_id: str | None = None
    etag: str | None = None

    @property
    def version(self) -> str:
        """The version part of the identity: version id, else ETag, else empty."""
        if self.version_id:
            return f"v:{self.version_id}"
        if self.etag:
            return f"e:{self.etag}"
        return ""

    def framed(self) -> str:
        """The identity as one string; JSON framing, so no field can shift into another.

        lambda_trigger.targeting.identity_of frames a request the same way, so
        the Lambda's rendezvous hashing and the ledger agree on "same job".
        """
        return json.dumps([self.bucket, self.key, self.version], ensure_ascii=True)

    def job_id(self) -> str:
        """A stable, path-safe id: the same identity always yields the same id."""
        digest = hashlib.sha256(self.framed().encode("ascii")).hexdigest()
        return f"j-{digest[:20]}"


def normalise_etag(etag: str | None) -> str | None:
    """ETags arrive quoted from S3 APIs and unquoted in events; store them bare."""
    if etag is None:
        return None
    bare = etag.strip().strip('"')
    return bare or None


@dataclass(frozen=True)
class Job:
    """A snapshot of one ledger row."""

    id: str
    bucket: str
    key: str
    version_id: str | None
    etag: str | None
    state: JobState
    attempts: int
    created_at: float
    updated_at: float
    next_attempt_at: float = 0.0
    #: Attempts that ended in a retryable failure of the job itself (exit 75, an
    #: internal error) - what processing.max_attempts bounds. Attempts lost to S3
    #: being unavailable, a crash or a shutdown are in ``attempts`` only.
    retries_used: int = 0
    phase: Phase = Phase.NONE
    bytes_total: int = 0
    bytes_done: int = 0
    exit_code: int | None = None
    error: str | None = None
    stderr_tail: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    result_prefix: str | None = None
    extra: Mapping[str, object] = field(default_factory=dict)

    @property
    def identity(self) -> Identity:
        return Identity(self.bucket, self.key, self.version_id, self.etag)

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready view (for `--json` output and the control API)."""
        return {
            "id": self.id,
            "bucket": self.bucket,
            "key": self.key,
            "version_id": self.version_id,
            "etag": self.etag,
            "state": self.state.value,
            "attempts": self.attempts,
            "retries_used": self.retries_used,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "next_attempt_at": self.next_attempt_at,
            "phase": self.phase.value,
            "bytes_total": self.bytes_total,
            "bytes_done": self.bytes_done,
            "exit_code": self.exit_code,
            "error": self.error,
            "stderr_tail": self.stderr_tail,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "result_prefix": self.result_prefix,
        }
