"""Where a job's outcome lands in the output bucket: the result layout.

Results normally land under ``<output prefix><source key>/``: every output at
``<prefix><relative path>``, then ``_manifest.json`` (success) or
``_failed.json`` (permanent failure). Those two names are reserved.

S3 keys are at most 1,024 bytes of UTF-8, and a source key may itself be up to
1,024 bytes, so ``<output prefix><key>/_manifest.json`` may not be a legal key.
Such a job's outcome goes to the fallback ``<output prefix>_by-id/<job id>/``
instead (the manifest and ``_failed.json`` record the full source key). The
rule is one per job, so a result set is never split over two prefixes:

* the key-only check (both reserved names fit under the normal prefix) decides
  where ``_failed.json`` goes, since a failure has no outputs;
* a success also needs every output's key to fit; when one does not, the whole
  job (outputs and manifest) moves to the fallback.

Source keys ``_by-id`` and ``_by-id/...`` always use the fallback, so a
source key can never name another job's fallback prefix.

Stdlib only: ``processorctl submit`` and the reconciler import it.
"""

from __future__ import annotations

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


def key_bytes(text: str) -> int:
    """Length of ``text`` as an S3 key, in UTF-8 bytes."""
    return len(text.encode("utf-8", "surrogatepass"))


def normal_prefix(output_prefix: str, key: str) -> str:
    """``<output prefix><key>/``: where results go when they fit."""
    return f"{output_prefix}{key}/"


def fallback_prefix(output_prefix: str, job_id: str) -> str:
    """``<output prefix>_by-id/<job id>/``: where results go when they do not fit."""
    return f"{output_prefix}{FALLBACK_DIR}{job_id}/"


def fallback_source(job_id: str) -> str:
    """What :func:`fallback_prefix` looks like to a listing that strips the output prefix and the
    trailing ``/<reserved name>`` (the reconciler's view)."""
    return f"{FALLBACK_DIR}{job_id}"


def fits(prefix: str, names: Iterable[str] = ()) -> bool:
    """Whether ``prefix`` + each reserved name and each of ``names`` is a legal S3 key."""
    base = key_bytes(prefix)
    return all(base + key_bytes(name) <= MAX_KEY_BYTES for name in (*RESERVED_NAMES, *names))


def result_prefix(output_prefix: str, key: str, job_id: str, outputs: Iterable[str] = ()) -> str:
    """The one prefix of this job's outcome; ``outputs`` are the relative output paths (if any).

    The normal prefix when it and every name under it fit in S3's key limit,
    else the fallback (module docstring).
    """
    normal = normal_prefix(output_prefix, key)
    if not normal.startswith(FALLBACK_DIR) and fits(normal, outputs):
        return normal
    return fallback_prefix(output_prefix, job_id)


def is_fallback(output_prefix: str, prefix: str) -> bool:
    """Whether ``prefix`` (a job's result prefix) is the fallback location."""
    return prefix.startswith(output_prefix + FALLBACK_DIR)


def failure_record_keys(output_prefix: str, key: str, job_id: str) -> list[str]:
    """Every key an earlier failure of this job may have written ``_failed.json`` at.

    A failure uses the key-only rule, a success may move to the fallback for
    its outputs; the success removes the record wherever it is.
    """
    keys = [fallback_prefix(output_prefix, job_id) + FAILED_NAME]
    normal = result_prefix(output_prefix, key, job_id)
    if normal != keys[0][: -len(FAILED_NAME)]:
        keys.insert(0, normal + FAILED_NAME)
    return keys
