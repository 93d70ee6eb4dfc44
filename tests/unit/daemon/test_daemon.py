"""The daemon's scheduling and lifecycle, with a fake pipeline and a real SQLite ledger.

The daemon runs in-process through its API (start, drain, stop, wait); what
signals do is tested through the CLI (test_daemon_lifecycle.py and
tests/integration/test_daemon.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.daemon_thread import (
    WAIT_S,
    FakePipeline,
    running_daemon,
    settings,
    started_job,
    submit,
    until,
)
from worker import exitcodes
from worker.config.settings import settings_from_mapping
from worker.ctl.control_client import request
from worker.errors import ControlError, LedgerError
from worker.jobs.job import Job
from worker.jobs.states import JobState, Phase
from worker.state import statelock
from worker.state.ledger import Ledger


def test_concurrency_slots_cap_running_jobs(short_tmp: Path) -> None:
    with running_daemon(short_tmp, concurrency=2) as (daemon, ledger, fake, conf):
        for n in range(5):
            submit(ledger, f"k{n}")
        daemon.wake()
        until(lambda: len(fake.running) == 2, "two jobs running")
        time.sleep(0.2)
        assert len(fake.running) == 2 and ledger.counts()["queued"] == 3
        status = request(conf.paths.socket, "status")
        assert status["busy"] == 2 and status["slots"] == 2 and status["counts"]["queued"] == 3
        fake.release.set()
        until(lambda: ledger.counts()["succeeded"] == 5, "all five succeeded")
        assert fake.peak == 2


def test_dispatch_is_driven_by_events_not_polling(short_tmp: Path) -> None:
    # The idle tick is a minute: a job must start because the submit woke the loop.
    with running_daemon(short_tmp, idle_wake_s=60.0) as (_, ledger, fake, conf):
        submit(ledger, "now")
        request(conf.paths.socket, "wake")
        until(lambda: fake.started == ["now"], "job started without waiting for the tick")
        fake.release.set()
        until(lambda: ledger.counts()["succeeded"] == 1, "job finished")


def test_finishing_job_frees_its_slot_for_the_next_at_once(short_tmp: Path) -> None:
    with running_daemon(short_tmp, idle_wake_s=60.0, concurrency=1) as (daemon, ledger, fake, _):
        submit(ledger, "first")
        submit(ledger, "second")
        daemon.wake()
        until(lambda: fake.started == ["first"], "first started")
        fake.release.set()
        until(lambda: ledger.counts()["succeeded"] == 2, "second ran after the first, without a tick")


def test_drain_lets_running_jobs_finish_takes_no_new_ones_and_exits_ok(short_tmp: Path) -> None:
    with running_daemon(short_tmp, concurrency=1, drain_timeout_s=30) as (daemon, ledger, fake, _):
        running = started_job(daemon, ledger, fake, "running")
        waiting = submit(ledger, "waiting")
        daemon.drain()
        assert daemon.draining
        assert daemon.wait(0.3) is None  # still draining: the job has 30 s
        fake.release.set()
        assert daemon.wait(WAIT_S) == exitcodes.OK
        assert ledger.get(running.id).state is JobState.SUCCEEDED
        assert ledger.get(waiting.id).state is JobState.QUEUED
        assert fake.started == ["running"]


def test_drain_timeout_stops_jobs_leaves_them_queued_and_exits_interrupted(short_tmp: Path) -> None:
    with running_daemon(short_tmp, drain_timeout_s=0) as (daemon, ledger, fake, _):
        job = started_job(daemon, ledger, fake, "long")
        daemon.drain()
        assert daemon.wait(WAIT_S) == exitcodes.INTERRUPTED
        stopped = ledger.get(job.id)
        # A shutdown is not the job's fault (worker.jobs.outcome.decide): due again at once, not counted.
        assert (stopped.state, stopped.counted_attempts) == (JobState.QUEUED, 0)
        assert stopped.next_attempt_at is not None and stopped.next_attempt_at <= time.time()
        assert ledger.history(job.id)[-1]["reason"] == "interrupted by daemon shutdown"


def test_drain_takes_its_timeout_over_the_configured_one(short_tmp: Path) -> None:
    with running_daemon(short_tmp, drain_timeout_s=600) as (daemon, ledger, fake, _):
        job = started_job(daemon, ledger, fake, "long")
        daemon.drain(0.1)
        assert daemon.wait(WAIT_S) == exitcodes.INTERRUPTED
        assert ledger.get(job.id).state is JobState.QUEUED


def test_stop_during_a_drain_is_a_fast_stop(short_tmp: Path) -> None:
    with running_daemon(short_tmp, drain_timeout_s=600) as (daemon, ledger, fake, _):
        job = started_job(daemon, ledger, fake, "long")
        daemon.drain()
        assert daemon.wait(0.2) is None
        daemon.stop()
        assert daemon.wait(WAIT_S) == exitcodes.INTERRUPTED
        assert ledger.get(job.id).state is JobState.QUEUED


def test_stop_with_nothing_running_exits_ok(short_tmp: Path) -> None:
    with running_daemon(short_tmp, drain_timeout_s=600) as (daemon, _, _, conf):
        daemon.stop()
        assert daemon.wait(WAIT_S) == exitcodes.OK
        with pytest.raises(ControlError):  # the socket is gone
            request(conf.paths.socket, "ping", timeout=1)


def test_cancel_stops_a_running_job(short_tmp: Path) -> None:
    with running_daemon(short_tmp) as (daemon, ledger, fake, conf):
        job = started_job(daemon, ledger, fake, "cancel-me")
        assert request(conf.paths.socket, "cancel", job_id=job.id)["running"] is True
        until(lambda: ledger.get(job.id).state is JobState.CANCELLED, "cancelled")
        assert ledger.get(job.id).error == "cancelled by an operator"
        # The slot is freed just after job_finished is logged, a moment after the ledger says so.
        until(lambda: request(conf.paths.socket, "cancel", job_id=job.id)["running"] is False,
              "slot freed")


def test_a_crashing_job_is_a_counted_retry_after_a_backoff(short_tmp: Path) -> None:
    # The daemon records a crash of the pipeline through the one outcome policy
    # (worker.jobs.outcome.decide): counted, queued again after a backoff (retry_base_s=30: 15-30 s).
    with running_daemon(short_tmp) as (daemon, ledger, fake, _):
        fake.crash_keys.add("bad")
        bad = submit(ledger, "bad")
        before = time.time()
        daemon.wake()
        until(lambda: ledger.get(bad.id).state is JobState.QUEUED and fake.started == ["bad"],
              "the crash recorded")
        job = ledger.get(bad.id)
        assert job.error == "internal error: RuntimeError: bug in the pipeline"
        assert (job.attempts, job.counted_attempts) == (1, 1)
        assert job.phase is Phase.WAITING_TO_RETRY
        assert job.next_attempt_at is not None and job.next_attempt_at >= before + 15


def test_a_crashing_job_fails_once_its_attempts_are_spent_and_the_daemon_keeps_serving(
    short_tmp: Path,
) -> None:
    with running_daemon(short_tmp, max_attempts=2, retry_base_s=0) as (daemon, ledger, fake, _):
        fake.crash_keys.add("bad")
        fake.release.set()
        bad = submit(ledger, "bad")
        good = submit(ledger, "good")
        daemon.wake()
        until(lambda: ledger.get(bad.id).state is JobState.FAILED, "the crashing job given up")
        until(lambda: ledger.get(good.id).state is JobState.SUCCEEDED, "good job done")
        failed = ledger.get(bad.id)
        assert failed.error == "internal error: RuntimeError: bug in the pipeline; gave up after 2 attempts"
        assert (failed.attempts, failed.counted_attempts) == (2, 2)
        assert fake.started.count("bad") == 2
        assert [(t["from_state"], t["to_state"]) for t in ledger.history(bad.id)] == [
            (None, "queued"), ("queued", "running"), ("running", "queued"),
            ("queued", "running"), ("running", "failed")]


def test_jobs_left_running_by_a_crash_are_requeued_at_start(short_tmp: Path) -> None:
    conf = settings(short_tmp)
    with Ledger(conf.paths.ledger) as ledger:
        job = submit(ledger, "interrupted")
        ledger.claim_next()
    with running_daemon(short_tmp) as (_, ledger, fake, _):
        fake.release.set()
        until(lambda: ledger.get(job.id).state is JobState.SUCCEEDED, "requeued and run")
        assert ledger.get(job.id).attempts == 2


def test_a_second_daemon_on_the_same_socket_refuses_to_start(short_tmp: Path) -> None:
    from worker.daemon.lifecycle import Daemon

    with running_daemon(short_tmp) as (_, ledger, _, conf):
        # Its own state dir (the lock would refuse the same one), the first one's socket.
        other_conf = settings_from_mapping({
            "s3": {"output_bucket": "out"},
            "processing": {"command": ["/bin/true", "{input}"]},
            "paths": {"state_dir": str(short_tmp / "other"), "socket": str(conf.paths.socket)},
        }, {})
        with Ledger(other_conf.paths.ledger) as other_ledger, \
                statelock.acquire(other_conf.paths.state_dir) as lock:
            other = Daemon(other_conf, other_ledger, FakePipeline(other_conf, other_ledger))
            with pytest.raises(ControlError, match="already listening"):
                other.start(lock)
        assert request(conf.paths.socket, "ping", timeout=5)["pid"]


def test_a_crash_of_the_main_loop_is_raised_by_wait(short_tmp: Path) -> None:
    from worker.daemon.lifecycle import Daemon

    conf = settings(short_tmp)
    with Ledger(conf.paths.ledger) as ledger, statelock.acquire(conf.paths.state_dir) as lock:
        def claim_next() -> Job | None:
            raise LedgerError("database disk image is malformed")

        ledger.claim_next = claim_next  # type: ignore[method-assign]
        daemon = Daemon(conf, ledger, FakePipeline(conf, ledger))
        daemon.start(lock)
        with pytest.raises(LedgerError, match="malformed"):
            daemon.wait(WAIT_S)
        with pytest.raises(ControlError):  # it cleaned up: the socket is gone
            request(conf.paths.socket, "ping", timeout=1)


def test_claims_are_reserved_and_stop_when_a_drain_begins(short_tmp: Path) -> None:
    """A claim holds its slot from before the ledger is asked (a drain counts it as busy),
    never goes past concurrency, and nothing is claimed once a drain has begun."""
    from worker.daemon.lifecycle import Daemon

    conf = settings(short_tmp, concurrency=1)
    with Ledger(conf.paths.ledger) as ledger:
        daemon = Daemon(conf, ledger, FakePipeline(conf, ledger))
        for key in ("a", "b"):
            submit(ledger, key)
        seen_busy: list[int] = []
        real_claim = ledger.claim_next

        def claim_next() -> Job | None:
            seen_busy.append(daemon.slots.busy())  # what a drain would see mid-claim
            return real_claim()

        ledger.claim_next = claim_next  # type: ignore[method-assign]
        first = daemon.slots.claim()
        assert first is not None and seen_busy == [1]
        assert daemon.slots.claim() is None  # the one slot is taken: the ledger is not even asked
        assert seen_busy == [1] and ledger.counts()["queued"] == 1
        daemon.slots._table.clear()
        daemon.slots.begin_drain()
        assert daemon.slots.claim() is None and ledger.counts()["queued"] == 1


def test_slot_times_and_job_durations_are_on_the_injected_clock(short_tmp: Path) -> None:
    """The clock the daemon is given is the one it reads: a slot's running_s and the
    job_finished duration move with it, not with time.monotonic()."""
    from structlog.testing import capture_logs

    from worker.daemon.lifecycle import Daemon

    now = [1_000_000.0]
    conf = settings(short_tmp, concurrency=1)
    with Ledger(conf.paths.ledger) as ledger:
        fake = FakePipeline(conf, ledger)
        daemon = Daemon(conf, ledger, fake, clock=lambda: now[0])
        submit(ledger, "a")
        claimed = daemon.slots.claim()
        assert claimed is not None
        now[0] += 3600.0  # an hour on the daemon's clock, none in real time
        assert [job["running_s"] for job in daemon._report.running()] == [3600.0]
        fake.release.set()
        with capture_logs() as logs:
            daemon.slots._run_job(*claimed)
        finished = [e for e in logs if e["event"] == "job_finished"]
        assert [e["duration_s"] for e in finished] == [0.0]  # the clock stood still meanwhile
        daemon._close_wake_pipe()

