"""The claim rule of the fleet's job record (worker.fleet.record.plan_claim): pure, every case."""

from __future__ import annotations

from dataclasses import replace

import pytest

from worker.fleet.record import ClaimKind, FleetJob, FleetState, Holder, plan_claim, settled
from worker.jobs.identity import Identity

ID = Identity("in", "a.csv", None, "e1")
ME = Holder("i-me", "token-now")
NOW = 1_000.0


def plan(current: FleetJob | None, message_id: str = "m-1", max_attempts: int = 3):  # type: ignore[no-untyped-def]
    return plan_claim(current, ID, me=ME, message_id=message_id, now=NOW, lease_s=60,
                      max_attempts=max_attempts)


def running(holder: str = "i-other", token: str = "t-other", lease_until: float = NOW + 30,
            message_id: str = "m-1", counted: int = 0) -> FleetJob:
    return FleetJob(ID.job_id(), "in", "a.csv", None, "e1", FleetState.RUNNING, rev=3, holder=holder,
                    token=token, message_id=message_id, lease_until=lease_until, attempts=counted + 1,
                    counted_attempts=counted, created_at=NOW - 100, started_at=NOW - 10)


def test_a_new_job_is_claimed_with_a_lease() -> None:
    p = plan(None)
    assert p.kind is ClaimKind.RUN and not p.death
    r = p.record
    assert (r.state, r.holder, r.token, r.message_id) == (FleetState.RUNNING, "i-me", "token-now", "m-1")
    assert r.lease_until == NOW + 60 and r.attempts == 1 and r.counted_attempts == 0
    assert r.job_id == ID.job_id() and r.created_at == NOW


@pytest.mark.parametrize("state", [FleetState.QUEUED, FleetState.WAITING])
def test_a_handed_back_job_is_claimed_without_counting(state: FleetState) -> None:
    current = FleetJob(ID.job_id(), "in", "a.csv", None, "e1", state, rev=5, attempts=2, counted_attempts=1)
    p = plan(current)
    assert p.kind is ClaimKind.RUN and p.record.attempts == 3 and p.record.counted_attempts == 1


@pytest.mark.parametrize("state", [FleetState.SUCCEEDED, FleetState.FAILED, FleetState.CANCELLED])
def test_an_ended_job_is_not_run_again(state: FleetState) -> None:
    current = FleetJob(ID.job_id(), "in", "a.csv", None, "e1", state, rev=5)
    assert plan(current).kind is ClaimKind.ENDED


def test_another_message_for_a_job_a_live_holder_runs_is_dropped() -> None:
    p = plan(running(message_id="m-first"), message_id="m-duplicate")
    assert p.kind is ClaimKind.DROP and "i-other" in p.reason


def test_the_holders_own_message_back_early_is_deferred_until_its_lease_ends() -> None:
    p = plan(running(message_id="m-1"), message_id="m-1")
    assert p.kind is ClaimKind.DEFER and p.until == NOW + 30


def test_a_lease_that_ran_out_is_taken_over_and_counted_as_a_death() -> None:
    p = plan(running(lease_until=NOW - 1, counted=0))
    assert p.kind is ClaimKind.RUN and p.death
    assert p.record.counted_attempts == 1 and p.record.attempts == 2 and p.record.holder == "i-me"
    assert "i-other stopped renewing its lease" in p.reason


def test_an_earlier_daemon_on_this_instance_died_even_if_its_lease_is_live() -> None:
    p = plan(running(holder="i-me", token="t-before-restart", lease_until=NOW + 50))
    assert p.kind is ClaimKind.RUN and p.death and p.record.counted_attempts == 1
    assert "restarted" in p.reason


def test_this_daemon_never_claims_its_own_job_twice() -> None:
    assert plan(running(holder="i-me", token="token-now")).kind is ClaimKind.DROP


def test_the_last_death_fails_the_job_with_a_reason_that_says_so() -> None:
    p = plan(running(lease_until=NOW - 1, counted=2), max_attempts=3)
    assert p.kind is ClaimKind.FAIL and p.death
    assert p.record.state is FleetState.FAILED and p.record.counted_attempts == 3
    assert p.record.error == p.reason and "holder died during 3 attempts" in p.reason
    assert not p.record.holder and p.record.finished_at == NOW


def test_settling_releases_the_claim_and_keeps_the_count_the_policy_chose() -> None:
    claimed = plan(None).record
    waiting = settled(claimed, FleetState.WAITING, now=NOW + 5, counted_attempts=1, error="exit 75",
                      waiting_until=NOW + 35)
    assert (waiting.holder, waiting.token, waiting.lease_until) == ("", "", 0.0)
    assert waiting.counted_attempts == 1 and waiting.waiting_until == NOW + 35
    assert waiting.finished_at is None
    done = settled(replace(waiting, started_at=NOW + 40), FleetState.SUCCEEDED, now=NOW + 50,
                   counted_attempts=1, error=None, result="s3://out/a.csv/")
    assert done.finished_at == NOW + 50 and done.duration_s == 10 and done.result == "s3://out/a.csv/"
