"""The reconciler's decision, shared by the Lambda's reconcile mode and `processorctl reconcile`.

Pure and stdlib only. The two rules it needs -- the job id, and where a job's
results live (``<output prefix><key>/``, or ``<output prefix>_by-id/<job id>/``
for keys too long for it, keys that name the fallback space, and successes
whose outputs would not fit) -- are processor_shared.layout's, the module the Lambda
package ships beside ``lambda_trigger/``.

An input object is lost -- it gets (re)submitted -- when it is older than
``older_than_s`` (its event may still be on its way otherwise), is not a
folder marker, has neither ``_manifest.json`` nor ``_failed.json`` at either
result location, and (for the instance-side reconciler) has no job in the
local ledger. The result check by key counts a result of an older version of
the key, so the reconciler never runs one key twice; the ``_by-id`` check is
per version because the job id is.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from processor_shared.layout import job_id, marker_job_id, marker_source


class Verdict(str, enum.Enum):
    """What the reconciler does with one listed object, and why."""

    SUBMIT = "submit"
    HAS_JOB = "has_job"
    HAS_RESULT = "has_result"
    TOO_NEW = "too_new"
    FOLDER = "folder"


class Listed(Protocol):
    """One object of a bucket listing (worker.storage.base.Listed satisfies it)."""

    @property
    def key(self) -> str: ...

    @property
    def version_id(self) -> str | None: ...

    @property
    def etag(self) -> str | None: ...

    @property
    def last_modified(self) -> float: ...


@dataclass(frozen=True)
class Decision:
    """The verdict on one listed object, with its job id."""

    listed: Listed
    job_id: str
    verdict: Verdict


@dataclass(frozen=True)
class Results:
    """Which objects have an outcome, from one listing of the output prefix."""

    #: Source keys with a result at ``<prefix><key>/``.
    keys: frozenset[str] = field(default_factory=frozenset)
    #: Job ids with a result at ``<prefix>_by-id/<job id>/``.
    job_ids: frozenset[str] = field(default_factory=frozenset)

    def has(self, key: str, job_id: str) -> bool:
        # Both places are looked at whatever the key's length: cheap, and right
        # even if the limit's arithmetic ever differs by a byte between writers.
        return key in self.keys or job_id in self.job_ids


def index_results(result_keys: Iterable[str], output_prefix: str) -> Results:
    """The Results in a listing of the output bucket under ``output_prefix``."""
    keys: set[str] = set()
    job_ids: set[str] = set()
    for listed_key in result_keys:
        job = marker_job_id(output_prefix, listed_key)
        if job is not None:
            job_ids.add(job)
        source = marker_source(output_prefix, listed_key)
        if source is not None:
            keys.add(source)
    return Results(frozenset(keys), frozenset(job_ids))


def plan(
    objects: Iterable[Listed],
    *,
    bucket: str,
    results: Results,
    now: float,
    older_than_s: float,
    has_job: Callable[[Listed], bool] = lambda _listed: False,
) -> Iterator[Decision]:
    """Judge every listed object; ``has_job`` is the instance's ledger check (none in the Lambda)."""
    for obj in objects:
        job = job_id(bucket, obj.key, obj.version_id, obj.etag)
        if obj.key.endswith("/"):
            verdict = Verdict.FOLDER
        elif now - obj.last_modified < older_than_s:
            verdict = Verdict.TOO_NEW
        elif results.has(obj.key, job):
            verdict = Verdict.HAS_RESULT
        elif has_job(obj):
            verdict = Verdict.HAS_JOB
        else:
            verdict = Verdict.SUBMIT
        yield Decision(obj, job, verdict)


def count(decisions: Iterable[Decision]) -> dict[str, int]:
    """Decisions per verdict, every verdict present (0 when none)."""
    counts = {verdict.value: 0 for verdict in Verdict}
    for decision in decisions:
        counts[decision.verdict.value] += 1
    return counts
