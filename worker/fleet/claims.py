"""Claims on the fleet's job records: read, plan (``worker.fleet.record.plan_claim``), write.

The I/O half of the claim rule. A claim is written conditionally on the
revision read; a lost race re-reads and plans again (the other instance's
claim then usually makes this message a duplicate). Settling writes the
attempt's outcome with the counted attempts the outcome policy chose and
releases the claim; a claim taken over meanwhile (this holder's lease ran
out) is left alone and logged.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import replace

import structlog

from worker.fleet.record import (
    ClaimKind,
    ClaimPlan,
    FleetJob,
    FleetState,
    Holder,
    JobRecords,
    RecordConflict,
    RecordError,
    plan_claim,
    settled,
)
from worker.jobs.identity import Identity

log = structlog.get_logger("processor.queue")

#: Conditional writes lost in a row before a claim gives up (and the message comes back).
CLAIM_RACES = 5


class FleetClaims:
    def __init__(self, records: JobRecords, instance: str, *, lease_s: float, max_attempts: int,
                 clock: Callable[[], float] = time.time) -> None:
        self._records = records
        #: A fresh token per daemon process: a restart on the same instance is a new holder.
        self.holder = Holder(instance, uuid.uuid4().hex)
        self._lease_s = lease_s
        # The record's lease ends a little before the message's visibility, so a
        # message back from a dead holder finds the lease over (no deferral).
        self._margin = min(5.0, lease_s / 4)
        self._max_attempts = max_attempts
        self._clock = clock

    def claim(self, identity: Identity, message_id: str) -> ClaimPlan:
        # Most messages are for a job the fleet has no record of yet: plan on that
        # guess and write it conditionally (attribute_not_exists), one request; a
        # record that exists fails the write and is read, as after any lost race.
        current: FleetJob | None = None
        for _ in range(CLAIM_RACES + 1):
            plan = plan_claim(current, identity, me=self.holder, message_id=message_id,
                              now=self._clock(), lease_s=self._lease_s - self._margin,
                              max_attempts=self._max_attempts)
            if plan.kind not in (ClaimKind.RUN, ClaimKind.FAIL):
                return plan
            try:
                written = self._records.put(plan.record, expected_rev=current.rev if current else None)
            except RecordConflict:
                # A record exists (the guess), or another instance wrote it first: read it.
                current = self._records.get(identity.job_id())
                continue
            if plan.death:
                log.warning("job_holder_died", job_id=written.job_id, reason=plan.reason,
                            counted_attempts=written.counted_attempts)
            return replace(plan, record=written)
        raise RecordError(f"claim on {identity.job_id()}: lost {CLAIM_RACES} races in a row",
                          retryable=True, code="ClaimRace")

    @property
    def lease_s(self) -> float:
        """How long a claim lasts unrenewed (the record's lease, a little under the message's)."""
        return self._lease_s - self._margin

    def renew(self, claim: ClaimPlan) -> bool:
        """Renew the lease; False when another instance took the claim over. RecordError on failure."""
        now = self._clock()
        return self._records.renew(claim.record.job_id, self.holder.token, now + self.lease_s, now)

    def settle(self, claim: ClaimPlan, state: FleetState, counted_attempts: int, error: str | None, *,
               waiting_until: float | None = None, result: str | None = None) -> FleetJob | None:
        """Write the attempt's end and release the claim; None when it could not be written."""
        record = settled(claim.record, state, now=self._clock(), counted_attempts=counted_attempts,
                         error=error, waiting_until=waiting_until, result=result)
        try:
            return self._records.put(record, expected_rev=claim.record.rev)
        except RecordConflict:
            log.warning("job_claim_lost", job_id=record.job_id, state=state.value,
                        reason="the record changed while this holder ran the job")
        except RecordError as exc:
            # The lease runs out; the next claim counts it as a death (at-least-once holds).
            log.error("job_record_not_written", job_id=record.job_id, state=state.value, error=str(exc))
        return None
