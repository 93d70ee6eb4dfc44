"""SendMessageBatch of job messages to a fleet's shared work queue, and its client.

The message body is the queue contract (README "Scaling out"): a JSON object
``{"bucket", "key", "version_id", "etag"}`` with the key raw (decoded once,
in events.py), nulls allowed. ``ensure_ascii`` keeps any key sendable: SQS
rejects bodies holding characters such as U+FFFF or most C0 controls, which
S3 keys may contain; as ``\\uXXXX`` escapes they are plain ASCII.

botocore's errors stop here (the handler sees QueueSendFailure only).
botocore's "standard" retry mode already retries a throttled or failed
*call*; what it cannot retry is a batch answered 200 with some entries
``Failed``. Those are re-sent here with backoff, as ssm.py re-sends
TooManyUpdates, unless SQS says the entry itself is at fault (``SenderFault``:
it would fail the same way again).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import boto3  # type: ignore[import-untyped, unused-ignore]
from botocore.config import Config  # type: ignore[import-untyped, unused-ignore]
from botocore.exceptions import (  # type: ignore[import-untyped, unused-ignore]
    BotoCoreError,
    ClientError,
)

from lambda_trigger.events import JobRequest
from processor_shared.aws_edge import SEND_CLIENT, backoff_delay, error_reply

#: SendMessageBatch takes at most 10 entries (API reference).
BATCH_MAX = 10
#: Rounds of re-sending the entries of a batch that failed on the service's side.
ENTRY_ATTEMPTS = 4
ENTRY_BACKOFF_BASE_S = 0.25
ENTRY_BACKOFF_CAP_S = 2.0

#: As ssm.CLIENT_CONFIG: botocore's standard retries and bounded timeouts (aws_edge.SEND_CLIENT).
CLIENT_CONFIG = Config(**SEND_CLIENT.config())


class SqsClient(Protocol):
    """The one call we make; a boto3 SQS client satisfies it, as do test fakes."""

    def send_message_batch(self, **kwargs: Any) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class Queued:
    """A request that is on the queue, with the message id SQS gave it."""

    request: JobRequest
    message_id: str


@dataclass(frozen=True)
class QueueSendFailure:
    """A request that could not be queued: the AWS error code (or botocore error name) and detail."""

    request: JobRequest
    code: str
    message: str


def message_body(request: JobRequest) -> str:
    """The queue message for ``request`` (the fleet's message contract)."""
    return json.dumps({"bucket": request.bucket, "key": request.key,
                       "version_id": request.version_id, "etag": request.etag},
                      ensure_ascii=True, separators=(",", ":"))


def make_client() -> SqsClient:
    """A boto3 SQS client with retrying, time-bounded calls.

    Endpoint, region and credentials come from the standard AWS environment
    (AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_SQS point it at the emulator).
    """
    client: SqsClient = boto3.session.Session().client("sqs", config=CLIENT_CONFIG)
    return client


def send_requests(
    client: SqsClient,
    queue_url: str,
    requests: Sequence[JobRequest],
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[list[Queued], list[QueueSendFailure]]:
    """Queue one message per request, in batches of BATCH_MAX; never raises for AWS errors.

    Returns what was queued and what was not, each in request order.
    ``sleep`` is injectable so tests do not wait.
    """
    queued: dict[int, Queued] = {}
    failed: dict[int, QueueSendFailure] = {}
    for start in range(0, len(requests), BATCH_MAX):
        chunk = {start + n: request for n, request in enumerate(requests[start:start + BATCH_MAX])}
        _send_chunk(client, queue_url, chunk, queued, failed, sleep)
    return ([queued[i] for i in sorted(queued)], [failed[i] for i in sorted(failed)])


def _send_chunk(
    client: SqsClient,
    queue_url: str,
    chunk: Mapping[int, JobRequest],
    queued: dict[int, Queued],
    failed: dict[int, QueueSendFailure],
    sleep: Callable[[float], None],
) -> None:
    pending = dict(chunk)
    attempt = 1
    while pending:
        # Entry ids are the request's position: unique in the batch, and [0-9]
        # is within SQS's allowed id characters.
        entries = [{"Id": str(index), "MessageBody": message_body(request)}
                   for index, request in pending.items()]
        try:
            response = client.send_message_batch(QueueUrl=queue_url, Entries=entries)
        except (ClientError, BotoCoreError) as exc:
            # What is left after botocore's own retries (a BotoCoreError: connection, timeout).
            _fail_all(pending, failed, *error_reply(exc))
            return
        retry: dict[int, QueueSendFailure] = {}
        for entry in response.get("Successful") or []:
            index = _index(entry, pending)
            message_id = entry.get("MessageId")
            if index is not None and isinstance(message_id, str) and message_id:
                queued[index] = Queued(pending.pop(index), message_id)
        for entry in response.get("Failed") or []:
            index = _index(entry, pending)
            if index is None:
                continue
            failure = QueueSendFailure(pending[index], str(entry.get("Code") or "Failed"),
                                       str(entry.get("Message") or "SendMessageBatch entry failed"))
            if entry.get("SenderFault"):
                failed[index] = failure
                del pending[index]
            else:
                retry[index] = failure
        for index, request in pending.items():
            # Neither successful nor failed: an answer we cannot trust; try again.
            retry.setdefault(index, QueueSendFailure(
                request, "InvalidResponse", "SendMessageBatch did not report this entry"))
        if not retry:
            return
        if attempt >= ENTRY_ATTEMPTS:
            failed.update(retry)
            return
        pending = {index: pending[index] for index in retry}
        sleep(backoff_delay(attempt, ENTRY_BACKOFF_BASE_S, ENTRY_BACKOFF_CAP_S))
        attempt += 1


def _index(entry: Mapping[str, Any], pending: Mapping[int, JobRequest]) -> int | None:
    entry_id = entry.get("Id")
    if isinstance(entry_id, str) and entry_id.isdigit() and int(entry_id) in pending:
        return int(entry_id)
    return None


def _fail_all(pending: Mapping[int, JobRequest], failed: dict[int, QueueSendFailure],
              code: str, message: str) -> None:
    for index, request in pending.items():
        failed[index] = QueueSendFailure(request, code, message)
