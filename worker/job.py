"""Jobs: ``Job``, a snapshot of one ledger row; pure data, no I/O.

The job's states and their transition table live in worker.states, its
identity and id in worker.identity: both stay importable without
``dataclasses``, for ``processorctl submit``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from worker.identity import Identity
from worker.states import JobState, Phase

__all__ = ["Job"]


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
    #: "local" (processorctl submit) or "queue" (a work-queue message, run only while held).
    origin: str = "local"
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
            "origin": self.origin,
        }
