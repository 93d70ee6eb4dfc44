"""Job ids and the result layout: the one rule the worker and the Lambda both follow.

Shipped in the wheel and in the Lambda package (deploy/deploy.sh zips it beside
``lambda_trigger/``), so it is stdlib only and imports nothing of ours; and
``processorctl submit`` loads it, so no ``dataclasses`` either
(tests/unit/test_layering.py holds both).

**The job id** is a function of ``(bucket, key, version id, ETag)``: the S3
version id when the bucket is versioned, else the ETag. The daemon's ledger
(worker/jobs/identity.py ``Identity.job_id``), the fleet record and the reconciler
all derive it here, so every delivery of one object version is one job.

**The result layout.** Results normally land under ``<output prefix><source key>/``:
every output at ``<prefix><relative path>``, then ``_manifest.json`` (success)
or ``_failed.json`` (permanent failure). Those two names are reserved.

S3 keys are at most 1,024 bytes of UTF-8, and a source key may itself be up to
1,024 bytes, so ``<output prefix><key>/_manifest.json`` may not be a legal key.
Such a job's outcome goes to the fallback ``<output prefix>_by-id/<job id>/``
instead (the manifest and ``_failed.json`` record the full source key). The
rule is one per job, so a result set is never split over two prefixes:

* the key-only check (both reserved names fit under the normal prefix) decides
  where ``_failed.json`` goes, since a failure has no outputs;
* a success also needs every output's key to fit; when one does not, the whole
  job (outputs and manifest) moves to the fallback.

Source keys ``_by-id`` and ``_by-id/...`` always use the fallback, whatever the
output prefix, so a source key can never name another job's fallback prefix
(nor the parent of them all); ``_by-idx`` is an ordinary key. Reading a listing
back (:func:`marker_source`, :func:`marker_job_id`) is the same rule inverted:
a marker under ``<output prefix>_by-id/`` is a job's, never a source key's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

#: Written by the pipeline last, on success: its presence means "complete".
MANIFEST_NAME = "_manifest.json"
#: Written by the pipeline on a permanent failure; removed if a later retry succeeds.
FAILED_NAME = "_failed.json"
#: Names the processing command may not write at the top of its output dir.
RESERVED_NAMES = frozenset({MANIFEST_NAME, FAILED_NAME})
#: S3's limit on an object key, in UTF-8 bytes.
MAX_KEY_BYTES = 1024
#: Under the output prefix, the fallback results live at ``_by-id/<job id>/``.
FALLBACK_DIR = "_by-id/"


# -- the job id ------------------------------------------------------------------------------------

def version_of(version_id: str | None, etag: str | None) -> str:
    """The version part of an identity: ``v:<version id>``, else ``e:<etag>``, else empty."""
    if version_id:
        return f"v:{version_id}"
    if etag:
        return f"e:{etag}"
    return ""


def job_id(bucket: str, key: str, version_id: str | None, etag: str | None) -> str:
    """A stable, path-safe id: the same object version always yields the same id.

    ``j-`` and 20 hex digits of the SHA-256 of ``[bucket, key, version]`` framed
    as JSON, so no field can shift into another.
    """
    framed = json.dumps([bucket, key, version_of(version_id, etag)], ensure_ascii=True)
    return f"j-{hashlib.sha256(framed.encode('ascii')).hexdigest()[:20]}"


# -- where a job's outcome lands -------------------------------------------------------------------

def key_bytes(text: str) -> int:
    """Length of ``text`` as an S3 key, in UTF-8 bytes (surrogatepass: whatever the string holds)."""
    return len(text.encode("utf-8", "surrogatepass"))


def normal_prefix(output_prefix: str, key: str) -> str:
    """``<output prefix><key>/``: where results go when they fit."""
    return f"{output_prefix}{key}/"


def fallback_prefix(output_prefix: str, job: str) -> str:
    """``<output prefix>_by-id/<job id>/``: where results go when they do not fit."""
    return f"{output_prefix}{FALLBACK_DIR}{job}/"


def names_fallback(key: str) -> bool:
    """Whether ``key``'s normal prefix would lie in the fallback space (``_by-id`` or ``_by-id/...``).

    Judged on the key, not on ``<output prefix><key>/``: both prefixes start with
    the same output prefix, so only what follows it can collide.
    """
    return f"{key}/".startswith(FALLBACK_DIR)


def fits(prefix: str, names: Iterable[str] = ()) -> bool:
    """Whether ``prefix`` + each reserved name and each of ``names`` is a legal S3 key."""
    base = key_bytes(prefix)
    return all(base + key_bytes(name) <= MAX_KEY_BYTES for name in (*RESERVED_NAMES, *names))


def result_prefix(output_prefix: str, key: str, job: str, outputs: Iterable[str] = ()) -> str:
    """The one prefix of job ``job``'s outcome; ``outputs`` are the relative output paths (if any).

    The normal prefix when the key does not name the fallback space and every
    name under the prefix fits in S3's key limit, else the fallback (module docstring).
    """
    normal = normal_prefix(output_prefix, key)
    if not names_fallback(key) and fits(normal, outputs):
        return normal
    return fallback_prefix(output_prefix, job)


def is_fallback(output_prefix: str, prefix: str) -> bool:
    """Whether ``prefix`` (a job's result prefix) is the fallback location."""
    return prefix.startswith(output_prefix + FALLBACK_DIR)


def failure_record_keys(output_prefix: str, key: str, job: str) -> list[str]:
    """Every key an earlier failure of this job may have written ``_failed.json`` at.

    A failure uses the key-only rule, a success may move to the fallback for
    its outputs; the success removes the record wherever it is.
    """
    keys = [fallback_prefix(output_prefix, job) + FAILED_NAME]
    normal = result_prefix(output_prefix, key, job)
    if normal != keys[0][: -len(FAILED_NAME)]:
        keys.insert(0, normal + FAILED_NAME)
    return keys


# -- reading a listing of the output bucket back -----------------------------------------------------

def marker_keys(output_prefix: str, key: str) -> tuple[str, str]:
    """The keys of ``key``'s outcome markers at its normal location ``<prefix><key>/``."""
    base = normal_prefix(output_prefix, key)
    return base + MANIFEST_NAME, base + FAILED_NAME


def _marker_base(output_prefix: str, listed_key: str) -> str | None:
    """``X`` when ``listed_key`` is ``<output prefix>X/<reserved name>``, else None."""
    if not listed_key.startswith(output_prefix):
        return None
    for marker in (MANIFEST_NAME, FAILED_NAME):
        suffix = "/" + marker
        if listed_key.endswith(suffix) and len(listed_key) >= len(output_prefix) + len(suffix):
            return listed_key[len(output_prefix): -len(suffix)]
    return None


def marker_source(output_prefix: str, listed_key: str) -> str | None:
    """The source key whose normal-location marker ``listed_key`` is, else None.

    None for every marker under ``<output prefix>_by-id/``: no source key's
    results live there (:func:`names_fallback`).
    """
    base = _marker_base(output_prefix, listed_key)
    if base is None or names_fallback(base):
        return None
    return base


def marker_job_id(output_prefix: str, listed_key: str) -> str | None:
    """The job id whose fallback marker ``listed_key`` is, else None.

    A fallback marker is ``<output prefix>_by-id/<job id>/<reserved name>``.
    """
    base = _marker_base(output_prefix, listed_key)
    if base is None or not base.startswith(FALLBACK_DIR):
        return None
    job = base[len(FALLBACK_DIR):]
    return job if job and "/" not in job else None
