"""The reconciler's decision, shared by the Lambda's reconcile mode and `processorctl reconcile`.

Pure and stdlib only: the Lambda package holds only ``lambda_trigger/``, so
the two rules it needs from the worker are restated here, and a test keeps
them equal to the worker's (tests/unit/test_reconcile_plan.py):

- the job id, a function of ``(bucket, key, version id, ETag)``
  (worker/identity.py ``Identity.job_id``);
- where a job's results live: ``<output prefix><key>/``, except for keys so
  long that ``<output prefix><key>/_manifest.json`` would pass S3's
  1,024-byte key limit, whose results live under
  ``<output prefix>_by-id/<job id>/`` instead (worker/storage/layout.py, which also
  sends there a success whose outputs would not fit).

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
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

#: The result files that mean "this object's job has an outcome" (worker/pipeline.py).
MANIFEST_NAME = "_manifest.json"
FAILED_NAME = "_failed.json"
#: Under the output prefix: results of keys too long for the normal location.
BY_ID_DIR = "_by-id/"
#: S3's limit on an object key, in UTF-8 bytes.
S3_KEY_MAX_BYTES = 1024


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


def job_id(bucket: str, key: str, version_id: str | None, etag: str | None) -> str:
    """The job id ``processorctl submit`` and the daemon give this object version.

    sha256 of the JSON framing ``[bucket, key, version]`` (version ``v:<id>``,
    else ``e:<etag>``, else empty), as worker/identity.py computes it.
    """
    if version_id:
        version = f"v:{version_id}"
    elif etag:
        version = f"e:{etag}"
    else:
        version = ""
    framed = json.dumps([bucket, key, version], ensure_ascii=True)
    return f"j-{hashlib.sha256(framed.encode('ascii')).hexdigest()[:20]}"


def uses_by_id(output_prefix: str, key: str) -> bool:
    """True when ``key``'s results cannot live at ``<prefix><key>/``.

    That is when ``<prefix><key>/_manifest.json`` (the longer reserved name)
    would pass S3's key limit, or when the normal prefix would itself read as
    a ``_by-id/`` one. A success whose *outputs* do not fit goes to ``_by-id/``
    as well (worker/storage/layout.py); the Lambda cannot know the outputs, which is
    why Results.has looks at both places.
    """
    normal = f"{output_prefix}{key}/"
    if normal.startswith(BY_ID_DIR):
        return True
    longest = normal + MANIFEST_NAME
    # surrogatepass: counts bytes as the worker does, whatever the string holds.
    return len(longest.encode("utf-8", "surrogatepass")) > S3_KEY_MAX_BYTES


def result_prefix(output_prefix: str, key: str, job: str) -> str:
    """Where the results of job ``job`` (for source ``key``) are written."""
    if uses_by_id(output_prefix, key):
        return f"{output_prefix}{BY_ID_DIR}{job}/"
    return f"{output_prefix}{key}/"


def marker_keys(output_prefix: str, key: str) -> tuple[str, str]:
    """The keys of ``key``'s result markers at the normal location ``<prefix><key>/``."""
    base = f"{output_prefix}{key}/"
    return base + MANIFEST_NAME, base + FAILED_NAME


def index_results(result_keys: Iterable[str], output_prefix: str) -> Results:
    """The Results in a listing of the output bucket under ``output_prefix``."""
    keys: set[str] = set()
    job_ids: set[str] = set()
    by_id = output_prefix + BY_ID_DIR
    for listed_key in result_keys:
        if not listed_key.startswith(output_prefix):
            continue
        for marker in (MANIFEST_NAME, FAILED_NAME):
            suffix = "/" + marker
            if not listed_key.endswith(suffix):
                continue
            source = listed_key[len(output_prefix): -len(suffix)]
            keys.add(source)
            if listed_key.startswith(by_id):
                job = listed_key[len(by_id): -len(suffix)]
                if "/" not in job:
                    job_ids.add(job)
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
