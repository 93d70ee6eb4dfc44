"""The object store on S3 (or any S3-compatible endpoint): the daemon's one S3 adapter.

Every botocore/boto3 error is translated here, once, into StorageError with
``retryable`` set, so the pipeline never sees botocore. Transfers use boto3's
managed transfer (multipart, parallel ranges) with a bounded chunk size so the
daemon's memory stays flat whatever the object size.
"""

from __future__ import annotations

import json
import queue
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import s3transfer.exceptions
import structlog
from boto3.exceptions import RetriesExceededError, S3UploadFailedError
from boto3.s3.transfer import ProgressCallbackInvoker, TransferConfig, create_transfer_manager
from botocore.config import Config
from s3transfer.manager import TransferManager
from s3transfer.subscribers import BaseSubscriber
from tenacity import RetryCallState

from worker.aws.errors import BOTOCORE_ERRORS, TRANSPORT_ERRORS, error_reply, translated
from worker.aws.retry import S3_CALL, S3_CLIENT, S3_DOWNLOAD_GET_ATTEMPTS
from worker.config.settings import S3Settings
from worker.errors import Interrupted, ObjectChanged, StorageError
from worker.jobs.identity import normalise_etag
from worker.storage.base import Listed, ObjectInfo

_log = structlog.get_logger("processor.s3")

#: Error codes worth another try (throttling, S3-side faults, timeouts).
_RETRYABLE_CODES = frozenset(
    {
        "SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout",
        "RequestTimeoutException", "Throttling", "ThrottlingException",
        "RequestLimitExceeded", "500", "502", "503", "504", "OperationAborted",
    }
)

#: Managed-transfer tuning: parts of 8 MiB, at most 4 in flight, so a transfer
#: holds a bounded amount of memory (roughly max_concurrency x part size: the
#: daemon's peak RSS stays under 100 MiB whatever the object size).
TRANSFER_CONFIG = TransferConfig(
    multipart_threshold=32 * 1024 * 1024,
    multipart_chunksize=8 * 1024 * 1024,
    max_concurrency=4,
    max_io_queue=64,
    io_chunksize=256 * 1024,
    use_threads=True,
    num_download_attempts=S3_DOWNLOAD_GET_ATTEMPTS,
)


#: Larger "JSON" objects are not ours (a manifest is a few KiB per output).
_MAX_JSON_BYTES = 16 * 1024 * 1024


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, StorageError) and exc.retryable


def _log_retry(state: RetryCallState) -> None:
    outcome = state.outcome
    _log.warning(
        "s3_call_retry", call=getattr(state.fn, "__name__", "?"), attempt=state.attempt_number,
        error=str(outcome.exception()) if outcome is not None else None,
        delay_s=round(state.upcoming_sleep, 2),
    )


#: Retries on top of botocore's own (which cover single HTTP requests): a whole
#: call is retried a few times with jittered backoff before the job is requeued
#: (the numbers, and what the levels add up to: worker.aws.retry).
_retrying = S3_CALL.decorator(_is_retryable, _log_retry)


#: The connection failed: botocore's transport errors, a GET's body broken off
#: mid-stream, and a download whose body kept breaking off (s3transfer's own retries).
_CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    *TRANSPORT_ERRORS,
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.IncompleteReadError,
    RetriesExceededError,
    s3transfer.exceptions.RetriesExceededError,
)
#: What S3 calls raise: botocore's errors and those of boto3's managed transfers.
_S3_ERRORS: tuple[type[Exception], ...] = (
    *BOTOCORE_ERRORS, *_CONNECTION_ERRORS,
    s3transfer.exceptions.S3DownloadFailedError, S3UploadFailedError,
)


def _storage_error(what: str, exc: Exception) -> StorageError:
    """The StorageError (ObjectChanged, when the object is not the job's any more) of one of _S3_ERRORS."""
    if isinstance(exc, botocore.exceptions.ClientError):
        code, message = error_reply(exc)
        if code in {"PreconditionFailed", "412"}:
            return ObjectChanged(f"{what}: object changed since the event ({message})")
        if code in {"NoSuchKey", "404", "NoSuchVersion", "NotFound"}:
            return StorageError(f"{what}: object not found ({code})", retryable=False, code=code)
        return StorageError(f"{what}: {code}: {message}", retryable=code in _RETRYABLE_CODES, code=code)
    if isinstance(exc, _CONNECTION_ERRORS):
        return StorageError(f"{what}: transport error: {exc}", retryable=True, code="Transport")
    if isinstance(exc, s3transfer.exceptions.S3DownloadFailedError):
        # s3transfer's only use of it: a ranged GET's If-Match (the HEAD's ETag) failed.
        return ObjectChanged(f"{what}: object changed during the download ({exc})")
    if isinstance(exc, S3UploadFailedError):
        text = str(exc)
        permanent = any(code in text for code in ("AccessDenied", "NoSuchBucket", "InvalidBucketName"))
        return StorageError(f"{what}: {text}", retryable=not permanent, code="UploadFailed")
    return StorageError(f"{what}: {exc}", retryable=False, code=type(exc).__name__)


def _translated(what: str) -> AbstractContextManager[None]:
    """Turn boto3/botocore errors into StorageError naming the operation and object."""
    return translated(what, _storage_error, _S3_ERRORS)


class TransferStopped(Exception):
    """Carries an ``Interrupted`` from a progress callback out of s3transfer's threads.

    s3transfer fails a transfer only on an ``Exception``: a ``BaseException``
    raised in one of its threads bypasses it, and the transfer then returns as
    if it had succeeded (a download cut short, an upload never completed).
    """

    def __init__(self, interrupted: Interrupted) -> None:
        super().__init__(str(interrupted))
        self.interrupted = interrupted


def _carried(progress: Callable[[int], None]) -> Callable[[int], None]:
    """``progress`` for a managed transfer: a stop request crosses its threads as TransferStopped."""
    def invoke(amount: int) -> None:
        try:
            progress(amount)
        except Interrupted as exc:
            raise TransferStopped(exc) from exc
    return invoke


@contextmanager
def _stoppable() -> Iterator[None]:
    """Around a managed transfer's ``result()``: the stop request comes out as raised."""
    try:
        yield
    except TransferStopped as exc:
        raise exc.interrupted from None


def _log_failed_attempt(
    response: Any = None, attempts: int = 0, caught_exception: Exception | None = None,
    operation: Any = None, **_: Any,
) -> None:
    """Log each failed HTTP attempt botocore is about to judge for a retry.

    Returns None, so botocore's own retry handler still decides; this only
    makes the retries visible (botocore itself logs them at DEBUG).
    """
    status = None
    code = None
    if response is not None:
        http, parsed = response
        status = getattr(http, "status_code", None)
        code = (parsed or {}).get("Error", {}).get("Code")
    if caught_exception is None and (status is None or status < 500) and code not in _RETRYABLE_CODES:
        return
    _log.warning(
        "s3_request_failed", operation=getattr(operation, "name", None), attempt=attempts,
        status=status, code=code,
        error=None if caught_exception is None else type(caught_exception).__name__,
    )


def _full_object_checksums(response: Mapping[str, Any]) -> dict[str, str]:
    """Checksums that cover the whole object, and only those.

    A multipart object's checksum is of the whole object only when S3 says
    ``ChecksumType: FULL_OBJECT``; otherwise (COMPOSITE, or an older/emulated
    S3 that does not say) it is a checksum of part checksums and cannot be
    compared with the file's.
    """
    kind = response.get("ChecksumType")
    multipart = "-" in str(response.get("ETag", ""))
    if kind == "COMPOSITE" or (multipart and kind != "FULL_OBJECT"):
        return {}
    found = {}
    for name, field_name in (("sha256", "ChecksumSHA256"), ("crc32", "ChecksumCRC32")):
        value = response.get(field_name)
        if value and "-" not in value:
            found[name] = str(value)
    return found


class _KnownObject(BaseSubscriber):  # type: ignore[misc]  # s3transfer is untyped
    """Tells s3transfer the size and ETag the pipeline's HEAD already returned, so the
    download does not HEAD the object a second time (and ranged GETs use If-Match)."""

    def __init__(self, size: int, etag: str | None) -> None:
        self._size = size
        self._etag = etag

    def on_queued(self, future: Any, **kwargs: Any) -> None:
        future.meta.provide_transfer_size(self._size)
        if self._etag:
            future.meta.provide_object_etag(f'"{self._etag}"')


class S3Store:
    """ObjectStore backed by boto3.

    An object below the multipart threshold moves in one GetObject/PutObject
    made in the caller's thread. Larger ones go through s3transfer's
    TransferManager (boto3's managed transfer: parallel parts), kept in a small
    pool, one per concurrent transfer, created on first need and reused, so a
    job does not pay for a new manager and its thread pools on every call.
    ``close()`` shuts them down.
    """

    def __init__(self, client: Any, transfer_config: TransferConfig = TRANSFER_CONFIG) -> None:
        self._client = client
        self._transfer = transfer_config
        self._managers: queue.SimpleQueue[TransferManager] = queue.SimpleQueue()

    @contextmanager
    def _manager(self) -> Iterator[TransferManager]:
        try:
            manager = self._managers.get_nowait()
        except queue.Empty:
            manager = create_transfer_manager(self._client, self._transfer)
        try:
            yield manager
        finally:
            self._managers.put(manager)

    def close(self) -> None:
        """Shut down the pooled transfer managers (idle ones; call when no job runs)."""
        while True:
            try:
                manager = self._managers.get_nowait()
            except queue.Empty:
                return
            manager.shutdown()

    @classmethod
    def from_settings(cls, settings: S3Settings) -> S3Store:
        config = Config(
            region_name=settings.region,
            **S3_CLIENT.config(),  # retries and timeouts: worker.aws.retry
            # Path-style for custom endpoints: emulators and most S3-compatible
            # stores do not resolve virtual-hosted bucket names.
            s3={"addressing_style": "path"} if settings.endpoint_url else {},
        )
        client = boto3.session.Session().client(
            "s3", endpoint_url=settings.endpoint_url or None, config=config
        )
        client.meta.events.register("needs-retry.s3", _log_failed_attempt)
        return cls(client)

    @_retrying
    def head(
        self, bucket: str, key: str, *, version_id: str | None = None, etag: str | None = None
    ) -> ObjectInfo:
        args: dict[str, Any] = {"Bucket": bucket, "Key": key, "ChecksumMode": "ENABLED"}
        if version_id:
            args["VersionId"] = version_id
        elif etag:
            args["IfMatch"] = f'"{etag}"'
        with _translated(f"head s3://{bucket}/{key}"):
            response = self._client.head_object(**args)
        return ObjectInfo(
            size=int(response["ContentLength"]),
            etag=normalise_etag(response.get("ETag")),
            version_id=response.get("VersionId") or None,
            checksums=_full_object_checksums(response),
            sse=response.get("ServerSideEncryption"),
            sse_customer=bool(response.get("SSECustomerAlgorithm")),
        )

    @_retrying
    def download(
        self, bucket: str, key: str, dest: Path, *, version_id: str | None = None,
        size: int | None = None, etag: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Download to ``dest``; ``size`` and ``etag`` (from a HEAD) spare a second HEAD.

        Below the multipart threshold, where s3transfer would make a single
        GetObject anyway, the GET is made here in the job's thread; larger
        objects go through the pooled transfer manager (parallel ranged GETs).
        Either way a GET carries If-Match with the HEAD's ETag when it is known.
        """
        what = f"download s3://{bucket}/{key}"
        if size is not None and size < self._transfer.multipart_threshold:
            with _translated(what):
                self._get_whole(bucket, key, dest, version_id, etag, progress)
            return
        extra = {"VersionId": version_id} if version_id else {}
        subscribers: list[BaseSubscriber] = []
        if size is not None:
            subscribers.append(_KnownObject(size, etag))
        if progress is not None:
            subscribers.append(ProgressCallbackInvoker(_carried(progress)))
        with _stoppable(), _translated(what), self._manager() as manager:
            manager.download(bucket, key, str(dest), extra_args=extra, subscribers=subscribers).result()

    def _get_whole(
        self, bucket: str, key: str, dest: Path, version_id: str | None, etag: str | None,
        progress: Callable[[int], None] | None,
    ) -> None:
        args: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if version_id:
            args["VersionId"] = version_id
        if etag:
            args["IfMatch"] = f'"{etag}"'
        body = self._client.get_object(**args)["Body"]
        try:
            # StreamingBody checks the length against Content-Length (IncompleteReadError).
            with dest.open("wb") as out:
                for chunk in body.iter_chunks(self._transfer.io_chunksize):
                    out.write(chunk)
                    if progress is not None:
                        progress(len(chunk))
        finally:
            body.close()

    @_retrying
    def upload_file(
        self, src: Path, bucket: str, key: str, *, content_type: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Upload ``src``: one PutObject below the multipart threshold, else a managed
        multipart upload (parallel parts, pooled transfer manager)."""
        # CRC32: S3 checks it (every part) and keeps a full-object checksum; the
        # manifest carries the SHA-256 (computed once, locally).
        extra: dict[str, Any] = {"ChecksumAlgorithm": "CRC32"}
        if content_type:
            extra["ContentType"] = content_type
        what = f"upload s3://{bucket}/{key}"
        size = src.stat().st_size
        if size < self._transfer.multipart_threshold:
            with _translated(what), src.open("rb") as body:
                # A seekable body: botocore's retries rewind it.
                self._client.put_object(Bucket=bucket, Key=key, Body=body, **extra)
            if progress is not None:
                progress(size)
            return
        subscribers = [ProgressCallbackInvoker(_carried(progress))] if progress is not None else []
        with _stoppable(), _translated(what), self._manager() as manager:
            manager.upload(str(src), bucket, key, extra_args=extra, subscribers=subscribers).result()

    @_retrying
    def put_json(self, bucket: str, key: str, document: Mapping[str, Any]) -> None:
        body = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False).encode()
        with _translated(f"put s3://{bucket}/{key}"):
            self._client.put_object(
                Bucket=bucket, Key=key, Body=body, ContentType="application/json",
                ChecksumAlgorithm="CRC32",
            )

    def list_objects(self, bucket: str, prefix: str = "") -> Iterator[Listed]:
        """The current version of every object under ``prefix`` (delete markers skipped)."""
        paginator = self._client.get_paginator("list_object_versions")
        with _translated(f"list s3://{bucket}/{prefix}"):
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for version in page.get("Versions", []):
                    if not version.get("IsLatest", True):
                        continue
                    version_id = version.get("VersionId")
                    yield Listed(
                        key=version["Key"],
                        version_id=None if version_id in (None, "", "null") else version_id,
                        etag=normalise_etag(version.get("ETag")),
                        size=int(version.get("Size", 0)),
                        last_modified=version["LastModified"].timestamp(),
                    )

    @_retrying
    def read_json(self, bucket: str, key: str) -> dict[str, Any] | None:
        """A small JSON object; None when missing or not a JSON object (a foreign file)."""
        what = f"get s3://{bucket}/{key}"
        try:
            with _translated(what):
                body = self._client.get_object(Bucket=bucket, Key=key)["Body"]
                try:
                    data = body.read(_MAX_JSON_BYTES + 1)
                finally:
                    body.close()
        except StorageError as exc:
            if exc.code in {"NoSuchKey", "404", "NotFound"}:
                return None
            raise
        try:
            document = json.loads(data) if len(data) <= _MAX_JSON_BYTES else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            document = None
        return document if isinstance(document, dict) else None

    @_retrying
    def delete(self, bucket: str, key: str) -> None:
        with _translated(f"delete s3://{bucket}/{key}"):
            self._client.delete_object(Bucket=bucket, Key=key)
