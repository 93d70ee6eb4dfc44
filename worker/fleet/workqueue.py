"""A fleet's shared work queue, as the daemon sees it: messages, their parsing, the protocol.

``worker.fleet.sqs.SQSQueue`` implements ``WorkQueue`` on boto3; tests use an
in-memory fake. Pure: nothing here imports boto3.

A message body is a JSON object ``{"bucket": str, "key": str, "version_id":
str|null, "etag": str|null}``; the key is raw (not URL-encoded) and unknown
fields are ignored, so anyone (the Lambda, the reconciler, an operator with
``aws sqs send-message``) can send one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from worker.errors import ProcessorError
from worker.jobs.identity import Identity, normalise_etag

#: SQS's cap on MaxNumberOfMessages per receive.
MAX_BATCH = 10

#: SQS's cap on a message's DelaySeconds.
MAX_DELAY_S = 900


class QueueError(ProcessorError):
    """A work-queue call failed; ``retryable`` says whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool, code: str = "") -> None:
        super().__init__(message)
        self.retryable = retryable
        self.code = code


class MalformedMessage(ProcessorError):
    """A message body that is not a job request; ``field`` names what is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class Received:
    """One received message. The receipt handle changes on every receive."""

    message_id: str
    receipt: str
    body: str
    #: SQS's ApproximateReceiveCount, for the logs only: it decides nothing (a
    #: hand-back is a fresh message; attempts live in the fleet record).
    receive_count: int


class WorkQueue(Protocol):
    """The calls the daemon makes; implementations raise QueueError only."""

    def receive(self, max_messages: int, wait_s: int) -> list[Received]:
        """Up to ``max_messages`` (1..10), long-polling at most ``wait_s`` seconds."""

    def set_visibility(self, receipt: str, visibility_s: int) -> None:
        """Keep the message invisible ``visibility_s`` more seconds (0: visible at once)."""

    def delete(self, receipt: str) -> None: ...

    def send(self, body: str, delay_s: int = 0) -> str:
        """A fresh message (visible after ``delay_s``, 0..900): a hand-back that spends no receive."""

    def dead_letter(self, body: str, reason: str, job_id: str | None = None) -> bool:
        """Send ``body`` to the dead-letter queue with ``reason`` as a message attribute;
        False when the queue has none (its redrive policy then moves the message)."""

    def close(self) -> None: ...


def parse_message(body: str, input_bucket: str = "") -> Identity:
    """The job a message asks for; MalformedMessage naming the field at fault otherwise.

    ``input_bucket``: when set, a message for any other bucket is malformed.
    """
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise MalformedMessage("body", f"not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise MalformedMessage("body", f"must be a JSON object, got {type(document).__name__}")
    bucket = _string(document, "bucket")
    key = _string(document, "key")
    if input_bucket and bucket != input_bucket:
        raise MalformedMessage("bucket", f"{bucket!r} is not the input bucket {input_bucket!r}")
    version_id = _optional(document, "version_id")
    etag = normalise_etag(_optional(document, "etag"))
    return Identity(bucket, key, version_id or None, etag)


def _string(document: dict[str, object], name: str) -> str:
    value = document.get(name)
    if not isinstance(value, str):
        problem = "missing" if name not in document else f"must be a string, got {type(value).__name__}"
        raise MalformedMessage(name, problem)
    if not value:
        raise MalformedMessage(name, "must not be empty")
    if "\0" in value:
        raise MalformedMessage(name, "must not contain NUL")
    return value


def _optional(document: dict[str, object], name: str) -> str | None:
    value = document.get(name)
    if value is not None and not isinstance(value, str):
        raise MalformedMessage(name, f"must be a string or null, got {type(value).__name__}")
    return value


def manifest_matches(
    manifest: Mapping[str, Any], identity: Identity, current: tuple[str | None, str | None] | None = None
) -> bool:
    """Whether a ``_manifest.json`` records this very version of the object.

    By version id when the identity has one, else by ETag. An identity with
    neither is compared with ``current`` (the object's (version_id, etag) as a
    HEAD sees it now): the manifest must be of the object as it stands.
    """
    source = manifest.get("source")
    if not isinstance(source, Mapping):
        return False
    if source.get("bucket") != identity.bucket or source.get("key") != identity.key:
        return False
    version_id, etag = identity.version_id, identity.etag
    if not version_id and not etag:
        if current is None:
            return False
        version_id, etag = current
    if version_id:
        return source.get("version_id") == version_id
    recorded = source.get("etag")
    return bool(etag) and isinstance(recorded, str) and normalise_etag(recorded) == etag
