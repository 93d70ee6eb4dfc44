"""Pull jobs from a fleet's shared work queue into the daemon's slots.

A receiver thread of its own asks the queue for as many messages as the
daemon has free slots (never more, so every slot is busy whenever a message is
visible) and long-polls; the main loop never waits on it. Each message becomes
a ledger job (the same id ``processorctl submit`` gives) run in a slot thread.
A heartbeat thread extends each held message's visibility every
``visibility_s / 3`` while its job runs. The message is deleted only once the
job's outcome is durable in the output bucket (``_manifest.json`` or
``_failed.json``); a retry (exit 75, S3 away) releases it with the backoff as
its visibility, and a drain releases it at once, so any instance may take it.

Before running, an existing ``_manifest.json`` of the same version means the
job was already processed (by any instance): it ends succeeded, the command
does not run, and the message is deleted. That makes duplicate messages and
redeliveries harmless. A malformed message is logged and left alone: it holds
no slot, and the queue's redrive policy moves it to the DLQ.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from worker.config import SQS_MAX_INVISIBLE_S, Settings
from worker.errors import LedgerError, StorageError
from worker.fleet.workqueue import (
    MAX_BATCH,
    MalformedMessage,
    QueueError,
    Received,
    WorkQueue,
    manifest_matches,
    parse_message,
)
from worker.job import Job
from worker.ledger import Ledger
from worker.outcome import Attempt, Outcome
from worker.pipeline import Pipeline
from worker.process import StopToken
from worker.states import JobState
from worker.storage.base import ObjectStore
from worker.storage.layout import FAILED_NAME, MANIFEST_NAME, fallback_prefix

#: First and longest wait after a failed receive (the endpoint down, throttling).
RECEIVE_BACKOFF_S = (1.0, 30.0)

#: How long the receiver waits for a slot to free before looking again.
SLOT_WAIT_S = 1.0

#: When the ledger cannot take a claim (full disk), the message is released for
#: this long: another instance can take it meanwhile.
LEDGER_TROUBLE_DELAY_S = 30

#: Ledger reason of a job that ends because its result already exists.
ALREADY_PROCESSED = "already processed: a _manifest.json of this version exists"

#: A job that runs in a slot thread: (job, stop token) -> the job as it ended.
Runner = Callable[[Job, StopToken], Job]

log = structlog.get_logger("processor.queue")


class SlotHost(Protocol):
    """What the consumer needs from the daemon: its slots (``worker.daemon.Daemon``)."""

    def reserve_for_poll(self, wanted: int) -> int:
        """Reserve up to ``wanted`` free slots for one receive; how many were reserved."""

    def end_poll(self, unused: int) -> None:
        """Give back reservations no message used."""

    def start_queue_job(self, job: Job, run: Runner) -> bool:
        """Turn one reservation into a running slot; False once a drain has begun."""

    def wait_for_slot(self, timeout: float) -> None:
        """Return when a slot may have freed, at most ``timeout`` seconds later."""


@dataclass
class Held:
    """A message this daemon holds while its job runs."""

    message_id: str
    receipt: str
    receive_count: int
    job_id: str
    #: time.monotonic() of the receive or the last visibility extension.
    extended_at: float
    #: Set once the message is deleted or released: no extension may follow
    #: (it would hide a released message again). Guarded by ``lock``.
    settled: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class QueueConsumer:
    def __init__(
        self, settings: Settings, ledger: Ledger, pipeline: Pipeline, queue: WorkQueue,
        host: SlotHost, *, clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._q = settings.queue
        self._ledger = ledger
        self._pipeline = pipeline
        self._store: ObjectStore = pipeline.store
        self._queue = queue
        self._host = host
        self._clock = clock
        self._held: dict[str, Held] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        loops = ((self._receive_loop, "queue-receive"), (self._heartbeat_loop, "queue-heartbeat"))
        for target, name in loops:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop_receiving(self) -> None:
        """No more receives (a drain); a receive in flight releases what it brings at once."""
        self._stopping.set()

    def close(self) -> None:
        """Stop both threads; release any message still held (its job has been stopped)."""
        self._stopping.set()
        receiver = self._threads[0] if self._threads else None
        if receiver is not None:
            receiver.join(self._q.wait_s + 10)  # a long poll in flight returns within wait_s
        self._closed.set()
        for thread in self._threads[1:]:
            thread.join(5)
        self._threads.clear()
        with self._lock:
            left, self._held = list(self._held.values()), {}
        for held in left:
            with held.lock:
                held.settled = True
            self._release(held.receipt, held.message_id, 0, "daemon stopped", held.job_id)

    @property
    def holding(self) -> int:
        with self._lock:
            return len(self._held)

    def status(self) -> dict[str, Any]:
        return {"url": self._q.url, "held": self.holding, "receiving": not self._stopping.is_set(),
                "visibility_s": self._q.visibility_s}

    # -- receiving ------------------------------------------------------------

    def _receive_loop(self) -> None:
        delay = RECEIVE_BACKOFF_S[0]
        while not self._stopping.is_set():
            wanted = self._host.reserve_for_poll(MAX_BATCH)
            if wanted == 0:
                self._host.wait_for_slot(SLOT_WAIT_S)
                continue
            used, failed = 0, False
            try:
                messages = self._queue.receive(wanted, self._q.wait_s)
                delay = RECEIVE_BACKOFF_S[0]
                for message in messages:
                    used += self._take(message)
            except QueueError as exc:
                log.warning("queue_receive_failed", error=str(exc), retry_in_s=delay)
                failed = True
            except Exception:
                # Never let the receiver die: the daemon would hold its slots idle.
                log.exception("queue_receive_crashed")
                failed = True
            finally:
                self._host.end_poll(wanted - used)
            if failed:  # the backoff holds no slot: local jobs run meanwhile
                self._stopping.wait(delay)
                delay = min(delay * 2, RECEIVE_BACKOFF_S[1])

    def _take(self, message: Received) -> int:
        """Start the message's job in a reserved slot (1), or deal with it at once (0)."""
        try:
            identity = parse_message(message.body, self._q.input_bucket)
        except MalformedMessage as exc:
            # Left invisible until its lease ends, then received again, until the
            # redrive policy moves it to the DLQ; it holds no slot meanwhile.
            log.error("queue_message_malformed", message_id=message.message_id, field=exc.field,
                      error=str(exc), receive_count=message.receive_count)
            return 0
        if self._stopping.is_set():
            self._release(message.receipt, message.message_id, 0, "daemon draining")
            return 0
        try:
            job, claimed = self._ledger.claim_for_message(identity, message.receive_count)
        except LedgerError as exc:
            log.error("queue_claim_failed", message_id=message.message_id, error=str(exc))
            self._release(message.receipt, message.message_id, LEDGER_TROUBLE_DELAY_S, "ledger error")
            return 0
        if not claimed:
            self._not_claimed(message, job)
            return 0
        held = Held(message.message_id, message.receipt, message.receive_count, job.id, time.monotonic())
        with self._lock:
            self._held[job.id] = held
        log.info("queue_message_received", job_id=job.id, message_id=message.message_id,
                 key=job.key, receive_count=message.receive_count)
        if self._host.start_queue_job(job, functools.partial(self._run, held=held)):
            return 1
        # A drain began between the claim and the start: hand it straight back
        # (through the one outcome policy, like every other end of an attempt).
        try:
            self._pipeline.record(job, Attempt(Outcome.REQUEUE, "daemon draining"))
        except (LedgerError, StorageError) as exc:
            log.error("job_not_recorded", job_id=job.id, error=str(exc))
        self._settle(held)  # released at once either way
        return 0

    def _not_claimed(self, message: Received, job: Job) -> None:
        """A message for a job running here already, or ended here earlier."""
        bound = log.bind(job_id=job.id, message_id=message.message_id, state=job.state.value)
        if job.state is JobState.RUNNING:
            # A duplicate of a job running here: keep it out of the way (no slot)
            # until the job has likely ended; then the manifest check settles it.
            bound.info("queue_message_deferred", reason="its job is running here")
            self._release(message.receipt, message.message_id, self._q.visibility_s, "job running here")
            return
        try:
            if job.state is JobState.SUCCEEDED and not self._already_processed(job):
                bound.warning("queue_manifest_missing",
                              reason="the ledger holds the job as succeeded but its manifest is gone")
            durable = job.state is not JobState.FAILED or self._failure_durable(job)
        except StorageError as exc:
            bound.warning("queue_message_kept", error=str(exc))
            return
        if durable:
            bound.info("queue_duplicate_dropped", reason=f"job already {job.state.value}")
            self._delete(message.receipt, message.message_id, job.id)

    # -- running --------------------------------------------------------------

    def _run(self, job: Job, token: StopToken, *, held: Held) -> Job:
        """The job in a slot thread: manifest check, the pipeline, then settle the message."""
        final = job
        try:
            if self._already_processed(job):
                done = Attempt(Outcome.SUCCEEDED, note=ALREADY_PROCESSED,
                               result_prefix=self._pipeline.result_prefix(job))
                final = self._pipeline.record(job, done)
                log.info("job_already_processed", job_id=job.id, key=job.key, reason=ALREADY_PROCESSED)
            else:
                final = self._pipeline.run(job, token)
        except Exception as exc:  # noqa: BLE001 (record_crash logs it, traceback included)
            final = self._pipeline.record_crash(job, exc)
        finally:
            self._settle(held)
        return final

    def _already_processed(self, job: Job) -> bool:
        """Whether the output bucket holds a manifest of this very version (S3 trouble: no).

        Looked for where the job's results land (worker.storage.layout): under the key, and
        under ``_by-id/<job id>/``, where a success goes when one of its outputs'
        keys would not fit under the key.
        """
        prefixes = dict.fromkeys([self._pipeline.result_prefix(job),
                                  fallback_prefix(self._settings.s3.output_prefix, job.id)])
        try:
            for prefix in prefixes:
                manifest = self._store.read_json(self._settings.s3.output_bucket, prefix + MANIFEST_NAME)
                if manifest is None:
                    continue
                current = None
                if not job.version_id and not job.etag:
                    info = self._store.head(job.bucket, job.key)
                    current = (info.version_id, info.etag)
                if manifest_matches(manifest, job.identity, current):
                    return True
        except StorageError as exc:
            # The pipeline meets the same trouble and retries as it always does.
            log.warning("manifest_check_failed", job_id=job.id, error=str(exc))
            return False
        return False

    def _failure_durable(self, job: Job) -> bool:
        """Whether ``_failed.json`` of this job is in the output bucket (written now if not)."""
        key = self._pipeline.result_prefix(job) + FAILED_NAME
        record = self._store.read_json(self._settings.s3.output_bucket, key)
        if record is not None and record.get("job_id") == job.id:
            return True
        return self._pipeline.recorder.write_failure_record(job, log.bind(job_id=job.id))

    def _settle(self, held: Held) -> None:
        """Delete, release or keep the message, by how the job ended in the ledger."""
        with self._lock:
            self._held.pop(held.job_id, None)
        with held.lock:  # waits for an extension in flight
            held.settled = True
        try:
            job = self._ledger.get(held.job_id)
        except LedgerError as exc:
            log.error("queue_settle_failed", job_id=held.job_id, error=str(exc))
            self._release(held.receipt, held.message_id, 0, "ledger error")
            return
        if job.state in (JobState.SUCCEEDED, JobState.CANCELLED):
            self._delete(held.receipt, held.message_id, job.id)
        elif job.state is JobState.FAILED:
            try:
                durable = self._failure_durable(job)
            except StorageError:
                durable = False
            if durable:
                self._delete(held.receipt, held.message_id, job.id)
            else:
                # Back after its lease; this ledger then writes _failed.json again.
                log.warning("queue_message_kept", job_id=job.id, message_id=held.message_id,
                            reason="_failed.json is not written yet")
        elif job.state is JobState.QUEUED:
            delay = max(0, math.ceil(job.next_attempt_at - self._clock()))
            self._release(held.receipt, held.message_id, delay, job.error or "handed back", job.id)
        else:  # still running: its outcome could not be recorded
            self._release(held.receipt, held.message_id, 0, "outcome not recorded", job.id)

    # -- queue calls: logged, never raised (the manifest check makes a redelivery harmless)

    def _delete(self, receipt: str, message_id: str, job_id: str) -> None:
        try:
            self._queue.delete(receipt)
        except QueueError as exc:
            log.warning("queue_delete_failed", job_id=job_id, message_id=message_id, error=str(exc))
        else:
            log.info("queue_message_deleted", job_id=job_id, message_id=message_id)

    def _release(self, receipt: str, message_id: str, delay_s: int, reason: str,
                 job_id: str | None = None) -> None:
        try:
            self._queue.set_visibility(receipt, min(delay_s, SQS_MAX_INVISIBLE_S))
        except QueueError as exc:
            log.warning("queue_release_failed", job_id=job_id, message_id=message_id, error=str(exc))
        else:
            log.info("queue_message_released", job_id=job_id, message_id=message_id,
                     visible_in_s=delay_s, reason=reason)

    def _heartbeat_loop(self) -> None:
        every = max(1.0, self._q.visibility_s / 3)
        while not self._closed.wait(min(1.0, every / 4)):
            now = time.monotonic()
            with self._lock:
                due = [h for h in self._held.values() if now - h.extended_at >= every]
            for held in due:
                try:
                    with held.lock:
                        if held.settled:
                            continue
                        self._queue.set_visibility(held.receipt, self._q.visibility_s)
                    held.extended_at = now
                except QueueError as exc:
                    # Tried again at half the interval; past the lease another
                    # instance may take the job (its manifest check then helps).
                    held.extended_at = now - every / 2
                    log.warning("queue_extend_failed", job_id=held.job_id,
                                message_id=held.message_id, error=str(exc))
