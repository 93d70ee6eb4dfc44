"""A stop request (``worker.errors.Interrupted``) is a BaseException: no ``except Exception``
on its way takes it for a failure, and every path ends it on the drain path (requeued,
uncounted) or, for an operator's cancel, cancelled; never crashed or failed.

The work-queue side (the message handed back) is in test_queue_consumer.py; the S3
adapter carrying it through s3transfer's threads in tests/integration/test_s3_store.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.support.fakes import FakeStore
from tests.support.pipeline import COPY_UPPER, claim, make
from tests.support.waiting import wait_until
from worker.daemon.lifecycle import Daemon
from worker.errors import Interrupted, StorageError
from worker.jobs.identity import Identity
from worker.jobs.job import Job
from worker.jobs.outcome import Attempt
from worker.jobs.states import JobState
from worker.runner.pipeline import Pipeline
from worker.runner.process import StopToken
from worker.state import statelock


def test_a_stop_request_is_no_exception() -> None:
    assert issubclass(Interrupted, BaseException) and not issubclass(Interrupted, Exception)
    with pytest.raises(Interrupted):
        try:
            raise Interrupted(StopToken.SHUTDOWN)
        except Exception:  # the catch-all this test is about
            pytest.fail("an except Exception caught the stop request")


class _CatchAllStore(FakeStore):
    """A store whose transfers, like many an adapter, turn *any* Exception into a retryable
    StorageError, and which is told to stop mid-transfer (the token set, then progress)."""

    token: StopToken | None = None
    reason = StopToken.SHUTDOWN
    during = "download"

    def _transfer(self, what: str, progress: Callable[[int], None] | None, done: Callable[[], None]) -> None:
        try:
            if what == self.during and self.token is not None:
                self.token.stop(self.reason)  # the drain (or cancel) arrives mid-transfer
            if progress is not None:
                progress(1)
            done()
        except Exception as exc:  # the catch-all the stop must pass through
            raise StorageError(f"{what}: {exc}", retryable=True, code="Transport") from exc

    def download(self, bucket: str, key: str, dest: Path, *, progress: Callable[[int], None] | None = None,
                 **kw: Any) -> None:
        self._transfer("download", progress, lambda: super(_CatchAllStore, self).download(
            bucket, key, dest, **kw))

    def upload_file(self, src: Path, bucket: str, key: str, *, content_type: str | None = None,
                    progress: Callable[[int], None] | None = None) -> None:
        self._transfer("upload", progress, lambda: super(_CatchAllStore, self).upload_file(
            src, bucket, key, content_type=content_type))


@pytest.mark.parametrize("during", ["download", "upload"])
@pytest.mark.parametrize(("reason", "state"), [(StopToken.SHUTDOWN, JobState.QUEUED),
                                                (StopToken.CANCEL, JobState.CANCELLED)])
def test_a_stop_mid_transfer_passes_an_except_exception_and_ends_the_attempt_as_a_stop(
    tmp_path: Path, during: str, reason: str, state: JobState,
) -> None:
    pipeline, ledger, _ = make(tmp_path, COPY_UPPER)
    store = _CatchAllStore()
    pipeline.store = pipeline.recorder.store = store
    job = claim(ledger, store, "k.txt")
    store.token, store.reason, store.during = StopToken(), reason, during
    with capture_logs() as logs:
        done = pipeline.run(job, store.token)
    # Taken for a transport error it would be a storage wait: queued too, but after a
    # backoff and with the transport error recorded.
    assert done.state is state and done.counted_attempts == 0
    reason = ledger.history(job.id)[-1]["reason"]
    if state is JobState.QUEUED:
        assert reason == "interrupted by daemon shutdown" and done.error is None
        assert done.next_attempt_at <= ledger.history(job.id)[-1]["at"]
    else:
        assert reason == done.error == "cancelled by an operator"
    assert not [e for e in logs if e["event"] in ("job_crashed", "job_stop_escaped_attempt")]
    assert ("out", "results/k.txt/_manifest.json") not in store.objects


def _escaping_once(pipeline: Pipeline, keys: set[str]) -> None:
    """The pipeline's attempt lets a shutdown request out, once per key in ``keys``: a stop
    that got past Pipeline._attempt to the slot's own catch (which must not take it for a crash)."""
    real = pipeline.attempt

    def attempt(job: Job, cancel: StopToken | None = None, log: Any = None) -> Attempt:
        if job.key in keys:
            keys.discard(job.key)
            raise Interrupted(StopToken.SHUTDOWN)
        return real(job, cancel, log)

    pipeline.attempt = attempt  # type: ignore[method-assign]


def test_a_stop_that_escapes_the_attempt_is_requeued_and_the_slot_thread_lives_on(short_tmp: Path) -> None:
    pipeline, ledger, store = make(short_tmp, COPY_UPPER, concurrency=1)
    settings = pipeline.settings
    for directory in (settings.paths.work, settings.paths.job_logs):
        directory.mkdir(parents=True, exist_ok=True)
    _escaping_once(pipeline, {"escapes.txt"})
    for key in ("escapes.txt", "next.txt"):
        ledger.submit(Identity("in", key, None, store.put("in", key, b"x")))
    daemon = Daemon(settings, ledger, pipeline, idle_wake_s=0.05)
    lock = statelock.acquire(settings.paths.state_dir)
    with capture_logs() as logs:
        daemon.start(lock)
        try:
            # One slot: the second job (and the first one's re-run) can only run if the
            # slot thread survived the stop request.
            wait_until(lambda: ledger.counts()["succeeded"] == 2, stall_s=20, interval=0.01,
                       describe="both jobs to succeed in the one slot")
            assert all(thread.is_alive() for thread in daemon.slots._threads)
        finally:
            daemon.stop(reason="test over")
            assert daemon.wait(20) is not None
            lock.release()
    escaped = [e for e in logs if e["event"] == "job_stop_escaped_attempt"]
    assert [e["reason"] for e in escaped] == [StopToken.SHUTDOWN]
    assert next(e["state"] for e in logs if e["event"] == "job_finished") == JobState.QUEUED.value
    assert not [e for e in logs if e["event"] == "job_crashed"]
    job = ledger.find(Identity("in", "escapes.txt", None, store.put("in", "escapes.txt", b"x")))
    assert job is not None and job.counted_attempts == 0 and job.attempts == 2
    assert [h["reason"] for h in ledger.history(job.id) if h["to_state"] == "queued"][-1] == \
        "interrupted by daemon shutdown"
    ledger.close()
