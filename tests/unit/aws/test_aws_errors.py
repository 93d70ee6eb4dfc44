"""worker/aws/errors.py: ``translated``, the one block every worker adapter turns SDK errors in with,
and each adapter's translation (S3, SQS, DynamoDB) through it. The adapters against the
emulator are tested in tests/integration/ (test_s3_store.py, test_dynamo_records.py)."""

from __future__ import annotations

import pytest
import s3transfer.exceptions
from boto3.exceptions import RetriesExceededError, S3UploadFailedError
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    IncompleteReadError,
    NoCredentialsError,
    ReadTimeoutError,
)

from worker.aws.errors import translated
from worker.errors import ObjectChanged, StorageError
from worker.fleet import dynamo
from worker.fleet import sqs as fleet_sqs
from worker.fleet.record import RecordConflict, RecordError
from worker.fleet.workqueue import QueueError
from worker.storage import s3 as storage_s3


def _client_error(code: str, message: str = "no") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, "Op")


def test_translated_raises_the_translation_chained_and_lets_other_errors_through() -> None:
    cause = _client_error("Boom")
    with pytest.raises(ValueError, match="call: Boom") as info, \
            translated("call", lambda what, exc: ValueError(f"{what}: {exc.response['Error']['Code']}")):
        raise cause
    assert info.value.__cause__ is cause
    with pytest.raises(KeyError), translated("call", lambda what, exc: ValueError(what)):
        raise KeyError("not an SDK error")


@pytest.mark.parametrize(("error", "kind", "retryable", "code"), [
    (_client_error("PreconditionFailed"), ObjectChanged, False, "PreconditionFailed"),
    (_client_error("NoSuchKey"), StorageError, False, "NoSuchKey"),
    (_client_error("SlowDown"), StorageError, True, "SlowDown"),
    (_client_error("AccessDenied"), StorageError, False, "AccessDenied"),
    (EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), StorageError, True, "Transport"),
    (IncompleteReadError(actual_bytes=1, expected_bytes=2), StorageError, True, "Transport"),
    (RetriesExceededError(ValueError("x")), StorageError, True, "Transport"),
    (s3transfer.exceptions.RetriesExceededError(ValueError("x")), StorageError, True, "Transport"),
    (s3transfer.exceptions.S3DownloadFailedError("If-Match"), ObjectChanged, False, "PreconditionFailed"),
    (S3UploadFailedError("Failed to upload: AccessDenied"), StorageError, False, "UploadFailed"),
    (S3UploadFailedError("Failed to upload: InternalError"), StorageError, True, "UploadFailed"),
    (NoCredentialsError(), StorageError, False, "NoCredentialsError"),
])
def test_s3_errors_become_storage_errors(
    error: Exception, kind: type[StorageError], retryable: bool, code: str
) -> None:
    with pytest.raises(StorageError) as info, storage_s3._translated("head s3://b/k"):
        raise error
    assert type(info.value) is kind
    assert (info.value.retryable, info.value.code) == (retryable, code)
    assert str(info.value).startswith("head s3://b/k: ") and info.value.__cause__ is error


def test_sqs_and_dynamodb_errors_become_their_adapters_errors() -> None:
    with pytest.raises(QueueError) as queue_info, fleet_sqs._translated("receive"):
        raise _client_error("ThrottlingException", "slow")
    assert (str(queue_info.value), queue_info.value.retryable) == ("receive: ThrottlingException: slow", True)
    with pytest.raises(QueueError) as timeout_info, fleet_sqs._translated("receive"):
        raise ReadTimeoutError(endpoint_url="http://127.0.0.1:9")
    assert (timeout_info.value.code, timeout_info.value.retryable) == ("Transport", True)
    with pytest.raises(RecordConflict), dynamo._translated("claim"):
        raise _client_error("ConditionalCheckFailedException")
    with pytest.raises(RecordError) as record_info, dynamo._translated("claim"):
        raise _client_error("ValidationException")
    assert (record_info.value.code, record_info.value.retryable) == ("ValidationException", False)
