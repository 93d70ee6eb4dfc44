"""What processing.max_attempts counts, pinned with a real command (README: configuration).

It bounds ``counted_attempts``: runs that asked for a retry (exit 75) and
attempts the daemon died during. Shutdowns and S3 outages are not counted.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.pipeline import claim, make, script
from worker.errors import StorageError
from worker.jobs.job import Job
from worker.jobs.states import JobState
from worker.runner.pipeline import Pipeline
from worker.runner.process import StopToken
from worker.state.ledger import Ledger


def always_75(runs: Path) -> list[str]:
    """A command that notes each run in ``runs`` and asks for a retry."""
    return script(f"import sys; open({str(runs)!r}, 'a').write('run\\n'); sys.exit(75)")


def runs_of(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def next_attempt(pipeline: Pipeline, ledger: Ledger) -> Job:
    """Claim the job again once its backoff is over."""
    pipeline.clock.offset += 100_000  # type: ignore[attr-defined]
    job = ledger.claim_next()
    assert job is not None
    return job


def test_a_command_that_always_exits_75_runs_exactly_max_attempts_times(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    pipeline, ledger, store = make(tmp_path, always_75(runs), max_attempts=3)
    job = claim(ledger, store, "k")
    states = []
    while True:
        done = pipeline.run(job)
        states.append(done.state)
        if done.state is not JobState.QUEUED:
            break
        job = next_attempt(pipeline, ledger)
    assert runs_of(runs) == 3 and states == [JobState.QUEUED, JobState.QUEUED, JobState.FAILED]
    assert (done.attempts, done.counted_attempts) == (3, 3)
    assert done.error == "command asked for a retry (exit 75); gave up after 3 attempts"


def test_an_attempt_the_daemon_died_during_is_counted(tmp_path: Path) -> None:
    """Run 1 exits 75, the daemon dies during attempt 2, run 3 exits 75: failed after 2 runs."""
    runs = tmp_path / "runs"
    pipeline, ledger, store = make(tmp_path, always_75(runs), max_attempts=3)
    job = claim(ledger, store, "k")
    assert pipeline.run(job).counted_attempts == 1
    next_attempt(pipeline, ledger)  # attempt 2 starts, then the daemon is killed
    (requeued,) = ledger.requeue_interrupted("interrupted: daemon restarted")
    assert requeued.counted_attempts == 2
    done = pipeline.run(next_attempt(pipeline, ledger))
    assert runs_of(runs) == 2 and done.state is JobState.FAILED
    assert (done.attempts, done.counted_attempts) == (3, 3)


def test_shutdowns_and_s3_outages_are_not_counted(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    pipeline, ledger, store = make(tmp_path, always_75(runs), max_attempts=2)
    job = claim(ledger, store, "k")
    shutdown = StopToken()
    shutdown.stop(StopToken.SHUTDOWN)
    requeued = pipeline.run(job, shutdown)
    assert requeued.state is JobState.QUEUED and requeued.counted_attempts == 0
    job = next_attempt(pipeline, ledger)
    store.fail_head = StorageError("head s3://in/k: 503", retryable=True, code="503")
    waiting = pipeline.run(job)
    assert waiting.state is JobState.QUEUED and waiting.counted_attempts == 0
    store.fail_head = None
    job = next_attempt(pipeline, ledger)
    assert pipeline.run(job).state is JobState.QUEUED
    done = pipeline.run(next_attempt(pipeline, ledger))
    assert runs_of(runs) == 2 and done.state is JobState.FAILED
    assert (done.attempts, done.counted_attempts) == (4, 2)
