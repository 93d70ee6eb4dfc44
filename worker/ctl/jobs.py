"""Where `processorctl list` and `show` find jobs: a query, a source, and the ways to name a job.

A ``JobSource`` answers both commands. ``LedgerSource`` is this instance's
ledger; a fleet-wide job record can be a second source with the same three
calls, and the commands stay as they are. Stdlib only (processorctl).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from worker.errors import JobNotFound, UsageError
from worker.jobs.states import JobState

if TYPE_CHECKING:
    from worker.jobs.job import Job
    from worker.state.ledger import Ledger

#: How many jobs `processorctl list` shows unless --limit or --all says otherwise (newest first).
DEFAULT_LIMIT = 50

#: Suffixes of relative times and durations (``--since 90m``).
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class JobQuery:
    """The filters of `processorctl list` (every one optional), newest first."""

    states: tuple[JobState, ...] = ()
    bucket: str | None = None
    key_prefix: str = ""
    since: float | None = None
    until: float | None = None
    #: None: every matching job.
    limit: int | None = DEFAULT_LIMIT


@dataclass(frozen=True)
class Page:
    """The newest jobs matching a query, and how many match in all."""

    jobs: list[Job]
    total: int


class JobSource(Protocol):
    """Something `list` and `show` can read jobs from."""

    def page(self, query: JobQuery) -> Page: ...

    def by_id(self, ref: str) -> Job:
        """The job whose id is ``ref`` or uniquely starts with it; JobNotFound or UsageError."""

    def by_object(self, bucket: str, key: str) -> list[Job]:
        """Every job of the object ``s3://bucket/key`` (one per version), newest first."""


class LedgerSource:
    """This instance's ledger as a JobSource."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def page(self, query: JobQuery) -> Page:
        jobs = self.ledger.select_jobs(
            states=query.states, bucket=query.bucket, key_prefix=query.key_prefix,
            since=query.since, until=query.until, limit=query.limit)
        total = len(jobs)
        if query.limit is not None and total >= query.limit:
            total = self.ledger.count_jobs(
                states=query.states, bucket=query.bucket, key_prefix=query.key_prefix,
                since=query.since, until=query.until)
        return Page(jobs, total)

    def by_id(self, ref: str) -> Job:
        try:
            return self.ledger.get(ref)
        except JobNotFound:
            pass
        matches = self.ledger.ids_starting_with(ref, limit=6) if ref else []
        if not matches:
            raise JobNotFound(ref)
        if len(matches) > 1:
            shown = ", ".join(matches[:5]) + (", …" if len(matches) > 5 else "")
            raise UsageError(f"job id prefix {ref!r} is ambiguous: it starts {shown}; give more of it")
        return self.ledger.get(matches[0])

    def by_object(self, bucket: str, key: str) -> list[Job]:
        return self.ledger.jobs_of_object(bucket, key)


def find_job(source: JobSource, ref: str) -> Job:
    """The job ``ref`` names: an id, a unique id prefix, or ``s3://bucket/key`` (its newest job)."""
    return find_jobs(source, ref, all_versions=False)[0]


def find_jobs(source: JobSource, ref: str, *, all_versions: bool) -> list[Job]:
    """As ``find_job``; for ``s3://`` with ``all_versions``, every version's job, newest first."""
    if not ref.startswith("s3://"):
        return [source.by_id(ref)]
    bucket, key = split_s3_url(ref, option="JOB")
    if not key:
        raise UsageError(f"{ref!r} names no object: give s3://BUCKET/KEY")
    jobs = source.by_object(bucket, key)
    if not jobs:
        raise JobNotFound(ref)
    return jobs if all_versions else jobs[:1]


def split_s3_url(text: str, *, option: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key); the key may be empty (a prefix of everything)."""
    rest = text.removeprefix("s3://")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise UsageError(f"{option}: {text!r} has no bucket (s3://BUCKET/KEY)")
    return bucket, key


def parse_states(text: str) -> tuple[JobState, ...]:
    """``--state failed,cancelled`` -> the states, each checked."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    known = [state.value for state in JobState]
    bad = [name for name in names if name not in known]
    if bad or not names:
        raise UsageError(f"--state {text!r}: unknown state {', '.join(bad) or '(none given)'}; "
                         f"known: {', '.join(known)}")
    return tuple(JobState(name) for name in dict.fromkeys(names))


def parse_time(text: str, *, option: str, now: float) -> float:
    """A point in time: ``90m``/``1h``/``2d`` ago, an ISO 8601 date or time (UTC unless
    it says), or ``@EPOCH`` seconds."""
    value = text.strip()
    try:
        if value.startswith("@"):
            return float(value[1:])
        if value and value[-1] in _UNITS and value[:-1].replace(".", "", 1).isdigit():
            return now - float(value[:-1]) * _UNITS[value[-1]]
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        parsed = None
    if parsed is None:
        raise UsageError(f"{option} {text!r}: not a time; use e.g. 1h (ago), 2d, "
                         "2026-12-07, 2026-12-07T14:30Z or @1765000000")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()
