"""What the output bucket already says about a fleet job: its manifest, its failure record.

The consumer asks before running (a ``_manifest.json`` of this very version
means "already processed") and before sending a failed job's message to the
DLQ (its ``_failed.json`` must be durable first, written from the fleet record
if the instance that failed it could not).
"""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any

import structlog

from processor_layout import FAILED_NAME, MANIFEST_NAME, fallback_prefix
from worker import __version__
from worker.config import Settings
from worker.errors import StorageError
from worker.fleet.record import FleetJob
from worker.fleet.workqueue import manifest_matches
from worker.job import Job
from worker.recorder import Recorder
from worker.storage.base import ObjectStore

log = structlog.get_logger("processor.queue")


class ResultChecks:
    def __init__(self, settings: Settings, store: ObjectStore, recorder: Recorder, io: Executor) -> None:
        self._settings = settings
        self._store = store
        self._recorder = recorder
        #: Runs the second manifest read beside the first.
        self._io = io

    def already_processed(self, job: Job) -> bool:
        """Whether the output bucket holds a manifest of this very version (S3 trouble: no).

        Looked for where the job's results land (processor_layout): under the key, and
        under ``_by-id/<job id>/``, where a success goes when one of its outputs'
        keys would not fit under the key.
        """
        bucket = self._settings.s3.output_bucket
        prefixes = list(dict.fromkeys([self._recorder.result_prefix(job),
                                       fallback_prefix(self._settings.s3.output_prefix, job.id)]))
        try:
            # Both reads at once: each is a round trip, and nearly always both are misses.
            found = self._read_manifests(bucket, prefixes)
            for manifest in found:
                if manifest is None:
                    continue
                current = None
                if not job.version_id and not job.etag:
                    info = self._store.head(job.bucket, job.key)
                    current = (info.version_id, info.etag)
                if manifest_matches(manifest, job.identity, current):
                    return True
        except StorageError as exc:
            # The pipeline meets the same trouble and retries as it always does.
            log.warning("manifest_check_failed", job_id=job.id, error=str(exc))
            return False
        return False

    def _read_manifests(self, bucket: str, prefixes: list[str]) -> list[dict[str, Any] | None]:
        try:
            later = [self._io.submit(self._store.read_json, bucket, p + MANIFEST_NAME) for p in prefixes[1:]]
        except RuntimeError:  # closing: one after the other
            return [self._store.read_json(bucket, p + MANIFEST_NAME) for p in prefixes]
        return [self._store.read_json(bucket, prefixes[0] + MANIFEST_NAME),
                *(future.result() for future in later)]

    def failure_written(self, job_id: str, key: str) -> bool:
        prefix = self._recorder.result_prefix_of(key, job_id)
        record = self._store.read_json(self._settings.s3.output_bucket, prefix + FAILED_NAME)
        return record is not None and record.get("job_id") == job_id

    def write_failure_from_record(self, record: FleetJob) -> bool:
        """Write ``_failed.json`` from the fleet record (the instance that failed it could not);
        True once written, StorageError when S3 fails."""
        document = {
            "job_id": record.job_id,
            "source": {"bucket": record.bucket, "key": record.key, "version_id": record.version_id,
                       "etag": record.etag},
            "state": record.state.value, "error": record.error, "exit_code": None, "stderr_tail": None,
            "attempts": record.attempts, "failed_at": record.finished_at,
            "processor_version": __version__,
        }
        prefix = self._recorder.result_prefix_of(record.key, record.job_id)
        self._store.put_json(self._settings.s3.output_bucket, prefix + FAILED_NAME, document)
        return True
