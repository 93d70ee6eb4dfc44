"""The fleet's one job record per job version, and the claim rule: pure, no I/O.

A fleet (``[queue]`` with ``table``) keeps one record per job id in a shared
store (``worker.fleet.dynamo`` on DynamoDB; tests use an in-memory fake). The
record, not SQS, says how many attempts a job has spent and who runs it:

- **Claim before run.** A daemon that receives a message reads the record and
  writes its claim with a conditional write on the revision it read
  (``rev``), so of two instances that race, one wins. The claim holds a lease
  (``lease_until``) that the holder renews with the message's visibility.
- **A live holder keeps its job.** A duplicate message (another message id)
  for a job a live holder runs is dropped; the holder's own message coming
  back early is deferred until the lease ends.
- **A dead holder counts.** A claim taken over after its lease ran out, or
  from an earlier daemon process on the same instance (kill -9, then a
  restart), is the "holder died" attempt: counted against ``max_attempts``;
  at the limit the job fails with a reason that says so.
- Waits (storage, space, a drain, exit 75's backoff) are written as
  ``queued``/``waiting`` with the counted attempts the one outcome policy
  (``worker.jobs.outcome.decide``) chose; SQS's receive count decides nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Protocol

from worker.errors import ProcessorError
from worker.jobs.identity import Identity

#: How long a finished job's record is kept (the table's TTL attribute ``expires_at``).
RECORD_RETENTION_S = 90 * 24 * 3600


class FleetState(str, enum.Enum):
    """A job's state fleet-wide (the instance ledgers keep their own journal)."""

    QUEUED = "queued"
    RUNNING = "running"
    #: Handed back with a delay: a retry's backoff, storage or space unavailable.
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


FINAL_STATES = frozenset({FleetState.SUCCEEDED, FleetState.FAILED, FleetState.CANCELLED})


class RecordError(ProcessorError):
    """The fleet's job record store failed; ``retryable`` says whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool, code: str = "") -> None:
        super().__init__(message)
        self.retryable = retryable
        self.code = code


class RecordConflict(ProcessorError):
    """A conditional write lost: the record changed since it was read (another instance)."""


@dataclass(frozen=True)
class Holder:
    """Who claims: the instance, and this daemon process on it (a restart is a new token)."""

    instance: str
    token: str


@dataclass(frozen=True)
class FleetJob:
    """One job version's fleet-wide record."""

    job_id: str
    bucket: str
    key: str
    version_id: str | None
    etag: str | None
    state: FleetState
    #: Conditional writes compare it; every write adds one.
    rev: int = 0
    holder: str = ""
    token: str = ""
    message_id: str = ""
    lease_until: float = 0.0
    #: Attempts started (claims), and those counted against max_attempts.
    attempts: int = 0
    counted_attempts: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    #: A waiting job: why, and until when.
    waiting_until: float | None = None
    error: str | None = None
    #: s3://bucket/prefix of the results (success) or of _failed.json (failure).
    result: str | None = None
    #: Seconds the last attempt ran (a finished job).
    duration_s: float | None = None

    @property
    def object_url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def identity(self) -> Identity:
        return Identity(self.bucket, self.key, self.version_id, self.etag)


class JobRecords(Protocol):
    """The store of fleet records; implementations raise RecordError / RecordConflict only."""

    def get(self, job_id: str) -> FleetJob | None: ...

    def put(self, record: FleetJob, *, expected_rev: int | None) -> FleetJob:
        """Write ``record`` with rev+1 if the stored rev is ``expected_rev`` (None: must not exist)."""

    def renew(self, job_id: str, token: str, lease_until: float, now: float) -> bool:
        """Extend the lease if ``token`` still holds the claim; False if it does not."""

    def newest_for_object(self, bucket: str, key: str, limit: int = 1) -> list[FleetJob]:
        """The object's records, newest first."""

    def in_state(self, state: FleetState, *, since: float | None = None, until: float | None = None,
                 limit: int | None = None) -> list[FleetJob]:
        """Records in ``state`` updated in [since, until], newest first (a query, not a scan)."""

    def close(self) -> None: ...


class ClaimKind(str, enum.Enum):
    #: Run the job: ``record`` is the claim to write.
    RUN = "run"
    #: The job failed for good now (its holders died ``max_attempts`` times): ``record`` to write.
    FAIL = "fail"
    #: A live holder runs it and this is another message: delete this one.
    DROP = "drop"
    #: A live holder runs it and this is its own message back early: hide it until ``until``.
    DEFER = "defer"
    #: The job has ended (``record.state``): nothing to run.
    ENDED = "ended"


@dataclass(frozen=True)
class ClaimPlan:
    kind: ClaimKind
    record: FleetJob
    reason: str
    #: DEFER: when the holder's lease runs out.
    until: float = 0.0
    #: RUN/FAIL: the claim takes over from a holder that died (a counted attempt).
    death: bool = False


def plan_claim(
    current: FleetJob | None, identity: Identity, *, me: Holder, message_id: str, now: float,
    lease_s: float, max_attempts: int,
) -> ClaimPlan:
    """What to do with a message for ``identity``, given the record as read."""
    job_id = identity.job_id()
    if current is None:
        fresh = FleetJob(job_id, identity.bucket, identity.key, identity.version_id, identity.etag,
                         FleetState.QUEUED, created_at=now)
        return ClaimPlan(ClaimKind.RUN, _claimed(fresh, me, message_id, now, lease_s), "new job")
    if current.state in FINAL_STATES:
        return ClaimPlan(ClaimKind.ENDED, current, f"job already {current.state.value}")
    death = False
    reason = f"claimed ({current.state.value})"
    record = current
    if current.state is FleetState.RUNNING:
        same_instance = current.holder == me.instance
        if current.token == me.token:
            return ClaimPlan(ClaimKind.DROP, current, "running in this daemon already")
        if not same_instance and current.lease_until > now:
            if message_id and message_id == current.message_id:
                return ClaimPlan(ClaimKind.DEFER, current, f"held by {current.holder} (lease live)",
                                 until=current.lease_until)
            return ClaimPlan(ClaimKind.DROP, current,
                             f"a duplicate: {current.holder} runs this job (lease live)")
        # The holder died: an earlier daemon process on this instance (the
        # state lock allows one at a time), or a lease nobody renewed.
        how = ("the daemon on this instance restarted" if same_instance
               else f"{current.holder} stopped renewing its lease")
        death = True
        reason = f"holder died during attempt {current.attempts} ({how})"
        record = replace(current, counted_attempts=current.counted_attempts + 1, error=reason)
        if record.counted_attempts >= max_attempts:
            why = (f"the holder died during {record.counted_attempts} attempts of this job; "
                   "not trying again (a poison input?)")
            failed = replace(record, state=FleetState.FAILED, holder="", token="", lease_until=0.0,
                             error=why, finished_at=now, updated_at=now, waiting_until=None)
            return ClaimPlan(ClaimKind.FAIL, failed, why, death=True)
    return ClaimPlan(ClaimKind.RUN, _claimed(record, me, message_id, now, lease_s), reason, death=death)


def _claimed(record: FleetJob, me: Holder, message_id: str, now: float, lease_s: float) -> FleetJob:
    return replace(record, state=FleetState.RUNNING, holder=me.instance, token=me.token,
                   message_id=message_id, lease_until=now + lease_s, attempts=record.attempts + 1,
                   started_at=now, finished_at=None, waiting_until=None, updated_at=now,
                   duration_s=None)


def settled(
    record: FleetJob, state: FleetState, *, now: float, counted_attempts: int, error: str | None,
    waiting_until: float | None = None, result: str | None = None,
) -> FleetJob:
    """The record once its holder settles the attempt (releases the claim)."""
    final = state in FINAL_STATES
    duration = round(now - record.started_at, 3) if record.started_at is not None else None
    return replace(
        record, state=state, holder="", token="", lease_until=0.0, updated_at=now,
        counted_attempts=counted_attempts, error=error, waiting_until=waiting_until,
        result=result if result is not None else record.result,
        finished_at=now if final else None, duration_s=duration if final else record.duration_s,
    )


def running_by_holder(records: Iterable[FleetJob]) -> dict[str, list[FleetJob]]:
    """Running jobs grouped by holder instance (``processorctl fleet``)."""
    grouped: dict[str, list[FleetJob]] = {}
    for record in records:
        grouped.setdefault(record.holder or "?", []).append(record)
    return dict(sorted(grouped.items()))
