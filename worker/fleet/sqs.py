"""The work queue on SQS: the only module in worker/ that imports boto3 for SQS.

Every botocore error is translated here, once, into QueueError with
``retryable`` set; the consumer logs it and carries on (a failing receive is
retried with backoff by the consumer, single HTTP requests by botocore's
standard retry mode), so throttling or the endpoint being down never crashes
the daemon.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import botocore.exceptions
from botocore.config import Config

from worker.aws_errors import TRANSPORT_ERRORS, client_error
from worker.config import Settings, queue_region
from worker.fleet.workqueue import MAX_BATCH, QueueError, Received
from worker.retry import sqs_client

#: Error codes worth another try (throttling, SQS-side faults).
_RETRYABLE_CODES = frozenset(
    {
        "ThrottlingException", "Throttling", "RequestThrottled", "ServiceUnavailable",
        "InternalError", "InternalFailure", "KmsThrottled", "500", "502", "503", "504",
    }
)


@contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except botocore.exceptions.ClientError as exc:
        code, message = client_error(exc)
        raise QueueError(f"{what}: {code}: {message}", retryable=code in _RETRYABLE_CODES,
                         code=code) from exc
    except TRANSPORT_ERRORS as exc:
        raise QueueError(f"{what}: transport error: {exc}", retryable=True, code="Transport") from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise QueueError(f"{what}: {exc}", retryable=False, code=type(exc).__name__) from exc


class SQSQueue:
    """``WorkQueue`` on one SQS queue."""

    def __init__(self, client: Any, url: str) -> None:
        self._client = client
        self.url = url

    @classmethod
    def from_settings(cls, settings: Settings) -> SQSQueue:
        q = settings.queue
        # Retries and timeouts (a long poll's read waits past wait_s): worker.retry.
        config = Config(region_name=queue_region(settings), **sqs_client(q.wait_s).config())
        client = boto3.session.Session().client(
            "sqs", endpoint_url=q.endpoint_url or None, config=config
        )
        return cls(client, q.url)

    def receive(self, max_messages: int, wait_s: int) -> list[Received]:
        with _translated(f"receive from {self.url}"):
            response = self._client.receive_message(
                QueueUrl=self.url,
                MaxNumberOfMessages=max(1, min(MAX_BATCH, max_messages)),
                WaitTimeSeconds=wait_s,
                # AttributeNames, not its successor MessageSystemAttributeNames:
                # every boto3 setup.cfg allows (>=1.34) knows this one.
                AttributeNames=["ApproximateReceiveCount"],
            )
        received = []
        for message in response.get("Messages", []):
            attributes = message.get("Attributes", {})
            received.append(Received(
                message_id=message["MessageId"],
                receipt=message["ReceiptHandle"],
                body=message.get("Body", ""),
                receive_count=int(attributes.get("ApproximateReceiveCount", "1")),
            ))
        return received

    def set_visibility(self, receipt: str, visibility_s: int) -> None:
        with _translated(f"change visibility on {self.url}"):
            self._client.change_message_visibility(
                QueueUrl=self.url, ReceiptHandle=receipt, VisibilityTimeout=visibility_s
            )

    def delete(self, receipt: str) -> None:
        with _translated(f"delete a message of {self.url}"):
            self._client.delete_message(QueueUrl=self.url, ReceiptHandle=receipt)

    def close(self) -> None:
        self._client.close()
