"""The safety net for lost events: submit input objects that have neither a job nor a result.

An object is submitted when it is older than ``older_than_s`` (its event may
still be on its way otherwise), has no job with its identity in this
instance's ledger, and has neither ``_manifest.json`` nor ``_failed.json``
under its result prefix. The result check is per key: a result of an older
version of the key counts, so a job is never run twice for one key by the
reconciler; the ledger check is per version. A key too long for its results
(worker.layout) has them under ``_by-id/<job id>/``: that check is per version.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from worker.job import Identity
from worker.layout import FAILED_NAME, MANIFEST_NAME, fallback_source
from worker.ledger import Ledger
from worker.store import Listed


class Verdict(str, enum.Enum):
    SUBMIT = "submit"
    HAS_JOB = "has_job"
    HAS_RESULT = "has_result"
    TOO_NEW = "too_new"
    NOT_OURS = "not_ours"
    FOLDER = "folder"


@dataclass(frozen=True)
class Decision:
    listed: Listed
    identity: Identity
    verdict: Verdict


def result_sources(result_keys: Iterable[str], output_prefix: str) -> set[str]:
    """Source keys that have a manifest or a failure record, from an output-bucket listing
    (fallback results appear as ``_by-id/<job id>``: worker.layout.fallback_source)."""
    sources = set()
    for key in result_keys:
        for marker in (MANIFEST_NAME, FAILED_NAME):
            suffix = "/" + marker
            if key.startswith(output_prefix) and key.endswith(suffix):
                sources.add(key[len(output_prefix): -len(suffix)])
    return sources


def plan(
    objects: Iterable[Listed], *, bucket: str, ledger: Ledger, with_results: set[str],
    now: float, older_than_s: float, owns: Callable[[Identity], bool] = lambda _i: True,
) -> Iterator[Decision]:
    """Judge every listed object (pure apart from ledger reads)."""
    for obj in objects:
        identity = Identity(bucket, obj.key, obj.version_id, obj.etag)
        if obj.key.endswith("/"):
            verdict = Verdict.FOLDER
        elif now - obj.last_modified < older_than_s:
            verdict = Verdict.TOO_NEW
        elif obj.key in with_results or fallback_source(identity.job_id()) in with_results:
            verdict = Verdict.HAS_RESULT
        elif ledger.find(identity) is not None:
            verdict = Verdict.HAS_JOB
        elif not owns(identity):
            verdict = Verdict.NOT_OURS
        else:
            verdict = Verdict.SUBMIT
        yield Decision(obj, identity, verdict)
