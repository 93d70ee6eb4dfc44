"""The daemon in a thread of the test process (signals off), with a fake pipeline and a real ledger."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.waiting import wait_until
from worker import statelock
from worker.config import Settings, settings_from_mapping
from worker.identity import Identity
from worker.job import Job
from worker.ledger import Ledger
from worker.process import StopToken
from worker.states import JobState

#: The liveness bound of every wait on the in-thread daemon.
WAIT_S = 20


class FakePipeline:
    """Runs a job by waiting until the test releases it, or until asked to stop."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.release = threading.Event()
        self.running: set[str] = set()
        self.peak = 0
        self.started: list[str] = []
        self.crash_keys: set[str] = set()
        self._lock = threading.Lock()

    def run(self, job: Job, token: StopToken | None = None) -> Job:
        with self._lock:
            self.running.add(job.id)
            self.started.append(job.key)
            self.peak = max(self.peak, len(self.running))
        try:
            if job.key in self.crash_keys:
                raise RuntimeError("bug in the pipeline")
            while not self.release.is_set():
                if token is not None and token.is_set():
                    if token.reason == StopToken.SHUTDOWN:
                        return self.ledger.transition(job.id, JobState.QUEUED, reason="shutdown")
                    return self.ledger.transition(job.id, JobState.CANCELLED, reason="cancel")
                time.sleep(0.01)
            return self.ledger.transition(job.id, JobState.SUCCEEDED, finished_at=time.time())
        finally:
            with self._lock:
                self.running.discard(job.id)

    def record_crash(self, job: Job, exc: Exception) -> Job:
        return self.ledger.transition(job.id, JobState.FAILED, error=f"internal error: {exc}")


def settings(tmp: Path, **processing: Any) -> Settings:
    return settings_from_mapping({
        "s3": {"output_bucket": "out"},
        "processing": {"command": ["/bin/true", "{input}"], **processing},
        "paths": {"state_dir": str(tmp / "state"), "socket": str(tmp / "d.sock")},
    }, {})


@contextmanager
def running_daemon(tmp: Path, idle_wake_s: float = 60.0, **processing: Any) -> Iterator[Any]:
    from worker.daemon import Daemon

    conf = settings(tmp, **processing)
    ledger = Ledger(conf.paths.ledger)
    fake = FakePipeline(ledger)
    daemon = Daemon(conf, ledger, fake, idle_wake_s=idle_wake_s)  # type: ignore[arg-type]
    lock = statelock.acquire(conf.paths.state_dir)
    daemon.start(lock)  # returns once the socket answers and READY=1 is sent
    try:
        yield daemon, ledger, fake, conf
    finally:
        fake.release.set()
        daemon.stop(reason="test over")
        try:
            assert daemon.wait(WAIT_S) is not None, "the daemon did not stop"
        finally:
            lock.release()
            ledger.close()


def until(predicate: Any, what: str) -> None:
    wait_until(predicate, stall_s=WAIT_S, interval=0.01, describe=what)


def submit(ledger: Ledger, key: str) -> Job:
    return ledger.submit(Identity("in-bucket", key, None, "e"))[0]
