"""Pull jobs from a fleet's shared work queue into the daemon's slots.

A receiver thread of its own asks the queue for as many messages as the
daemon has free slots (never more, so every slot is busy whenever a message is
visible) and long-polls; the main loop never waits on it. Each message is
first claimed in the fleet's job record (``worker.fleet.claims``): only the
claim's winner runs the job, as a ledger job (the same id ``processorctl
submit`` gives) in a slot thread. A heartbeat thread renews the claim and the
message's visibility every ``visibility_s / 3`` while the job runs.

How a message ends (docs/ARCHITECTURE.md "The fleet"): from the move its
job's attempt recorded, by ``worker.fleet.settle.Settler`` (deleted, to the
dead-letter queue once ``_failed.json`` is durable, or handed back as a fresh
message after a wait; attempts are counted in the fleet record by the one
outcome policy); a malformed one goes straight to the dead-letter queue with
its reason.

Before running, an existing ``_manifest.json`` of the same version means the
job was already processed: it ends succeeded and the command does not run.
While S3 is down the receiver pauses (``worker.fleet.breaker``).
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import structlog

from processor_shared.aws_edge import backoff_ceiling
from worker.config.settings import Settings
from worker.errors import Interrupted, LedgerError, StorageError
from worker.fleet.breaker import Breaker
from worker.fleet.claims import FleetClaims
from worker.fleet.messages import Messages
from worker.fleet.record import ClaimKind, ClaimPlan, FleetState, JobRecords, RecordError
from worker.fleet.results import ManifestCheck, ResultChecks
from worker.fleet.settle import Held, Settler, as_found
from worker.fleet.workqueue import (
    MAX_BATCH,
    MalformedMessage,
    QueueError,
    Received,
    WorkQueue,
    parse_message,
)
from worker.jobs.identity import Identity
from worker.jobs.job import Job
from worker.jobs.outcome import Attempt, Outcome
from worker.runner.pipeline import Pipeline
from worker.runner.process import StopToken
from worker.runner.recorder import Recorded
from worker.state.ledger import Ledger
from worker.state.queue import QueueLedger
from worker.storage.base import ObjectStore

#: First and longest wait after a failed receive (the endpoint down, throttling).
RECEIVE_BACKOFF_S = (1.0, 30.0)

#: How long the receiver waits for a slot to free before looking again. Only a
#: fallback: a freed slot (or a dropped reservation) notifies the receiver at once.
SLOT_WAIT_S = 1.0

#: When the ledger cannot take a claim (full disk), the message comes back after this long.
LEDGER_TROUBLE_DELAY_S = 30

#: Ledger reason of a job that ends because its result already exists.
ALREADY_PROCESSED = "already processed: a _manifest.json of this version exists"

#: A job that runs in a slot thread: (job, stop token) -> the job as it ended.
Runner = Callable[[Job, StopToken], Job]

log = structlog.get_logger("processor.queue")


class QueueSlots(Protocol):
    """The daemon's slots as the consumer uses them (``worker.daemon.slots.Slots``)."""

    def reserve_for_poll(self, wanted: int) -> int:
        """Reserve up to ``wanted`` free slots for one receive; how many were reserved."""

    def end_poll(self, unused: int) -> None:
        """Give back reservations no message used."""

    def start_queue_job(self, job: Job, run: Runner) -> bool:
        """Turn one reservation into a running slot; False once a drain has begun."""

    def wait_for_slot(self, timeout: float) -> None:
        """Return when a slot may have freed, at most ``timeout`` seconds later."""


class QueueConsumer:
    def __init__(
        self, settings: Settings, ledger: Ledger, pipeline: Pipeline, queue: WorkQueue,
        slots: QueueSlots, records: JobRecords, *, holder: str, clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._q = settings.queue
        self._queue_ledger = QueueLedger(ledger)
        self._pipeline = pipeline
        self._store: ObjectStore = pipeline.store
        self._queue = queue
        self._messages = Messages(queue)
        self._slots = slots
        self._clock = clock
        self._claims = FleetClaims(records, holder, lease_s=self._q.visibility_s,
                                   max_attempts=settings.processing.max_attempts, clock=clock)
        self.breaker = Breaker(self._probe_storage, settings.processing.retry_base_s,
                               settings.processing.retry_max_s, clock=clock)
        self._held: dict[str, Held] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        #: Settles (record write, message delete) after the slot is freed, so the next
        #: receive overlaps them; and the manifest checks' reads (two per job), so they
        #: overlap the claim.
        self._io = ThreadPoolExecutor(max_workers=3 * settings.processing.concurrency + 2,
                                      thread_name_prefix="queue-io")
        self._results = ResultChecks(settings, self._store, self._io)
        self._settler = Settler(settings, self._claims, self._messages, self._results, self.breaker, clock)

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        loops = ((self._receive_loop, "queue-receive"), (self._heartbeat_loop, "queue-heartbeat"))
        for target, name in loops:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop_receiving(self) -> None:
        """No more receives (a drain); a receive in flight hands back what it brings at once."""
        self._stopping.set()

    def close(self) -> None:
        """Stop both threads; hand back any message still held (its job has been stopped)."""
        self._stopping.set()
        receiver = self._threads[0] if self._threads else None
        if receiver is not None:
            receiver.join(self._q.wait_s + 10)  # a long poll in flight returns within wait_s
        self._closed.set()
        for thread in self._threads[1:]:
            thread.join(5)
        self._threads.clear()
        self._io.shutdown(wait=True)  # the settles of jobs that ended: before anything is left
        with self._lock:
            left, self._held = list(self._held.values()), {}
        for held in left:
            with held.lock:
                held.settled = True
            self._messages.release(held.receipt, held.message_id, 0, "daemon stopped", held.job_id)

    @property
    def holding(self) -> int:
        with self._lock:
            return len(self._held)

    @property
    def holder(self) -> str:
        return self._claims.holder.instance

    def status(self) -> dict[str, Any]:
        pause = self.breaker.pause
        return {"url": self._q.url, "held": self.holding, "holder": self.holder,
                "receiving": not self._stopping.is_set() and pause is None,
                "paused": pause.describe() if pause is not None else None,
                "visibility_s": self._q.visibility_s}

    # -- receiving ------------------------------------------------------------

    def _receive_loop(self) -> None:
        failures = 0  # receives failed in a row: the backoff doubles with them, no jitter
        while not self._stopping.is_set():
            if not self.breaker.wait_and_probe(self._stopping):
                continue
            wanted = self._slots.reserve_for_poll(MAX_BATCH)
            if wanted == 0:
                self._slots.wait_for_slot(SLOT_WAIT_S)
                continue
            used, failed = 0, False
            try:
                messages = self._queue.receive(wanted, self._q.wait_s)
                failures = 0
                for message in messages:
                    used += self._take(message)
            except QueueError as exc:
                log.warning("queue_receive_failed", error=str(exc),
                            retry_in_s=backoff_ceiling(failures + 1, *RECEIVE_BACKOFF_S))
                failed = True
            except Exception:
                # Never let the receiver die: the daemon would hold its slots idle.
                log.exception("queue_receive_crashed")
                failed = True
            finally:
                self._slots.end_poll(wanted - used)
            if failed:  # the backoff holds no slot: local jobs run meanwhile
                failures += 1
                self._stopping.wait(backoff_ceiling(failures, *RECEIVE_BACKOFF_S))

    def _take(self, message: Received) -> int:
        """Start the message's job in a reserved slot (1), or deal with it at once (0)."""
        try:
            identity = parse_message(message.body, self._q.input_bucket)
        except MalformedMessage as exc:
            log.error("queue_message_malformed", message_id=message.message_id, field=exc.field,
                      error=str(exc), receive_count=message.receive_count)
            self._messages.dead_letter(message.receipt, message.message_id, message.body,
                                       f"malformed message: {exc}", None)
            return 0
        if self._stopping.is_set() or self.breaker.pause is not None:
            why = "daemon draining" if self._stopping.is_set() else "receiving paused"
            self._messages.hand_back(message.receipt, message.message_id, message.body, 0, why, None)
            return 0
        bound = log.bind(message_id=message.message_id, key=identity.key)
        # Read while the claim is written; dropped (or never asked) unless the job runs here.
        check = self._results.start_check(identity)
        started = 0
        try:
            started = self._start(message, identity, check, bound)
        finally:
            if not started:
                check.cancel()
        return started

    def _start(self, message: Received, identity: Identity, check: ManifestCheck, bound: Any) -> int:
        """Claim the message's job and start it in a reserved slot (1), or end its message (0)."""
        try:
            claim = self._claims.claim(identity, message.message_id)
        except RecordError as exc:
            bound.error("queue_claim_failed", error=str(exc))
            self.breaker.open("job records", str(exc))
            self._messages.hand_back(message.receipt, message.message_id, message.body,
                                     int(self._settings.processing.retry_base_s),
                                     "job records unavailable", None)
            return 0
        record = claim.record
        bound = bound.bind(job_id=record.job_id, fleet_state=record.state.value)
        if claim.kind is ClaimKind.DROP:
            bound.info("queue_duplicate_dropped", reason=claim.reason)
            self._messages.delete(message.receipt, message.message_id, record.job_id)
            return 0
        if claim.kind is ClaimKind.DEFER:
            bound.info("queue_message_deferred", reason=claim.reason)
            hidden = max(1, math.ceil(claim.until - self._clock()) + 2)
            self._messages.release(message.receipt, message.message_id, hidden, claim.reason,
                                   record.job_id)
            return 0
        if claim.kind is ClaimKind.ENDED:
            self._settler.ended(message, claim)
            return 0
        return self._start_claimed(message, identity, claim, check, bound)

    def _start_claimed(self, message: Received, identity: Identity, claim: ClaimPlan,
                       check: ManifestCheck, bound: Any) -> int:
        """The claim is this daemon's: the job into the ledger and a slot (1), or its message ended (0)."""
        record = claim.record
        try:
            job, claimed = self._queue_ledger.claim_for_message(identity, record.attempts,
                                                                record.counted_attempts)
        except LedgerError as exc:
            bound.error("queue_claim_failed", error=str(exc))
            self._claims.settle(claim, FleetState.QUEUED, record.counted_attempts,
                                f"ledger error on {self.holder}")
            self._messages.hand_back(message.receipt, message.message_id, message.body,
                                     LEDGER_TROUBLE_DELAY_S, "ledger error", record.job_id)
            return 0
        held = Held(message.message_id, message.receipt, message.body, message.receive_count, job.id,
                    claim, self._clock(), check)
        if not claimed:
            # This ledger holds the job as running (it cannot be: this process
            # holds no such claim) or succeeded (the fleet record was lost).
            bound.warning("queue_claim_refused_by_ledger", state=job.state.value)
            self._settle(held, as_found(job))
            return 0
        if claim.kind is ClaimKind.FAIL:
            # Its holders died max_attempts times: failed for good, without a run.
            bound.error("job_holder_deaths_exhausted", reason=claim.reason)
            self._settle(held, self._pipeline.record(job, Attempt(Outcome.FAILED, claim.reason)))
            return 0
        with self._lock:
            self._held[job.id] = held
        bound.info("queue_message_received", attempt=record.attempts,
                   counted_attempts=record.counted_attempts, receive_count=message.receive_count,
                   takeover=claim.death or None)
        if self._slots.start_queue_job(job, functools.partial(self._run, held=held)):
            return 1
        # A drain began between the claim and the start: hand it straight back
        # (through the one outcome policy, like every other end of an attempt).
        try:
            ended = self._pipeline.record(job, Attempt(Outcome.REQUEUE, "daemon draining"))
        except (LedgerError, StorageError) as exc:
            log.error("job_not_recorded", job_id=job.id, error=str(exc))
            ended = Recorded(job, None)
        self._settle(held, ended)
        return 0

    # -- running --------------------------------------------------------------

    def _run(self, job: Job, token: StopToken, *, held: Held) -> Job:
        """The job in a slot thread: manifest check, the pipeline, then settle the message."""
        ended = Recorded(job, None)  # nothing recorded (yet): the message is released
        held.token = token
        try:
            if held.lost:
                ended = self._pipeline.record(job, Attempt(Outcome.REQUEUE, "the claim was lost"))
            elif self._already_processed(held, job):
                done = Attempt(Outcome.SUCCEEDED, note=ALREADY_PROCESSED,
                               result_prefix=self._pipeline.result_prefix(job))
                ended = self._pipeline.record(job, done)
                log.info("job_already_processed", job_id=job.id, key=job.key, reason=ALREADY_PROCESSED)
            else:
                # The same run as a local job's (job logs expired there too).
                ended = self._pipeline.run_attempt(job, token)
        except Interrupted as exc:  # a BaseException: a stop hands the message back, never a crash
            ended = self._pipeline.stopped(job, exc)
        except Exception as exc:  # noqa: BLE001 (Pipeline.crash logs it, traceback included)
            ended = self._pipeline.crash(job, exc)
        finally:
            # The outcome is in the ledger: the slot may take the next job while the
            # record and the message are settled (the daemon's stop waits for them).
            try:
                self._io.submit(self._settle_quietly, held, ended)
            except RuntimeError:  # the consumer is closing: settle here
                self._settle_quietly(held, ended)
        return ended.job

    def _already_processed(self, held: Held, job: Job) -> bool:
        check, held.check = held.check, None
        if check is None:
            return self._results.already_processed(job.identity)
        return check.already_processed()

    def _settle_quietly(self, held: Held, ended: Recorded) -> None:
        try:
            self._settle(held, ended)
        except Exception:  # a settle that crashed: the message comes back after its lease
            log.exception("queue_settle_crashed", job_id=held.job_id, message_id=held.message_id)

    def _settle(self, held: Held, ended: Recorded) -> None:
        """The message is no longer held: the settler ends it (and the fleet claim) from the move."""
        with self._lock:
            self._held.pop(held.job_id, None)
        with held.lock:  # waits for an extension in flight
            held.settled = True
        if held.lost:
            # Another instance holds the job now (and its message): leave both alone.
            log.warning("queue_message_left", job_id=ended.job.id, message_id=held.message_id,
                        reason="the claim was lost to another instance")
            return
        self._settler.settle(held, ended)

    def _probe_storage(self) -> None:
        """Raises StorageError while the output bucket does not answer (a missing key is an answer)."""
        self._store.read_json(self._settings.s3.output_bucket, "_processor-probe")

    def _heartbeat_loop(self) -> None:
        every = max(1.0, self._q.visibility_s / 3)
        while not self._closed.wait(min(1.0, every / 4)):
            now = self._clock()
            with self._lock:  # a clock stepped back makes a message due: extended, never left to lapse
                due = [h for h in self._held.values() if not 0.0 <= now - h.extended_at < every]
            for held in due:
                self._extend(held, now, every)

    def _extend(self, held: Held, now: float, every: float) -> None:
        """Extend the message's visibility and renew the claim; stop the job once the claim is lost."""
        try:
            with held.lock:
                if held.settled:
                    return
                self._queue.set_visibility(held.receipt, self._q.visibility_s)
                kept = self._claims.renew(held.claim)
            held.extended_at = now
            if kept:
                held.renewed_at = now
                return
            why = "another instance took the job over"
        except (QueueError, RecordError) as exc:
            # Tried again at half the interval, until the lease would run out.
            held.extended_at = now - every / 2
            log.warning("queue_extend_failed", job_id=held.job_id, message_id=held.message_id,
                        error=str(exc))
            if now - held.renewed_at < self._claims.lease_s:
                return
            why = "the claim could not be renewed within its lease"
        # At most one instance runs a job: past its lease this one stops.
        held.lost = True
        log.error("job_claim_lost", job_id=held.job_id, reason=why)
        if held.token is not None:
            held.token.stop(StopToken.SHUTDOWN)

