"""What a job is doing now (worker.jobs.activity): elapsed, deadline, phase and waits, a transfer's
percent, rate and ETA, a finished job's duration; and the waits the recorder writes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tests.support.pipeline import COPY_UPPER, claim, make
from worker.jobs.activity import activity, duration, in_words, size
from worker.jobs.job import Job
from worker.jobs.outcome import Attempt, Outcome
from worker.jobs.states import JobState, Phase

NOW = 1_800_000_000.0
BASE = Job(id="j-1", bucket="b", key="k", version_id=None, etag="e", state=JobState.RUNNING,
           attempts=1, created_at=NOW - 100, updated_at=NOW, started_at=NOW - 50)


def test_a_download_in_progress_has_percent_rate_and_eta() -> None:
    job = replace(BASE, phase=Phase.DOWNLOADING, phase_started_at=NOW - 10,
                  bytes_total=100 * 2**20, bytes_done=40 * 2**20)
    facts = activity(job, now=NOW, timeout_s=600)
    assert facts["percent"] == 40.0 and facts["rate_bps"] == 4 * 2**20 and facts["eta_s"] == 15.0
    assert facts["elapsed_s"] == 50.0 and facts["deadline_at"] == NOW + 550
    words = in_words(job, facts, now=NOW)
    assert words.startswith("downloading 40% of 100.0 MiB at 4.0 MiB/s, ETA 15s; started 50s ago, deadline ")
    assert words.endswith("(in 9m10s)")


def test_the_command_running_says_for_how_long_and_a_start_has_no_rate() -> None:
    running = replace(BASE, phase=Phase.RUNNING, phase_started_at=NOW - 75)
    assert in_words(running, activity(running, now=NOW, timeout_s=60), now=NOW).startswith(
        "running for 1m15s; started 50s ago")
    starting = replace(BASE, phase=Phase.UPLOADING, phase_started_at=NOW, bytes_total=10, bytes_done=0)
    facts = activity(starting, now=NOW, timeout_s=60)
    assert facts["percent"] == 0.0 and "rate_bps" not in facts and "eta_s" not in facts


def test_a_waiting_job_says_what_for_and_until_when_and_an_ended_one_its_duration() -> None:
    waiting = replace(BASE, state=JobState.QUEUED, phase=Phase.WAITING_FOR_STORAGE,
                      phase_started_at=NOW - 5, next_attempt_at=NOW + 12)
    facts = activity(waiting, now=NOW, timeout_s=60)
    assert facts["until"] == NOW + 12 and "elapsed_s" not in facts
    assert in_words(waiting, facts, now=NOW).startswith("waiting for storage until ")
    assert in_words(waiting, facts, now=NOW).endswith("(in 12s)")
    done = replace(BASE, state=JobState.SUCCEEDED, finished_at=NOW - 20)
    assert activity(done, now=NOW, timeout_s=60) == {"duration_s": 30.0}


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (59.6, "1m00s"), (3700, "1h01m"),
                                                (90000, "1d01h"), (-5, "0s")])
def test_durations(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_sizes() -> None:
    assert [size(n) for n in (0, 1023, 1024, 25 * 2**20)] == ["0 B", "1023 B", "1.0 KiB", "25.0 MiB"]


@pytest.mark.parametrize(("outcome", "phase"), [
    (Outcome.WAIT_FOR_STORAGE, Phase.WAITING_FOR_STORAGE),
    (Outcome.WAIT_FOR_SPACE, Phase.WAITING_FOR_SPACE),
    (Outcome.RETRY, Phase.WAITING_TO_RETRY),
])
def test_the_recorder_writes_what_a_requeued_job_waits_for(
    tmp_path: Path, outcome: Outcome, phase: Phase
) -> None:
    pipeline, ledger, store = make(tmp_path, COPY_UPPER)
    job = claim(ledger, store, "k")
    queued = pipeline.record(job, Attempt(outcome, "S3 said 503")).job
    assert queued.state is JobState.QUEUED and queued.phase is phase
    assert queued.next_attempt_at > pipeline.clock() and queued.phase_started_at is not None
    # The next claim clears it: the job is running, no longer waiting.
    pipeline.clock.offset += 100_000  # type: ignore[attr-defined]
    again = ledger.claim_next()
    assert again is not None and again.phase is Phase.NONE and again.phase_started_at is None


def test_a_requeue_due_at_once_is_not_a_wait(tmp_path: Path) -> None:
    pipeline, ledger, store = make(tmp_path, COPY_UPPER)
    job = claim(ledger, store, "k")
    queued = pipeline.record(job, Attempt(Outcome.REQUEUE, "interrupted by daemon shutdown")).job
    assert queued.phase is Phase.NONE
