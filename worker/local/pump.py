"""Deliver S3 event notifications from SQS to the real Lambda handler.

This plays the Lambda service: it invokes ``lambda_trigger.handler.lambda_handler``
with each event; a raised error leaves the message for a retry (and, after
three receives, the dead-letter queue), as Lambda's async retries would.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lambda_trigger.handler import lambda_handler

log = logging.getLogger("processor.local.pump")


@dataclass(frozen=True)
class _Context:
    """The parts of Lambda's context object a handler may read."""

    aws_request_id: str
    function_name: str = "processor-trigger"
    memory_limit_in_mb: int = 128

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 60_000


@dataclass
class Invocation:
    request_id: str
    ok: bool
    result: Any
    error: str | None


class EventPump:
    def __init__(
        self, sqs: Any, queue_url: str, *,
        on_invocation: Callable[[Invocation], None] | None = None,
    ) -> None:
        self._sqs = sqs
        self._queue_url = queue_url
        self._on_invocation = on_invocation
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="event-pump", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def run_once(self, wait_s: int = 1) -> int:
        """Receive one batch and invoke the handler per message; return messages handled."""
        reply = self._sqs.receive_message(
            QueueUrl=self._queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_s
        )
        messages = reply.get("Messages", [])
        for message in messages:
            self._invoke(message)
        return len(messages)

    def _invoke(self, message: Mapping[str, Any]) -> None:
        context = _Context(aws_request_id=str(uuid.uuid4()))
        try:
            event = json.loads(message["Body"])
            result = lambda_handler(event, context)
        except Exception as exc:  # noqa: BLE001 - Lambda reports, then retries
            invocation = Invocation(context.aws_request_id, False, None, f"{type(exc).__name__}: {exc}")
        else:
            invocation = Invocation(context.aws_request_id, True, result, None)
            self._sqs.delete_message(QueueUrl=self._queue_url, ReceiptHandle=message["ReceiptHandle"])
        if self._on_invocation is not None:
            self._on_invocation(invocation)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("event pump error")
                self._stop.wait(0.5)
