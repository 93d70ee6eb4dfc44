"""The daemon's job slots: the table of running jobs, its reservations, and the threads that run them.

``worker.daemon.lifecycle.Daemon`` owns one ``Slots``; ``processing.concurrency`` slots
are shared by two sources of work:

- local jobs, claimed from the ledger (``claim``, ``fill``): a slot is reserved
  before the ledger is asked, so the main loop and a slot thread claiming at
  the same time never run more than ``concurrency``, and a drain (which waits
  for ``busy()``, reservations included) never ends while a claim is under way;
- a work queue's messages: the ``QueueConsumer``'s receiver reserves free
  slots for each receive (so it never asks for more messages than it can
  start) and turns a reservation into a running slot per message
  (``worker.fleet.consumer.QueueSlots``, the protocol it sees this through).

One lock guards the table, both kinds of reservation and the drain flag. Its
condition is notified whenever a slot is freed or a reservation dropped, so a
receiver waiting for a slot hears of it at once instead of sleeping its full
wait. Each slot has a long-lived thread: handing a job over is a queue put,
where starting a thread per job would wait for the new thread to get the GIL.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from worker.errors import Interrupted, LedgerError
from worker.jobs.job import Job
from worker.runner.process import StopToken
from worker.telemetry import metrics

if TYPE_CHECKING:
    from worker.fleet.consumer import Runner
    from worker.runner.pipeline import Pipeline
    from worker.state.ledger import Ledger

log = structlog.get_logger("processor.daemon")


@dataclass
class Slot:
    """One running job: what it is, how to stop it, since when."""

    job: Job
    token: StopToken
    #: When the slot was taken, on the daemon's clock.
    started: float
    #: A work-queue job: a drain stops it at once so its message goes back.
    queued_from_queue: bool = False


class Slots:
    """``concurrency`` slots over the ledger's local jobs and a work queue's messages (module docstring)."""

    def __init__(self, concurrency: int, ledger: Ledger, pipeline: Pipeline,
                 wake: Callable[[], None], *, clock: Callable[[], float] = time.time) -> None:
        self.concurrency = concurrency
        self._ledger = ledger
        self._pipeline = pipeline
        #: The daemon's clock: slot start times and job durations.
        self._clock = clock
        #: Wakes the daemon's main loop: a job started or ended, a drain may be over.
        self._wake = wake
        self._table: dict[str, Slot] = {}
        self._lock = threading.Lock()
        #: Notified whenever a slot is freed or a reservation dropped.
        self._freed = threading.Condition(self._lock)
        #: Slots being claimed for (see claim).
        self._reserved = 0
        #: Slots reserved for a work-queue receive in flight (see reserve_for_poll).
        self._polling = 0
        self._draining = False
        #: Claimed jobs for the slot threads; None tells a slot thread to exit.
        self._work: queue.SimpleQueue[tuple[Job, StopToken, Runner] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    # -- the table ------------------------------------------------------------

    @property
    def draining(self) -> bool:
        """Whether a drain has begun: no slot is reserved or filled any more."""
        return self._draining

    def begin_drain(self) -> list[Slot]:
        """Take no new job from now on; the slots running at this moment."""
        with self._lock:
            self._draining = True
            return list(self._table.values())

    def busy(self) -> int:
        """Slots running a job or being claimed for (a drain waits for none to be left)."""
        with self._lock:
            return len(self._table) + self._reserved

    def free(self) -> int:
        with self._lock:
            return self._free_locked()

    def _free_locked(self) -> int:
        return self.concurrency - len(self._table) - self._reserved - self._polling

    def running(self) -> list[Slot]:
        """The slots running a job now (a snapshot)."""
        with self._lock:
            return list(self._table.values())

    def cancel(self, job_id: str) -> bool:
        """Stop a running job as on timeout; it ends cancelled. False if not running here."""
        with self._lock:
            slot = self._table.get(job_id)
        if slot is None:
            return False
        log.info("job_cancel_requested", job_id=job_id, key=slot.job.key)
        slot.token.stop(StopToken.CANCEL)
        return True

    def stop_running(self, why: str) -> int:
        """Stop every running job not already told to stop; how many were stopped."""
        with self._lock:
            # Not those already told to stop (a cancel, a queue job handed back).
            slots = [s for s in self._table.values() if not s.token.is_set()]
        for slot in slots:
            log.warning("job_interrupted", job_id=slot.job.id, key=slot.job.key, reason=why)
            slot.token.stop(StopToken.SHUTDOWN)
        return len(slots)

    def wait_empty(self, timeout: float) -> None:
        """Wait until every running job has ended and freed its slot, at most ``timeout``
        seconds of real time (a bound on a real wait, so not on self._clock)."""
        deadline = time.monotonic() + timeout
        with self._freed:
            while self._table and (left := deadline - time.monotonic()) > 0:
                self._freed.wait(left)

    # -- local jobs -----------------------------------------------------------

    def fill(self) -> None:
        """Claim due local jobs into free slots and hand them to the slot threads.

        A ledger error is raised (the main loop deals with it).
        """
        while (claimed := self.claim()) is not None:
            self._work.put(claimed)

    def claim(self) -> tuple[Job, StopToken, Runner] | None:
        """Claim the next due job into a free slot; None when no slot or no job.

        The slot is reserved before the ledger is asked (module docstring);
        nothing is claimed once a drain has begun.
        """
        with self._lock:
            if self._draining or self._free_locked() <= 0:
                return None
            self._reserved += 1
        job = None
        try:
            job = self._ledger.claim_next()
        finally:
            with self._lock:
                self._reserved -= 1
                if job is not None:
                    token = StopToken()
                    self._table[job.id] = Slot(job, token, self._clock())
                else:
                    # The reservation is gone: a receiver waiting for a free slot
                    # (wait_for_slot) must hear of it, or it sleeps its full wait.
                    self._freed.notify_all()
        if job is None:
            if self._draining:
                # The drain waits for reservations to go; an idle loop must
                # not wake itself here (it would spin: issue 19).
                self._wake()
            return None
        log.info("job_started", job_id=job.id, bucket=job.bucket, key=job.key,
                 state=job.state.value, attempt=job.attempts)
        return job, token, self._pipeline.run

    def _claim_quietly(self) -> tuple[Job, StopToken, Runner] | None:
        try:
            return self.claim()
        except LedgerError as exc:
            # The main loop meets the same error on its next claim and handles it there.
            log.warning("claim_failed", error=str(exc))
            return None

    # -- a work queue's messages (worker.fleet.consumer.QueueSlots) -----------

    def reserve_for_poll(self, wanted: int) -> int:
        with self._lock:
            if self._draining:
                return 0
            n = max(0, min(wanted, self._free_locked()))
            self._polling += n
            return n

    def end_poll(self, unused: int) -> None:
        with self._lock:
            self._polling -= unused
            self._freed.notify_all()
        # Local jobs due now take the slots first: left to the main loop, they
        # would race the receiver's next reservation, and lose every time.
        while (claimed := self._claim_quietly()) is not None:
            self._work.put(claimed)

    def start_queue_job(self, job: Job, run: Runner) -> bool:
        with self._lock:
            if self._draining:
                return False
            self._polling -= 1
            token = StopToken()
            self._table[job.id] = Slot(job, token, self._clock(), queued_from_queue=True)
        log.info("job_started", job_id=job.id, bucket=job.bucket, key=job.key,
                 state=job.state.value, attempt=job.attempts, origin="queue")
        self._work.put((job, token, run))
        self._wake()
        return True

    def wait_for_slot(self, timeout: float) -> None:
        with self._freed:
            if self._free_locked() <= 0 and not self._draining:
                self._freed.wait(timeout)

    # -- the slot threads -----------------------------------------------------

    def start_threads(self) -> None:
        for n in range(self.concurrency):
            thread = threading.Thread(target=self._thread, name=f"slot-{n + 1}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop_threads(self, timeout_s: float = 5.0) -> None:
        for _ in self._threads:
            self._work.put(None)
        # Real time, not self._clock: this bounds a real wait on threads.
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            # A job stuck past the drain's deadline keeps its thread; it is a
            # daemon thread and does not hold up the exit.
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()

    def _thread(self) -> None:
        while (item := self._work.get()) is not None:
            while item is not None:
                self._run_job(*item)
                # Straight on to the next due job, without a round trip through
                # the main loop; the loop still dispatches new submissions.
                item = self._claim_quietly()

    def _run_job(self, job: Job, token: StopToken, run: Runner) -> None:
        structlog.contextvars.bind_contextvars(job_id=job.id)
        started = self._clock()
        final = job
        try:
            final = run(job, token)
        except Interrupted as exc:  # a BaseException: the catch-all below never sees a stop
            final = self._pipeline.stopped(job, exc).job
        except Exception as exc:  # noqa: BLE001 (crash logs it, traceback included)
            final = self._pipeline.crash(job, exc).job
        finally:
            # The injected clock is wall time (the ledger's): a step back is no negative duration.
            duration_s = max(0.0, self._clock() - started)
            log.info(
                "job_finished", job_id=final.id, bucket=final.bucket, key=final.key,
                state=final.state.value, attempt=final.attempts, duration_s=round(duration_s, 3),
                bytes_in=final.bytes_in, bytes_out=final.bytes_out,
                exit_code=final.exit_code, error=final.error,
            )
            metrics.job_finished(final, duration_s)
            # Freed only now: a drain waits for the slot, so these lines are
            # queued before the daemon stops and flushes its log sinks.
            with self._lock:
                self._table.pop(job.id, None)
                self._freed.notify_all()
            structlog.contextvars.clear_contextvars()
            self._wake()
