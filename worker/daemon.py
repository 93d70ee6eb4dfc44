"""The daemon's lifecycle as an API: start, dispatch jobs to slots, drain, stop.

``start(lock)`` is the start-up order (lock held, then recover, then serve);
``drain(timeout)`` the graceful stop (no new jobs, running ones get the drain
timeout, then are stopped and left queued); ``stop()`` the fast stop;
``wait()`` the exit status (worker.exitcodes). Signals are the CLI's business
(worker.cli maps them onto these calls). Requests and wake-ups reach the main
loop through a queue and a self-pipe. The loop, in its own thread, carries out
drains and stops, dispatches due jobs to the slot threads and sends sd_notify's
status and watchdog, and never sleeps past the next due job. It is not the only
one to claim: a slot thread that finishes a job claims the next due one itself,
and the queue consumer's receiver takes slots for messages (and, after each
receive, claims due local jobs: ``FleetSlots.end_poll``). ``_claim`` reserves
the slot before asking the ledger, so together they never run more than
``processing.concurrency``.

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
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import structlog

from worker import __version__, exitcodes
from worker.config import Settings
from worker.control_server import ControlServer
from worker.daemon_status import DaemonStatus, Notifier
from worker.errors import Interrupted, LedgerError
from worker.fleet.slots import FleetSlots, InstanceGuard, _Slot
from worker.job import Job
from worker.ledger import Ledger
from worker.pipeline import Pipeline
from worker.process import StopToken
from worker.recovery import recover
from worker.telemetry import metrics, systemd

if TYPE_CHECKING:
    from worker.fleet.consumer import QueueConsumer, Runner
    from worker.fleet.record import JobRecords
    from worker.fleet.workqueue import WorkQueue
    from worker.statelock import StateLock

#: Longest the main loop sleeps with nothing to do (also the watchdog cadence).
#: Work never waits for it: submissions and finished jobs wake the loop at once.
IDLE_WAKE_S = 1.0

log = structlog.get_logger("processor.daemon")


class _Request(NamedTuple):
    """A drain or a fast stop, for the main loop to carry out (see Daemon.drain/stop)."""

    fast: bool
    timeout_s: float | None
    reason: str


class Daemon(FleetSlots, DaemonStatus):
    """One state dir's job runner: ``start`` / ``drain`` / ``stop`` / ``wait`` (module docstring)."""

    def __init__(
        self, settings: Settings, ledger: Ledger, pipeline: Pipeline,
        *, clock: Callable[[], float] = time.time, idle_wake_s: float = IDLE_WAKE_S,
        work_queue: WorkQueue | None = None, job_records: JobRecords | None = None,
        holder: str = "", guard: InstanceGuard | None = None, notifier: Notifier = systemd,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.pipeline = pipeline
        self._clock = clock
        self._idle_wake_s = idle_wake_s
        self._notify = notifier
        self._requests: queue.SimpleQueue[_Request] = queue.SimpleQueue()
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

            if job_records is None:
                raise ValueError("a work queue needs the fleet's job records (queue.table)")
            self._consumer = QueueConsumer(settings, ledger, pipeline, work_queue, self, job_records,
                                           holder=holder or "unnamed", clock=clock)
        self._draining = False
        #: Set by drain()/stop() at once, before the loop has begun the drain.
        self._drain_requested = False
        self._drain_deadline = 0.0
        #: A drain timeout or a fast stop stopped a running job (exitcodes.INTERRUPTED).
        self._interrupted = False
        self._loop_thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._exit_status = exitcodes.OK
        self._crash: BaseException | None = None

    # -- lifecycle ------------------------------------------------------------

    def start(self, lock: StateLock, on_stopped: Callable[[], None] | None = None) -> None:
        """The start-up order, in one place; returns once READY=1 is sent and the loop runs.

        1. lock: ``lock`` is this state dir's, taken by the caller before anything
           touched the state dir (refused if not held), so recovery never requeues
           another daemon's jobs or kills its commands;
        2. recover (worker.recovery): orphaned commands, interrupted jobs;
        3. serve: bind the control socket, start the slots, the work-queue
           consumer and the main loop's thread, then tell systemd READY=1.

        ``on_stopped`` is called from the loop's thread once stopped. Raises
        ControlError when the socket is in use, leaving nothing running.
        """
        if not lock.held or lock.path.parent.resolve() != self.settings.paths.state_dir.resolve():
            raise ValueError(f"Daemon.start needs the held lock of {self.settings.paths.state_dir}, "
                             f"got {lock.path} (held: {lock.held})")
        if self._loop_thread is not None:
            raise RuntimeError("Daemon.start called twice")
        recover(self.settings.paths.work, self.ledger)
        self._serve(on_stopped)

    def drain(self, timeout: float | None = None, *, reason: str = "drain requested") -> None:
        """Take no new jobs; running ones get ``timeout`` s (None: ``processing.drain_timeout_s``),
        then are stopped and left queued. Queue jobs go back to their queue at once.

        Returns at once (`wait` for the end); STOPPING=1 goes out when the loop
        begins the drain. A no-op once draining.
        """
        self._drain_requested = True
        self._requests.put(_Request(False, timeout, reason))
        self.wake()

    def stop(self, *, reason: str = "stop requested") -> None:
        """Fast stop: stop running jobs now (left queued), then the daemon. Returns at once."""
        self._drain_requested = True
        self._requests.put(_Request(True, 0.0, reason))
        self.wake()

    @property
    def draining(self) -> bool:
        """Whether a drain or stop was requested (or the instance guard began one)."""
        return self._drain_requested or self._draining

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit status once stopped, None if still running after ``timeout`` seconds.

        exitcodes.OK: every job that was running finished (or, from a work
        queue, went back to it); exitcodes.INTERRUPTED: a drain timeout or a
        fast stop stopped running jobs, left queued for the next start. What
        crashed the main loop is raised here.
        """
        if self._loop_thread is None:
            raise RuntimeError("Daemon.wait before Daemon.start")
        if not self._stopped.wait(timeout):
            return None
        if self._crash is not None:
            raise self._crash
        return self._exit_status

    def _serve(self, on_stopped: Callable[[], None] | None) -> None:
        try:
            server = ControlServer(self.settings.paths.socket, self._handlers(), log=log)  # binds here
        except BaseException:
            self._close_wake_pipe()
            raise
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
            self._notify.ready(self._status_text())
            self._loop_thread = threading.Thread(
                target=self._run_loop, args=(server, on_stopped), name="daemon-loop", daemon=True)
            self._loop_thread.start()
        except BaseException:
            self._shut_down(server)
            raise

    def _run_loop(self, server: ControlServer, on_stopped: Callable[[], None] | None) -> None:
        try:
            try:
                self._loop()
                self._exit_status = exitcodes.INTERRUPTED if self._interrupted else exitcodes.OK
            finally:
                self._shut_down(server)
            log.info("daemon_stopped", exit_status=self._exit_status)
        except BaseException as exc:  # noqa: BLE001 - wait() raises it again, in its caller
            self._crash = exc
        finally:
            self._stopped.set()
            if on_stopped is not None:
                on_stopped()

    def _shut_down(self, server: ControlServer) -> None:
        server.stop()
        self._stop_slot_threads()
        if self._consumer is not None:
            self._consumer.close()
        if self._guard is not None:
            if self._guard_busy and not self._busy():
                # The last job ended after the loop's last look: say so before closing.
                self._guard.set_busy(False)
            self._guard.close()
        self._close_wake_pipe()

    def _close_wake_pipe(self) -> None:
        # Mark the pipe closed before closing it, so a late wake() cannot
        # write into whatever file reuses the descriptor number.
        wake_w, self._wake_w = self._wake_w, -1
        if wake_w >= 0:
            os.close(wake_w)
            os.close(self._wake_r)

    # -- public ---------------------------------------------------------------

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
            self._handle_requests()
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
            self._notify.watchdog()
            self._publish_status()
            self._sleep(self._sleep_for())

    def _sleep_for(self) -> float:
        if (due := self._status_due_in()) is not None:
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
                    self._slots[job.id] = _Slot(job, token, self._clock())
                else:
                    # The reservation is gone: a receiver waiting for a free slot
                    # (wait_for_slot) must hear of it, or it sleeps its full wait.
                    self._slot_freed.notify_all()
        if job is None:
            if self._draining:
                # The drain waits for reservations to go; an idle loop must
                # not wake itself here (it would spin: issue 19).
                self.wake()
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
        # Real time, not self._clock: this bounds a real wait on threads.
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
        started = self._clock()
        final = job
        try:
            final = run(job, token)
        except Interrupted as exc:  # a BaseException: the catch-all below never sees a stop
            final = self.pipeline.record_stopped(job, exc)
        except Exception as exc:  # noqa: BLE001 (record_crash logs it, traceback included)
            final = self.pipeline.record_crash(job, exc)
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
            with self._slots_lock:
                self._slots.pop(job.id, None)
                self._slot_freed.notify_all()
            structlog.contextvars.clear_contextvars()
            self.wake()

    # -- drain and stop -------------------------------------------------------

    def _handle_requests(self) -> None:
        while True:
            try:
                request = self._requests.get_nowait()
            except queue.Empty:
                return
            if not self._draining:
                self._start_drain(request.reason, request.timeout_s)
            if request.fast:
                log.warning("fast_stop", reason=request.reason)
                self._stop_running(request.reason)
                self._drain_deadline = self._clock()

    def _start_drain(self, reason: str, timeout_s: float | None = None) -> None:
        with self._slots_lock:
            self._draining = True
            running = len(self._slots)
            from_queue = [s for s in self._slots.values() if s.queued_from_queue]
        if timeout_s is None:
            timeout_s = self.settings.processing.drain_timeout_s
        self._drain_deadline = self._clock() + timeout_s
        log.info("drain_started", reason=reason, running=running, drain_timeout_s=timeout_s)
        self._notify.stopping(f"draining: {running} running")
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
            # Not those already told to stop (a cancel, a queue job handed back).
            slots = [s for s in self._slots.values() if not s.token.is_set()]
        for slot in slots:
            log.warning("job_interrupted", job_id=slot.job.id, key=slot.job.key, reason=why)
            slot.token.stop(StopToken.SHUTDOWN)
            self._interrupted = True

    def _join_all(self, timeout: float) -> None:
        """Wait until every running job has ended and freed its slot, at most ``timeout``
        seconds of real time (a bound on a real wait, so not on self._clock)."""
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
