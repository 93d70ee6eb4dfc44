"""The transition table, checked over every (from, to) pair."""

from __future__ import annotations

import itertools

import pytest

from worker.errors import InvalidTransition
from worker.jobs.identity import Identity, normalise_etag
from worker.jobs.states import JobState, can_transition, check_transition

Q, R, S, F, C = (JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED,
                 JobState.CANCELLED)

#: The contract (ARCHITECTURE §3), written out independently of worker.jobs.states._NEXT.
ALLOWED = {
    (Q, R), (Q, C), (Q, F),
    (R, Q), (R, S), (R, F), (R, C),
    (F, Q), (C, Q),
}


@pytest.mark.parametrize("current,target", list(itertools.product(JobState, JobState)))
def test_every_pair_follows_the_contract(current: JobState, target: JobState) -> None:
    expected = (current, target) in ALLOWED
    assert can_transition(current, target) is expected
    if expected:
        check_transition("j-x", current, target)
    else:
        with pytest.raises(InvalidTransition) as info:
            check_transition("j-x", current, target)
        assert current.value in str(info.value) and target.value in str(info.value)


def test_identity_prefers_version_id_then_etag() -> None:
    assert Identity("b", "k", "v1", "e1").version == "v:v1"
    assert Identity("b", "k", None, "e1").version == "e:e1"
    assert Identity("b", "k").version == ""


def test_job_id_is_stable_and_distinguishes_versions() -> None:
    a = Identity("b", "k", "v1").job_id()
    assert a == Identity("b", "k", "v1").job_id()
    assert a != Identity("b", "k", "v2").job_id()
    assert a != Identity("b", "k2", "v1").job_id()
    # No ambiguity from separators inside fields.
    assert Identity("b", "k\0x").job_id() != Identity("b\0k", "x").job_id()
    assert a.startswith("j-") and all(c in "0123456789abcdef" for c in a[2:])


@pytest.mark.parametrize("identity,job_id", [
    (Identity("in", "reports/q3.csv", None, "abc"), "j-53ad5e31761e8618573c"),
    (Identity("in", "a/é b.csv", "3HL4kqtJlcpXroDTDmJ"), "j-7b3021d58684c26f63af"),
    (Identity("in", "k"), "j-9a471bac8ed7bc414cdf"),
])
def test_job_ids_never_change(identity: Identity, job_id: str) -> None:
    """Ids already in ledgers (and in result manifests) must keep matching their objects."""
    assert identity.job_id() == job_id






def test_hostile_keys_give_path_safe_ids() -> None:
    for key in ("../../etc/passwd", "-rf", "$(reboot)", "a/" * 500, "\x1b[2J"):
        job_id = Identity("b", key, None, "e").job_id()
        assert "/" not in job_id and ".." not in job_id and not job_id.startswith("-")


@pytest.mark.parametrize(
    "raw,bare", [('"abc"', "abc"), ("abc", "abc"), ("", None), (None, None), ('""', None)]
)
def test_normalise_etag(raw: str | None, bare: str | None) -> None:
    assert normalise_etag(raw) == bare
