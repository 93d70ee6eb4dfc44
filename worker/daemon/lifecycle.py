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
receive, claims due local jobs: ``Slots.end_poll``). ``Slots.claim`` reserves
the slot before asking the ledger, so together they never run more than
``processing.concurrency``.

With a work queue (``[queue] url``) a ``QueueConsumer`` fills free slots from
it; a drain then stops receiving at once and stops running queue jobs at once,
so their messages go back to the queue for another instance within seconds
(local jobs keep the drain timeout). An optional ``InstanceGuard`` is told
when the daemon holds jobs (scale-in protection) and can start the drain
(a Spot interruption notice).

The daemon is composed of: its ``Slots`` (worker.daemon.slots: the slot table,
its reservations and the slot threads, also handed to the consumer), a
``StatusReport`` (worker.daemon.status: the STATUS line and `processorctl
status`) and the control socket's ops (worker.daemon.handlers).
"""

from __future__ import annotations

import os
import queue
import select
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import structlog

from worker import __version__, exitcodes
from worker.config.settings import Settings
from worker.daemon.control import ControlServer
from worker.daemon.handlers import handlers
from worker.daemon.recovery import recover
from worker.daemon.slots import Slots
from worker.daemon.status import Notifier, StatusReport
from worker.runner.pipeline import Pipeline
from worker.runner.process import StopToken
from worker.state.ledger import Ledger
from worker.telemetry import systemd

if TYPE_CHECKING:
    from worker.fleet.consumer import QueueConsumer
    from worker.fleet.record import JobRecords
    from worker.fleet.workqueue import WorkQueue
    from worker.state.statelock import StateLock

#: Longest the main loop sleeps with nothing to do (also the watchdog cadence).
#: Work never waits for it: submissions and finished jobs wake the loop at once.
IDLE_WAKE_S = 1.0

log = structlog.get_logger("processor.daemon")


class InstanceGuard(Protocol):
    """What the instance this daemon runs on may ask of it (``worker.fleet.instance.Guard``)."""

    def set_busy(self, busy: bool) -> None:
        """Whether the daemon holds at least one job; called on change; must not block."""

    def interruption(self) -> str | None:
        """Non-blocking: a reason once the instance is being taken away, else None."""

    def close(self) -> None: ...


class _Request(NamedTuple):
    """A drain or a fast stop, for the main loop to carry out (see Daemon.drain/stop)."""

    fast: bool
    timeout_s: float | None
    reason: str


class Daemon:
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
        #: The job slots, shared by local jobs and the work queue's messages.
        self.slots = Slots(settings.processing.concurrency, ledger, pipeline, self.wake, clock=clock)
        self._guard = guard
        self._guard_busy: bool | None = None
        self._consumer: QueueConsumer | None = None
        if work_queue is not None:
            from worker.fleet.consumer import QueueConsumer

            if job_records is None:
                raise ValueError("a work queue needs the fleet's job records (queue.table)")
            self._consumer = QueueConsumer(settings, ledger, pipeline, work_queue, self.slots,
                                           job_records, holder=holder or "unnamed", clock=clock)
        self._report = StatusReport(settings, ledger, self.slots, self._consumer, notifier, clock)
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
        2. recover (worker.daemon.recovery): orphaned commands, interrupted jobs;
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
        return self._drain_requested or self.slots.draining

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
            server = ControlServer(self.settings.paths.socket, handlers(self), log=log)  # binds here
        except BaseException:
            self._close_wake_pipe()
            raise
        try:
            self.slots.start_threads()
            server.start()
            if self._consumer is not None:
                self._consumer.start()
            log.info("daemon_started", version=__version__, pid=os.getpid(),
                     socket=str(self.settings.paths.socket),
                     concurrency=self.settings.processing.concurrency,
                     queue=self.settings.queue.url or None,
                     # which sd_notify/journald code runs: "systemd-python" or "builtin"
                     systemd_backend=systemd.BACKEND)
            self._notify.ready(self._report.text())
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
        self.slots.stop_threads()
        if self._consumer is not None:
            self._consumer.close()
        if self._guard is not None:
            if self._guard_busy and not self.slots.busy():
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
        return self.slots.cancel(job_id)

    def status(self) -> dict[str, Any]:
        """`processorctl status`'s reply (worker.daemon.status)."""
        return self._report.status()

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
            if self.slots.draining:
                if not self.slots.busy():
                    return
                if self._clock() >= self._drain_deadline:
                    self._stop_running("drain timeout")
                    self.slots.wait_empty(self.settings.processing.kill_grace_s + 15)
                    return
            else:
                self.slots.fill()
            self._notify.watchdog()
            self._report.publish()
            self._sleep(self._sleep_for())

    def _sleep_for(self) -> float:
        if (due := self._report.due_in()) is not None:
            return max(0.0, min(due, self._work_sleep()))
        return self._work_sleep()

    def _work_sleep(self) -> float:
        if self.slots.draining:
            return min(self._idle_wake_s, max(0.0, self._drain_deadline - self._clock()))
        due = self.ledger.next_due_at()
        if due is None or self.slots.free() == 0:
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

    # -- drain and stop -------------------------------------------------------

    def _handle_requests(self) -> None:
        while True:
            try:
                request = self._requests.get_nowait()
            except queue.Empty:
                return
            if not self.slots.draining:
                self._start_drain(request.reason, request.timeout_s)
            if request.fast:
                log.warning("fast_stop", reason=request.reason)
                self._stop_running(request.reason)
                self._drain_deadline = self._clock()

    def _start_drain(self, reason: str, timeout_s: float | None = None) -> None:
        slots = self.slots.begin_drain()
        running = len(slots)
        from_queue = [s for s in slots if s.queued_from_queue]
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
        if self.slots.stop_running(why):
            self._interrupted = True

    def _check_guard(self) -> None:
        """Tell the instance guard whether the daemon is busy; drain on its interruption notice."""
        if self._guard is None:
            return
        busy = self.slots.busy() > 0
        if busy != self._guard_busy:
            self._guard.set_busy(busy)
            self._guard_busy = busy
        if not self.slots.draining and (reason := self._guard.interruption()) is not None:
            self._start_drain(reason)
