"""The lifecycle API's contract: lock, then recover, then serve; READY only once the
socket answers; STOPPING when a drain begins; WATCHDOG from the main loop; and how
`processor run` maps signals onto drain/stop (worker.cli, worker.daemon.signals).

In-process, with a recording sd_notify and a recording ledger (a real SQLite
ledger underneath); the real signal path through `processor run` is covered in
tests/integration/test_daemon.py.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.support.daemon_thread import WAIT_S, FakePipeline, settings, started_job, submit, until
from worker import exitcodes
from worker.cli import StopSignals
from worker.ctl.control_client import request
from worker.daemon.lifecycle import Daemon
from worker.daemon.signals import SignalQueue
from worker.errors import ControlError
from worker.jobs.job import Job
from worker.jobs.states import JobState
from worker.state import statelock
from worker.state.ledger import Ledger


def _answers(socket: Path) -> bool:
    try:
        request(socket, "ping", timeout=1)
        return True
    except ControlError:
        return False


class Recorder:
    """sd_notify as the daemon sees it, and what held at each step."""

    def __init__(self, socket: Path, state_dir: Path) -> None:
        self.socket = socket
        self.state_dir = state_dir
        self.steps: list[tuple[str, bool]] = []
        self.watchdog_threads: set[str] = set()
        self.stopping_texts: list[str] = []

    def locked(self) -> bool:
        try:
            statelock.acquire(self.state_dir).release()
        except statelock.StateDirLocked:
            return True
        return False

    # Notifier
    def ready(self, status: str) -> bool:
        self.steps.append(("serve: READY=1, socket answers", _answers(self.socket)))
        return True

    def status(self, text: str) -> bool:
        return True

    def stopping(self, text: str) -> bool:
        self.stopping_texts.append(text)
        return True

    def watchdog(self) -> bool:
        self.watchdog_threads.add(threading.current_thread().name)
        return True


class RecordingLedger(Ledger):
    recorder: Recorder

    def requeue_interrupted(self, reason: str) -> list[Job]:
        self.recorder.steps.append(("recover: lock held", self.recorder.locked()))
        self.recorder.steps.append(("recover: socket answers", _answers(self.recorder.socket)))
        return super().requeue_interrupted(reason)


def test_start_up_is_lock_then_recover_then_serve_and_ready_once_the_socket_answers(
    short_tmp: Path,
) -> None:
    conf = settings(short_tmp)
    with Ledger(conf.paths.ledger) as ledger:  # a job a crash left running
        interrupted = submit(ledger, "interrupted")
        ledger.claim_next()
    recorder = Recorder(conf.paths.socket, conf.paths.state_dir)
    with RecordingLedger(conf.paths.ledger) as ledger, statelock.acquire(conf.paths.state_dir) as lock:
        ledger.recorder = recorder
        fake = FakePipeline(conf, ledger)
        daemon = Daemon(conf, ledger, fake, notifier=recorder)  # type: ignore[arg-type]
        daemon.start(lock)
        try:
            assert recorder.steps == [
                ("recover: lock held", True),
                ("recover: socket answers", False),
                ("serve: READY=1, socket answers", True),
            ]
            reasons = [t["reason"] for t in ledger.history(interrupted.id)]
            assert "interrupted: daemon restarted" in reasons
        finally:
            fake.release.set()
            daemon.drain()
            assert daemon.wait(WAIT_S) == exitcodes.OK


@pytest.mark.parametrize("which", ["released", "another state dir"])
def test_start_refuses_without_the_state_dirs_lock_and_touches_nothing(short_tmp: Path, which: str) -> None:
    conf = settings(short_tmp)
    with Ledger(conf.paths.ledger) as ledger:
        job = submit(ledger, "interrupted")
        ledger.claim_next()
        daemon = Daemon(conf, ledger, FakePipeline(conf, ledger))
        other = conf.paths.state_dir if which == "released" else short_tmp / "elsewhere"
        lock = statelock.acquire(other)
        if which == "released":
            lock.release()
        try:
            with pytest.raises(ValueError, match="held lock of"):
                daemon.start(lock)
        finally:
            lock.release()
        assert ledger.get(job.id).state is JobState.RUNNING  # not recovered
        assert not conf.paths.socket.exists()


def test_stopping_is_sent_when_the_drain_begins_and_watchdog_comes_from_the_loop(short_tmp: Path) -> None:
    conf = settings(short_tmp, drain_timeout_s=600)
    recorder = Recorder(conf.paths.socket, conf.paths.state_dir)
    with Ledger(conf.paths.ledger) as ledger, statelock.acquire(conf.paths.state_dir) as lock:
        fake = FakePipeline(conf, ledger)
        daemon = Daemon(conf, ledger, fake, notifier=recorder)  # type: ignore[arg-type]
        daemon.start(lock)
        try:
            started_job(daemon, ledger, fake, "long")
            assert recorder.stopping_texts == []
            daemon.drain(reason="test")
            until(lambda: recorder.stopping_texts, "STOPPING=1")
            assert recorder.stopping_texts == ["draining: 1 running"]
            assert daemon.wait(0.2) is None  # draining, not stopped
        finally:
            fake.release.set()
            assert daemon.wait(WAIT_S) == exitcodes.OK
    assert recorder.watchdog_threads == {"daemon-loop"}


class FakeDaemon:
    """What StopSignals calls, recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.draining = False

    def drain(self, timeout: float | None = None, *, reason: str = "") -> None:
        self.calls.append(("drain", reason))
        self.draining = True

    def stop(self, *, reason: str = "") -> None:
        self.calls.append(("stop", reason))


def test_the_first_stop_signal_drains_and_the_next_one_stops_at_once() -> None:
    daemon = FakeDaemon()
    signals = StopSignals(daemon)  # type: ignore[arg-type]
    signals.handlers[signal.SIGHUP]()
    assert daemon.calls == []  # a reload is not supported: ignored
    signals.handlers[signal.SIGTERM]()
    signals.handlers[signal.SIGINT]()
    assert daemon.calls == [("drain", "signal SIGTERM"), ("stop", "second stop signal (SIGINT)")]


def test_a_signal_during_a_drain_the_daemon_began_itself_stops_at_once() -> None:
    daemon = FakeDaemon()
    daemon.draining = True  # e.g. a Spot interruption notice
    StopSignals(daemon).handle_term()  # type: ignore[arg-type]
    assert daemon.calls == [("stop", "second stop signal (SIGTERM)")]


def test_the_signal_queue_only_queues_and_restores_the_handlers() -> None:
    before = signal.getsignal(signal.SIGHUP)
    with SignalQueue([signal.SIGHUP, signal.SIGUSR1]) as received:
        assert received.get(timeout=0) is None
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGUSR1)
        got = [received.get(timeout=WAIT_S), received.get(timeout=WAIT_S)]
        assert got == [signal.SIGHUP, signal.SIGUSR1]
        threading.Timer(0.05, received.wake).start()
        asked = time.monotonic()
        assert received.get(timeout=WAIT_S) is None
        assert time.monotonic() - asked < WAIT_S  # woken, not timed out
    assert signal.getsignal(signal.SIGHUP) == before


def test_the_status_line_names_each_running_jobs_phase_in_show_and_status_words(short_tmp: Path) -> None:
    from worker.jobs.states import Phase

    conf = settings(short_tmp)
    texts: list[str] = []

    class StatusRecorder(Recorder):
        def status(self, text: str) -> bool:
            texts.append(text)
            return True

    recorder = StatusRecorder(conf.paths.socket, conf.paths.state_dir)
    with Ledger(conf.paths.ledger) as ledger, statelock.acquire(conf.paths.state_dir) as lock:
        fake = FakePipeline(conf, ledger)
        daemon = Daemon(conf, ledger, fake, notifier=recorder)  # type: ignore[arg-type]
        daemon.start(lock)
        try:
            job = started_job(daemon, ledger, fake, "big")
            ledger.set_progress(job.id, phase=Phase.DOWNLOADING, bytes_total=10, bytes_done=4)

            def published() -> bool:
                daemon.wake()  # the loop republishes (at most once a second) when woken
                return any(f"{job.id} downloading" in text for text in texts)

            until(published, "STATUS= with the job's phase")
            live = request(conf.paths.socket, "status")
            assert live["running"][0]["activity_text"].startswith("downloading 40% of 10 B")
        finally:
            fake.release.set()
            daemon.drain(reason="test")
            assert daemon.wait(WAIT_S) == exitcodes.OK
