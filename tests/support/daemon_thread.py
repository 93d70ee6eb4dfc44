"""The daemon in a thread of the test process (signals off), with a faked attempt and a real ledger."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.fakes import FakeStore
from tests.support.waiting import wait_until
from worker.config.settings import Settings, settings_from_mapping
from worker.daemon.lifecycle import Daemon
from worker.jobs.identity import Identity
from worker.jobs.job import Job
from worker.jobs.outcome import Attempt, Outcome
from worker.runner.pipeline import Pipeline
from worker.runner.process import StopToken
from worker.state import statelock
from worker.state.ledger import Ledger

#: The liveness bound of every wait on the in-thread daemon.
WAIT_S = 20


class FakePipeline(Pipeline):
    """The real Pipeline with its attempt faked: the attempt waits until the test releases it,
    or until asked to stop; how it ended goes through the real ``Pipeline.run`` and
    ``crash``, so ``worker.runner.recorder`` writes what ``worker.jobs.outcome.decide`` picks.

    Nothing is downloaded or run; the store is an in-memory one nobody reads.
    """

    def __init__(self, settings: Settings, ledger: Ledger) -> None:
        super().__init__(settings, FakeStore(), ledger, environ={})
        self.release = threading.Event()
        self.running: set[str] = set()
        self.peak = 0
        self.started: list[str] = []
        #: Keys whose attempt raises, as a bug in the pipeline would.
        self.crash_keys: set[str] = set()
        self._lock = threading.Lock()

    def attempt(self, job: Job, cancel: StopToken | None = None, log: Any = None) -> Attempt:
        with self._lock:
            self.running.add(job.id)
            self.started.append(job.key)
            self.peak = max(self.peak, len(self.running))
        try:
            if job.key in self.crash_keys:
                raise RuntimeError("bug in the pipeline")
            while not self.release.is_set():
                if cancel is not None and cancel.is_set():
                    if cancel.reason == StopToken.SHUTDOWN:
                        return Attempt(Outcome.REQUEUE, "interrupted by daemon shutdown")
                    return Attempt(Outcome.CANCELLED, "cancelled by an operator")
                time.sleep(0.01)
            return Attempt(Outcome.SUCCEEDED, result_prefix=self.result_prefix(job))
        finally:
            with self._lock:
                self.running.discard(job.id)


def settings(tmp: Path, **processing: Any) -> Settings:
    return settings_from_mapping({
        "s3": {"output_bucket": "out"},
        "processing": {"command": ["/bin/true", "{input}"], **processing},
        "paths": {"state_dir": str(tmp / "state"), "socket": str(tmp / "d.sock")},
    }, {})


@contextmanager
def started(daemon: Daemon, conf: Settings) -> Iterator[Daemon]:
    """``daemon`` started on its state dir's lock (returns once the socket answers and READY=1
    is sent); stopped, and the lock released, when the block ends."""
    lock = statelock.acquire(conf.paths.state_dir)
    daemon.start(lock)
    try:
        yield daemon
    finally:
        daemon.stop(reason="test over")
        try:
            assert daemon.wait(WAIT_S) is not None, "the daemon did not stop"
        finally:
            lock.release()


@contextmanager
def running_daemon(tmp: Path, idle_wake_s: float = 60.0, **processing: Any) -> Iterator[Any]:
    conf = settings(tmp, **processing)
    ledger = Ledger(conf.paths.ledger)
    fake = FakePipeline(conf, ledger)
    try:
        with started(Daemon(conf, ledger, fake, idle_wake_s=idle_wake_s), conf) as daemon:
            try:
                yield daemon, ledger, fake, conf
            finally:
                fake.release.set()
    finally:
        ledger.close()


def until(predicate: Any, what: str) -> None:
    wait_until(predicate, stall_s=WAIT_S, interval=0.01, describe=what)


def submit(ledger: Ledger, key: str) -> Job:
    return ledger.submit(Identity("in-bucket", key, None, "e"))[0]


def started_job(daemon: Daemon, ledger: Ledger, fake: FakePipeline, key: str) -> Job:
    """Submit ``key``, wake the daemon, and return the job once its attempt has begun (the
    only one begun so far)."""
    job = submit(ledger, key)
    daemon.wake()
    until(lambda: fake.started == [key], f"{key} started")
    return job
