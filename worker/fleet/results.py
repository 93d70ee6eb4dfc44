"""What the output bucket already says about a fleet job: its manifest, its failure record.

The consumer asks before running (a ``_manifest.json`` of this very version
means "already processed") and before sending a failed job's message to the
DLQ (its ``_failed.json`` must be durable first, written from the fleet record
if the instance that failed it could not).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

import structlog

from processor_shared.layout import FAILED_NAME, MANIFEST_NAME, fallback_prefix
from processor_shared.layout import result_prefix as layout_result_prefix
from worker import __version__
from worker.config.settings import Settings
from worker.errors import StorageError
from worker.fleet.record import FleetJob
from worker.fleet.workqueue import manifest_matches
from worker.jobs.identity import Identity
from worker.storage.base import ObjectStore

log = structlog.get_logger("processor.queue")


class ResultChecks:
    def __init__(self, settings: Settings, store: ObjectStore, io: Executor) -> None:
        self._settings = settings
        self._store = store
        #: Runs the second manifest read beside the first.
        self._io = io

    def start_check(self, identity: Identity) -> ManifestCheck:
        """Start reading this version's manifests now (both at once, on the I/O pool); the
        answer is :meth:`ManifestCheck.already_processed`, asked once the job may run.

        Started as the message arrives, the reads overlap the claim and the slot's start
        instead of delaying the job's download by a round trip.
        """
        job_id = identity.job_id()
        bucket = self._settings.s3.output_bucket
        prefixes = list(dict.fromkeys([self.result_prefix(identity.key, job_id),
                                       fallback_prefix(self._settings.s3.output_prefix, job_id)]))
        reads: list[Future[dict[str, Any] | None]] = []
        for prefix in prefixes:
            try:
                reads.append(self._io.submit(self._store.read_json, bucket, prefix + MANIFEST_NAME))
            except RuntimeError:  # the pool is closing: read here, one after the other
                reads.append(_done(self._store.read_json, bucket, prefix + MANIFEST_NAME))
        return ManifestCheck(identity, job_id, reads, self._store)

    def already_processed(self, identity: Identity) -> bool:
        """Whether the output bucket holds a manifest of this very version (S3 trouble: no)."""
        return self.start_check(identity).already_processed()

    def result_prefix(self, key: str, job_id: str) -> str:
        """Where job ``job_id`` on ``key`` lands when no outputs say otherwise (a failure's location)."""
        return layout_result_prefix(self._settings.s3.output_prefix, key, job_id)

    def failure_written(self, job_id: str, prefix: str) -> bool:
        """Whether ``_failed.json`` of job ``job_id`` is under ``prefix`` (its result prefix)."""
        record = self._store.read_json(self._settings.s3.output_bucket, prefix + FAILED_NAME)
        return record is not None and record.get("job_id") == job_id

    def write_failure_from_record(self, record: FleetJob, prefix: str) -> bool:
        """Write ``_failed.json`` under ``prefix`` from the fleet record (the instance that failed
        it could not); True once written, StorageError when S3 fails."""
        document = {
            "job_id": record.job_id,
            "source": {"bucket": record.bucket, "key": record.key, "version_id": record.version_id,
                       "etag": record.etag},
            "state": record.state.value, "error": record.error, "exit_code": None, "stderr_tail": None,
            "attempts": record.attempts, "failed_at": record.finished_at,
            "processor_version": __version__,
        }
        self._store.put_json(self._settings.s3.output_bucket, prefix + FAILED_NAME, document)
        return True


class ManifestCheck:
    """The manifest reads of one version, started by :meth:`ResultChecks.start_check`.

    Looked for where the job's results land (processor_shared.layout): under the key, and
    under ``_by-id/<job id>/``, where a success goes when one of its outputs' keys would
    not fit under the key.
    """

    def __init__(self, identity: Identity, job_id: str, reads: list[Future[dict[str, Any] | None]],
                 store: ObjectStore) -> None:
        self._identity = identity
        self._job_id = job_id
        self._reads = reads
        self._store = store

    def cancel(self) -> None:
        """Not needed after all (the claim went elsewhere): reads not yet begun are dropped."""
        for read in self._reads:
            read.cancel()

    def already_processed(self) -> bool:
        """True when a manifest of this very version exists; S3 trouble: False (the
        pipeline meets the same trouble and retries as it always does)."""
        identity = self._identity
        try:
            for read in self._reads:
                manifest = read.result()
                if manifest is None:
                    continue
                current = None
                if not identity.version_id and not identity.etag:
                    info = self._store.head(identity.bucket, identity.key)
                    current = (info.version_id, info.etag)
                if manifest_matches(manifest, identity, current):
                    return True
        except StorageError as exc:
            log.warning("manifest_check_failed", job_id=self._job_id, error=str(exc))
            return False
        return False


def _done(read: Callable[..., dict[str, Any] | None], *args: Any) -> Future[dict[str, Any] | None]:
    """``read(*args)`` made here, as a finished future (its error kept for ``result()``)."""
    future: Future[dict[str, Any] | None] = Future()
    try:
        future.set_result(read(*args))
    except Exception as exc:  # noqa: BLE001 (handed to the caller through result())
        future.set_exception(exc)
    return future
