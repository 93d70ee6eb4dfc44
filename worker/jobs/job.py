"""Jobs: ``Job``, a snapshot of one ledger row; pure data, no I/O.

The job's states and their transition table live in worker.jobs.states, its
identity and id in worker.jobs.identity: both stay importable without
``dataclasses``, for ``processorctl submit``.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.jobs.identity import Identity
from worker.jobs.states import JobState, Phase

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
    #: Attempts counted against processing.max_attempts: those that ended in a
    #: retryable failure of the job itself (exit 75, a damaged download, an
    #: internal error) and those the daemon died during. Attempts lost to S3
    #: being unavailable, a full disk or a shutdown are in ``attempts`` only
    #: (the rules: worker.jobs.outcome).
    counted_attempts: int = 0
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
    #: Bytes the last attempt downloaded and (a success) uploaded, for job_finished and the metrics.
    bytes_in: int = 0
    bytes_out: int = 0
    #: When the running job entered its current phase (a transfer's rate and ETA count from it).
    phase_started_at: float | None = None
    #: What the command of the last attempt that ran used: CPU seconds and peak memory
    #: in bytes (None: it never ran). worker.runner.process.run_command measures them.
    cpu_s: float | None = None
    peak_memory_bytes: int | None = None

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
            "counted_attempts": self.counted_attempts,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "next_attempt_at": self.next_attempt_at,
            "phase": self.phase.value,
            "bytes_total": self.bytes_total,
            "bytes_done": self.bytes_done,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "exit_code": self.exit_code,
            "error": self.error,
            "stderr_tail": self.stderr_tail,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "result_prefix": self.result_prefix,
            "origin": self.origin,
            "phase_started_at": self.phase_started_at,
            "cpu_s": self.cpu_s,
            "peak_memory_bytes": self.peak_memory_bytes,
        }
