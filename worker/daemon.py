"""The daemon's lifecycle: start, dispatch jobs to slots, drain, exit.

Signal handlers only put the signal on a queue; ``signal.set_wakeup_fd`` and a
self-pipe wake the main loop, which does all the work (dispatch, sd_notify,
watchdog) and never sleeps past the next due job. SIGTERM/SIGINT start a
graceful drain: no new jobs, running ones get ``processing.drain_timeout_s``
to finish, then they are stopped and left queued. A second signal is a fast
stop. On start, jobs a crash left running go back to the queue.

With a work queue (``[queue] url``) a ``QueueConsumer`` fills free slots from
it; a drain then stops receiving at once and stops running queue jobs at once,
so their messages go back to the queue for another instance within seconds
(local jobs keep the drain timeout). An optional ``InstanceGuard`` is told
when the daemon holds jobs (scale-in protection) and can start the drain
(a Spot interruption notice).
"""

from __future__ import annotations

import os
import queue
import select
import signal
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import structlog

from worker import __version__
from worker.config import Settings
from worker.control_server import ControlServer
from worker.errors import LedgerError
from worker.fleet.slots import FleetSlots, InstanceGuard, _Slot
from worker.job import Job
from worker.ledger import Ledger
from worker.ledger_schema import ORIGIN_LOCAL
from worker.outcome import crashed
from worker.pipeline import Pipeline
from worker.process import StopToken, reap_orphans
from worker.states import JobState
from worker.telemetry import metrics, systemd

if TYPE_CHECKING:
    from worker.fleet.consumer import QueueConsumer, Runner
    from worker.fleet.workqueue import WorkQueue

#: Longest the main loop sleeps with nothing to do (also the watchdog cadence).
#: Work never waits for it: submissions and finished jobs wake the loop at once.
IDLE_WAKE_S = 1.0

#: At most this often the loop recounts the ledger for systemd's STATUS line
#: (a GROUP BY over every job the ledger keeps), not on every wake-up.
STATUS_INTERVAL_S = 1.0

log = structlog.get_logger("processor.daemon")


class Daemon(FleetSlots):
    def __init__(
        self, settings: Settings, ledger: Ledger, pipeline: Pipeline,
        *, clock: Callable[[], float] = time.time, idle_wake_s: float = IDLE_WAKE_S,
        install_signals: bool = True, work_queue: WorkQueue | None = None,
        guard: InstanceGuard | None = None,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.pipeline = pipeline
        self._clock = clock
        self._idle_wake_s = idle_wake_s
        self._install = install_signals
        self._signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._slots: dict[str, _Slot] = {}
        self._slots_lock = threading.Lock()
        #: Notified whenever a slot is freed (the drain's fast stop waits on it).
        self._slot_freed = threading.Condition(self._slots_lock)
        #: Claimed jobs for the slot threads; None tells a slot thread to exit.
        self._work: queue.SimpleQueue[tuple[Job, StopToken, Runner] | None] = queue.SimpleQueue()
        self._slot_threads: list[threading.Thread] = []
        #: Slots being claimed for (see _claim).
        self._reserved = 0
        #: Slots reserved for a work-queue receive in flight (see reserve_for_poll).
        self._polling = 0
        self._guard = guard
        self._guard_busy: bool | None = None
        self._consumer: QueueConsumer | None = None
        if work_queue is not None:
            from worker.fleet.consumer import QueueConsumer

            self._consumer = QueueConsumer(settings, ledger, pipeline, work_queue, self, clock=clock)
        self._draining = False
        self._drain_deadline = 0.0
        self._last_status = ""
        self._status_at = -STATUS_INTERVAL_S
        self._status_stale = False

    # -- public ---------------------------------------------------------------

    def run(self) -> int:
        """Serve until a stop signal; return the exit status (0 on a clean stop)."""
        for group in reap_orphans(self.settings.paths.work):
            log.warning("orphan_killed", pgid=group,
                        reason="a processing command outlived the previous daemon")
        for job in self.ledger.requeue_interrupted("interrupted: daemon restarted"):
            log.warning("job_requeued", job_id=job.id, key=job.key, state=job.state.value,
                        attempt=job.attempts, reason="interrupted by a previous stop or crash")
        for job in self.ledger.hand_back_queue_jobs(
                "handed back: daemon restarted; its message returns through the work queue"):
            log.warning("job_handed_back", job_id=job.id, key=job.key, attempt=job.attempts,
                        reason="a queue job is not re-run from the ledger after a restart")
        server = ControlServer(self.settings.paths.socket, self._handlers())
        previous = self._install_signals() if self._install else None
        try:
            self._start_slot_threads()
            server.start()
            if self._consumer is not None:
                self._consumer.start()
            log.info("daemon_started", version=__version__, pid=os.getpid(),
                     socket=str(self.settings.paths.socket),
                     concurrency=self.settings.processing.concurrency,
                     queue=self.settings.queue.url or None,
                     # which sd_notify/journald code runs: "systemd-python" or "builtin"
                     systemd_backend=systemd.BACKEND)
            systemd.ready(self._status_text())
            self._loop()
        finally:
            server.stop()
            self._stop_slot_threads()
            if self._consumer is not None:
                self._consumer.close()
            if self._guard is not None:
                if self._guard_busy and not self._busy():
                    # The last job ended after the loop's last look: say so before closing.
                    self._guard.set_busy(False)
                self._guard.close()
            if previous is not None:
                self._restore_signals(previous)
            # Mark the pipe closed before closing it, so a late wake() cannot
            # write into whatever file reuses the descriptor number.
            wake_w, self._wake_w = self._wake_w, -1
            os.close(wake_w)
            os.close(self._wake_r)
        log.info("daemon_stopped")
        return 0

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Act as if ``signum`` arrived (tests, and embedding without signals)."""
        self._signals.put(signum)
        self.wake()

    def cancel(self, job_id: str) -> bool:
        """Stop a running job as on timeout; it ends cancelled. False if not running here."""
        with self._slots_lock:
            slot = self._slots.get(job_id)
        if slot is None:
            return False
        log.info("job_cancel_requested", job_id=job_id, key=slot.job.key)
        slot.token.stop(StopToken.CANCEL)
        return True

    def wake(self) -> None:
        """Wake the main loop (a job was submitted or finished). Safe from any thread."""
        fd = self._wake_w
        if fd < 0:
            return  # the daemon has stopped
        try:
            os.write(fd, b"\0")
        except BlockingIOError:
            pass  # the pipe is full: the loop is waking anyway

    # -- main loop ------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            self._handle_signals()
            self._check_guard()
            if self._draining:
                if not self._busy():
                    return
                if self._clock() >= self._drain_deadline:
                    self._stop_running("drain timeout")
                    self._join_all(self.settings.processing.kill_grace_s + 15)
                    return
            else:
                self._dispatch()
            systemd.watchdog()
            self._publish_status()
            self._sleep(self._sleep_for())

    def _sleep_for(self) -> float:
        if self._status_stale:
            due = self._status_at + STATUS_INTERVAL_S - time.monotonic()
            return max(0.0, min(due, self._work_sleep()))
        return self._work_sleep()

    def _work_sleep(self) -> float:
        if self._draining:
            return min(self._idle_wake_s, max(0.0, self._drain_deadline - self._clock()))
        due = self.ledger.next_due_at()
        if due is None or self._free_slots() == 0:
            return self._idle_wake_s
        return min(self._idle_wake_s, max(0.0, due - self._clock()))

    def _sleep(self, timeout: float) -> None:
        try:
            ready, _, _ = select.select([self._wake_r], [], [], timeout)
        except InterruptedError:  # pragma: no cover - PEP 475 retries select
            return
        if ready:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass

    def _dispatch(self) -> None:
        while (claimed := self._claim()) is not None:
            self._work.put(claimed)

    def _claim(self) -> tuple[Job, StopToken, Runner] | None:
        """Claim the next due job into a free slot; None when no slot or no job.

        The slot is reserved before the ledger is asked, so the main loop and a
        slot thread claiming at the same time never run more than ``concurrency``,
        and a drain (which waits for ``_busy()``, reservations included) never
        ends while a claim is under way; nothing is claimed once it has begun.
        """
        with self._slots_lock:
            if self._draining or self._free_slots_locked() <= 0:
                return None
            self._reserved += 1
        job = None
        try:
            job = self.ledger.claim_next()
        finally:
            with self._slots_lock:
                self._reserved -= 1
                if job is not None:
                    token = StopToken()
                    self._slots[job.id] = _Slot(job, token, time.monotonic())
        if job is None:
            self.wake()  # a drain may be waiting for this reservation to go
            return None
        log.info("job_started", job_id=job.id, bucket=job.bucket, key=job.key,
                 state=job.state.value, attempt=job.attempts)
        return job, token, self.pipeline.run

    def _start_slot_threads(self) -> None:
        """One long-lived thread per slot: handing a job over is a queue put, where
        starting a thread per job would wait for the new thread to get the GIL."""
        for n in range(self.settings.processing.concurrency):
            thread = threading.Thread(target=self._slot_thread, name=f"slot-{n + 1}", daemon=True)
            thread.start()
            self._slot_threads.append(thread)

    def _stop_slot_threads(self, timeout_s: float = 5.0) -> None:
        for _ in self._slot_threads:
            self._work.put(None)
        deadline = time.monotonic() + timeout_s
        for thread in self._slot_threads:
            # A job stuck past the drain's deadline keeps its thread; it is a
            # daemon thread and does not hold up the exit.
            thread.join(max(0.0, deadline - time.monotonic()))
        self._slot_threads.clear()

    def _slot_thread(self) -> None:
        while (item := self._work.get()) is not None:
            while item is not None:
                self._run_job(*item)
                # Straight on to the next due job, without a round trip through
                # the main loop; the loop still dispatches new submissions.
                item = self._claim_quietly()

    def _claim_quietly(self) -> tuple[Job, StopToken, Runner] | None:
        try:
            return self._claim()
        except LedgerError as exc:
            # The main loop meets the same error on its next claim and handles it there.
            log.warning("claim_failed", error=str(exc))
            return None

    def _run_job(self, job: Job, token: StopToken, run: Runner) -> None:
        structlog.contextvars.bind_contextvars(job_id=job.id)
        started = time.monotonic()
        final = job
        try:
            final = run(job, token)
        except Exception as exc:
            log.exception("job_crashed", job_id=job.id, key=job.key)
            try:
                final = self.pipeline.record(job, crashed(exc))
            except Exception:
                log.exception("job_not_recorded", job_id=job.id)
        finally:
            duration_s = time.monotonic() - started
            log.info(
                "job_finished", job_id=final.id, bucket=final.bucket, key=final.key,
                state=final.state.value, attempt=final.attempts, duration_s=round(duration_s, 3),
                bytes_in=final.bytes_in, bytes_out=final.bytes_out,
                exit_code=final.exit_code, error=final.error,
            )
            metrics.job_finished(final, duration_s)
            # Freed only now: a drain waits for the slot, so these lines are
            # queued before the daemon stops and flushes its log sinks.
            with self._slots_lock:
                self._slots.pop(job.id, None)
                self._slot_freed.notify_all()
            structlog.contextvars.clear_contextvars()
            self.wake()

    # -- signals and drain ----------------------------------------------------

    def _install_signals(self) -> dict[int, Any]:
        previous: dict[int, Any] = {}
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            # Only enqueue: logging or locking inside a handler can deadlock.
            previous[signum] = signal.signal(signum, lambda s, _f: self._signals.put(s))
        previous[-1] = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        return previous

    @staticmethod
    def _restore_signals(previous: Mapping[int, Any]) -> None:
        signal.set_wakeup_fd(previous[-1])
        for signum, handler in previous.items():
            if signum != -1:
                signal.signal(signum, handler)

    def _handle_signals(self) -> None:
        while True:
            try:
                signum = self._signals.get_nowait()
            except queue.Empty:
                return
            if signum == signal.SIGHUP:
                log.info("signal_ignored", signal="SIGHUP",
                         reason="reload is not supported; restart the unit")
            elif not self._draining:
                self._handle_term(signum)
            else:
                log.warning("fast_stop", signal=signal.Signals(signum).name)
                self._stop_running("second stop signal")
                self._drain_deadline = self._clock()

    def _handle_term(self, signum: int) -> None:
        self._start_drain(f"signal {signal.Signals(signum).name}")

    def _start_drain(self, reason: str) -> None:
        with self._slots_lock:
            self._draining = True
            running = len(self._slots)
            from_queue = [s for s in self._slots.values() if s.queued_from_queue]
        self._drain_deadline = self._clock() + self.settings.processing.drain_timeout_s
        log.info("drain_started", reason=reason, running=running,
                 drain_timeout_s=self.settings.processing.drain_timeout_s)
        systemd.stopping(f"draining: {running} running")
        if self._consumer is not None:
            # Queue jobs go back to the queue at once, for another instance to
            # take within seconds; local jobs have the drain timeout to finish.
            self._consumer.stop_receiving()
            for slot in from_queue:
                log.info("job_interrupted", job_id=slot.job.id, key=slot.job.key,
                         reason="drain: handing the message back to the work queue")
                slot.token.stop(StopToken.SHUTDOWN)

    def _stop_running(self, why: str) -> None:
        with self._slots_lock:
            slots = list(self._slots.values())
        for slot in slots:
            log.warning("job_interrupted", job_id=slot.job.id, key=slot.job.key, reason=why)
            slot.token.stop(StopToken.SHUTDOWN)

    def _join_all(self, timeout: float) -> None:
        """Wait until every running job has ended and freed its slot, at most ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._slot_freed:
            while self._slots and (left := deadline - time.monotonic()) > 0:
                self._slot_freed.wait(left)

    # -- status ---------------------------------------------------------------

    def _busy(self) -> int:
        with self._slots_lock:
            return len(self._slots) + self._reserved

    def _free_slots(self) -> int:
        with self._slots_lock:
            return self._free_slots_locked()


    def _status_text(self) -> str:
        counts = self.ledger.counts()
        text = (
            f"{counts['running']} running, {counts['queued']} queued, "
            f"{counts['succeeded']} succeeded, {counts['failed']} failed"
        )
        if self._consumer is not None:
            text += f"; work queue: {self._consumer.holding} message(s) held"
        return text

    def _publish_status(self) -> None:
        now = time.monotonic()
        if now - self._status_at < STATUS_INTERVAL_S:
            self._status_stale = True  # _sleep_for wakes the loop when it is due
            return
        self._status_at, self._status_stale = now, False
        text = self._status_text()
        if text != self._last_status:
            systemd.status(("draining: " if self._draining else "") + text)
            self._last_status = text

    def status(self) -> dict[str, Any]:
        counts = self.ledger.counts()
        # Local jobs only: a queue job handed back waits in its queue, not here.
        queued = self.ledger.list_jobs(JobState.QUEUED, limit=1, origin=ORIGIN_LOCAL)
        with self._slots_lock:
            running = [
                {"job_id": s.job.id, "key": s.job.key, "attempt": s.job.attempts,
                 "running_s": round(time.monotonic() - s.started, 1)}
                for s in self._slots.values()
            ]
        return {
            "pid": os.getpid(),
            "version": __version__,
            "draining": self._draining,
            "slots": self.settings.processing.concurrency,
            "busy": len(running),
            "running": running,
            "counts": counts,
            "oldest_queued_age_s": round(self._clock() - queued[0].created_at, 1) if queued else None,
            "queue": self._consumer.status() if self._consumer is not None else None,
        }

    def _handlers(self) -> dict[str, Callable[[Mapping[str, Any]], Mapping[str, Any]]]:
        def wake(_request: Mapping[str, Any]) -> Mapping[str, Any]:
            self.wake()
            return {}

        def cancel(request: Mapping[str, Any]) -> Mapping[str, Any]:
            return {"running": self.cancel(str(request.get("job_id", "")))}

        return {
            "ping": lambda _r: {"pid": os.getpid(), "version": __version__},
            "wake": wake,
            "status": lambda _r: self.status(),
            "cancel": cancel,
        }
