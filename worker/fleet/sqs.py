"""The work queue on SQS: the only module in worker/ that imports boto3 for SQS.

Every botocore error is translated here, once, into QueueError with
``retryable`` set; the consumer logs it and carries on (a failing receive is
retried with backoff by the consumer, single HTTP requests by botocore's
standard retry mode), so throttling or the endpoint being down never crashes
the daemon.
"""

from __future__ import annotations

import json
import time
from contextlib import AbstractContextManager
from typing import Any

import boto3
import botocore.exceptions
from botocore.config import Config

from worker.aws.errors import failure, translated
from worker.aws.retry import sqs_client
from worker.config.settings import Settings, queue_region
from worker.fleet.workqueue import MAX_BATCH, MAX_DELAY_S, QueueError, Received

#: Error codes worth another try (throttling, SQS-side faults).
_RETRYABLE_CODES = frozenset(
    {
        "ThrottlingException", "Throttling", "RequestThrottled", "ServiceUnavailable",
        "InternalError", "InternalFailure", "KmsThrottled", "500", "502", "503", "504",
    }
)


def _queue_error(what: str, exc: Exception) -> QueueError:
    found = failure(exc)
    return QueueError(f"{what}: {found.text}", retryable=found.retryable(_RETRYABLE_CODES),
                      code=found.code)


def _translated(what: str) -> AbstractContextManager[None]:
    """botocore's errors in the block leave it as QueueError."""
    return translated(what, _queue_error)


class SQSQueue:
    """``WorkQueue`` on one SQS queue."""

    def __init__(self, client: Any, url: str, dead_letter_url: str = "", *, local: bool = False) -> None:
        self._client = client
        self.url = url
        self._dlq_url: str | None = dead_letter_url or None
        #: An explicit endpoint (the local emulator): CloudWatch is read there too.
        self._local = local

    @classmethod
    def from_settings(cls, settings: Settings) -> SQSQueue:
        q = settings.queue
        # Retries and timeouts (a long poll's read waits past wait_s): worker.aws.retry.
        config = Config(region_name=queue_region(settings), **sqs_client(q.wait_s).config())
        client = boto3.session.Session().client(
            "sqs", endpoint_url=q.endpoint_url or None, config=config
        )
        return cls(client, q.url, q.dead_letter_url, local=bool(q.endpoint_url))

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

    def send(self, body: str, delay_s: int = 0) -> str:
        with _translated(f"send to {self.url}"):
            reply = self._client.send_message(
                QueueUrl=self.url, MessageBody=body, DelaySeconds=max(0, min(MAX_DELAY_S, delay_s)))
        return str(reply["MessageId"])

    def dead_letter(self, body: str, reason: str, job_id: str | None = None) -> bool:
        url = self.dead_letter_url()
        if not url:
            return False
        attributes = {"reason": {"DataType": "String", "StringValue": reason[:1000] or "-"}}
        if job_id:
            attributes["job_id"] = {"DataType": "String", "StringValue": job_id}
        with _translated(f"send to the dead-letter queue {url}"):
            self._client.send_message(QueueUrl=url, MessageBody=body, MessageAttributes=attributes)
        return True

    def dead_letter_url(self) -> str:
        """The configured DLQ, else the one the queue's redrive policy names ("" if none)."""
        if self._dlq_url is None:
            with _translated(f"read the redrive policy of {self.url}"):
                attributes = self._client.get_queue_attributes(
                    QueueUrl=self.url, AttributeNames=["RedrivePolicy"]).get("Attributes", {})
                policy = json.loads(attributes.get("RedrivePolicy") or "{}")
                arn = str(policy.get("deadLetterTargetArn") or "")
                url = ""
                if arn.count(":") >= 5:
                    _, _, _, _, account, name = arn.split(":", 5)
                    url = self._client.get_queue_url(
                        QueueName=name, QueueOwnerAWSAccountId=account)["QueueUrl"]
            self._dlq_url = str(url)
        return self._dlq_url

    def depths(self) -> dict[str, int | None]:
        """Visible, in flight and delayed messages of the queue, and the DLQ's visible ones."""
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                 "ApproximateNumberOfMessagesDelayed"]
        with _translated(f"read the depth of {self.url}"):
            got = self._client.get_queue_attributes(QueueUrl=self.url, AttributeNames=names)["Attributes"]
        result: dict[str, int | None] = {
            "visible": int(got.get(names[0], 0)), "in_flight": int(got.get(names[1], 0)),
            "delayed": int(got.get(names[2], 0)), "dead_letters": None}
        if url := self.dead_letter_url():
            with _translated(f"read the depth of {url}"):
                dlq = self._client.get_queue_attributes(QueueUrl=url, AttributeNames=names[:1])
            result["dead_letters"] = int(dlq["Attributes"].get(names[0], 0))
        return result

    def oldest_age(self, window_s: int = 600) -> float | None:
        """The queue's ``ApproximateAgeOfOldestMessage`` (seconds): CloudWatch's newest
        one-minute datapoint of the last ``window_s``; None without one (SQS publishes it
        for active queues only; GetQueueAttributes does not have it) or without the right."""
        name = self.url.rstrip("/").rsplit("/", 1)[-1]
        client = boto3.session.Session().client(
            "cloudwatch", endpoint_url=self._client.meta.endpoint_url if self._local else None,
            config=Config(region_name=self._client.meta.region_name, **sqs_client(0).config()))
        now = time.time()
        try:
            reply = client.get_metric_data(
                MetricDataQueries=[{"Id": "age", "ReturnData": True, "MetricStat": {
                    "Metric": {"Namespace": "AWS/SQS", "MetricName": "ApproximateAgeOfOldestMessage",
                               "Dimensions": [{"Name": "QueueName", "Value": name}]},
                    "Period": 60, "Stat": "Maximum"}}],
                StartTime=now - window_s, EndTime=now + 60, ScanBy="TimestampDescending")
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            return None  # a hint only: no answer or no right is "unknown"
        finally:
            client.close()
        values = reply.get("MetricDataResults", [{}])[0].get("Values", [])
        return float(values[0]) if values else None

    def dead_letters(self, limit: int = 10) -> list[dict[str, str]]:
        """Up to ``limit`` DLQ messages with their reasons, left in the DLQ (visible again at once)."""
        url = self.dead_letter_url()
        found: dict[str, dict[str, str]] = {}
        receipts: list[str] = []
        if not url:
            return []
        try:
            self._peek(url, limit, found, receipts)
        finally:
            for receipt in receipts:  # seen, not taken: back to visible
                with _translated(f"change visibility on {url}"):
                    self._client.change_message_visibility(
                        QueueUrl=url, ReceiptHandle=receipt, VisibilityTimeout=0)
        return list(found.values())

    def _peek(self, url: str, limit: int, found: dict[str, dict[str, str]], receipts: list[str]) -> None:
        while len(found) < limit:
            with _translated(f"receive from {url}"):
                reply = self._client.receive_message(
                    QueueUrl=url, MaxNumberOfMessages=min(MAX_BATCH, limit - len(found)),
                    VisibilityTimeout=30, WaitTimeSeconds=0, MessageAttributeNames=["All"],
                    AttributeNames=["SentTimestamp"])
            messages = reply.get("Messages", [])
            receipts += [m["ReceiptHandle"] for m in messages]
            fresh = [m for m in messages if m["MessageId"] not in found]
            if not fresh:
                break
            for m in fresh:
                attrs = m.get("MessageAttributes", {})
                found[m["MessageId"]] = {
                    "message_id": m["MessageId"], "body": m.get("Body", ""),
                    "reason": attrs.get("reason", {}).get("StringValue", "(moved by the redrive policy)"),
                    "job_id": attrs.get("job_id", {}).get("StringValue", ""),
                    "sent_at": m.get("Attributes", {}).get("SentTimestamp", ""),
                }

    def redrive(self, limit: int | None = None) -> int:
        """Move DLQ messages back to the work queue (bodies unchanged); how many moved."""
        url = self.dead_letter_url()
        moved = 0
        while url and (limit is None or moved < limit):
            with _translated(f"receive from {url}"):
                messages = self._client.receive_message(
                    QueueUrl=url, MaxNumberOfMessages=MAX_BATCH, VisibilityTimeout=30,
                    WaitTimeSeconds=0).get("Messages", [])
            if not messages:
                break
            for m in messages:
                self.send(m.get("Body", ""))
                with _translated(f"delete a message of {url}"):
                    self._client.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
                moved += 1
        return moved

    def close(self) -> None:
        self._client.close()
