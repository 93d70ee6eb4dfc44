"""SendCommand of the submit document for one job request, and the SSM client.

botocore's ClientError and BotoCoreError from SendCommand become SendError
here, so the handler never inspects them.

The target is the one instance id in ``InstanceIds`` (the single-instance
flow). A ``Targets`` tag query would run the submit on *every* matching
instance, i.e. the same job once per instance; a fleet is fed through its
SQS work queue instead (sqs.py).

Exceptions::

    SendError       one SendCommand failed (request, AWS error code, instance)
    DeliveryError   the invocation failed: carries every FailedRecord
"""

from __future__ import annotations

import base64
import re
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

#: SendCommand rejects a Comment longer than this (API reference); moto does not.
COMMENT_MAX_CHARS = 100

#: The submit document's ``Key`` pattern (deploy/cloudformation/processor.yaml)
#: in Python: 1..1024 characters, none a control character. A key it refuses
#: (a tab, a newline, DEL...) travels as ``KeyBase64`` instead, which takes any
#: key (tests/unit/local/test_ssm_keys.py holds the two to the document).
_PLAIN_KEY = re.compile(r"[^\x00-\x1f\x7f]{1,1024}\Z")

#: botocore "standard" mode retries ThrottlingException (and the other
#: throttling codes, 5xx and connection errors) with exponential backoff and
#: jitter; its tries and timeouts: aws_edge.SEND_CLIENT.
CLIENT_CONFIG = Config(**SEND_CLIENT.config())

#: Not in botocore's standard-mode retryable codes (checked against botocore
#: 1.44 retries/standard.py and the SSM model, which marks nothing retryable),
#: so it gets the explicit loop in send_submit.
TOO_MANY_UPDATES = "TooManyUpdates"
#: Attempts, first backoff and backoff cap of that loop. Short on purpose:
#: botocore has already spent its own retries inside each attempt.
UPDATE_ATTEMPTS = 4
UPDATE_BACKOFF_BASE_S = 0.25
UPDATE_BACKOFF_CAP_S = 2.0

class SsmClient(Protocol):
    """The one call we make; a boto3 SSM client satisfies it, as do test fakes."""

    def send_command(self, **kwargs: Any) -> Mapping[str, Any]: ...


class SendError(Exception):
    """SendCommand failed for ``request``; ``code`` is the AWS error code or botocore error name.

    ``instance_id`` is the instance of the failed call.
    """

    def __init__(
        self,
        request: JobRequest,
        code: str,
        message: str,
        *,
        instance_id: str | None = None,
    ) -> None:
        super().__init__(f"s3://{request.bucket}/{request.key}: {code}: {message}")
        self.request = request
        self.code = code
        self.message = message
        self.instance_id = instance_id


@dataclass(frozen=True)
class FailedRecord:
    """A record that was not delivered: the object if known, an error code, the detail."""

    bucket: str | None
    key: str | None
    error: str
    detail: str

    def describe(self) -> str:
        # Escaped: the message reaches consoles and CloudWatch, and a key may hold
        # control characters (a carriage return, an escape sequence).
        where = f"s3://{self.bucket}/{_escaped(self.key)}" if self.key is not None else "record"
        return f"{where} ({self.error}: {_escaped(self.detail)})"


def _escaped(text: str) -> str:
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


class DeliveryError(Exception):
    """Some records were not delivered; raised so Lambda retries the invocation."""

    def __init__(self, failures: Sequence[FailedRecord]) -> None:
        self.failures = list(failures)
        listed = "; ".join(failure.describe() for failure in self.failures)
        super().__init__(f"{len(self.failures)} record(s) not delivered: {listed}")


def make_client() -> SsmClient:
    """A boto3 SSM client with retrying, time-bounded calls.

    Endpoint, region and credentials come from the standard AWS environment
    (AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_SSM is how the local stack points it
    at the emulator). A fresh Session: boto3's default one is shared module
    state that is not thread-safe to build clients from.
    """
    client: SsmClient = boto3.session.Session().client("ssm", config=CLIENT_CONFIG)
    return client


def submit_parameters(request: JobRequest) -> dict[str, list[str]]:
    """The submit document's parameters; unset ones are left to the document's defaults.

    The key goes as ``Key`` (readable in the console) when that parameter's
    pattern takes it, else as ``KeyBase64`` (base64url of its UTF-8 bytes, no
    padding): every legal S3 key is carried, byte for byte.
    """
    if _PLAIN_KEY.match(request.key):
        parameters = {"Bucket": [request.bucket], "Key": [request.key]}
    else:
        parameters = {"Bucket": [request.bucket], "KeyBase64": [encode_key_base64(request.key)]}
    if request.version_id:
        parameters["VersionId"] = [request.version_id]
    if request.etag:
        parameters["ETag"] = [request.etag]
    return parameters


def encode_key_base64(key: str) -> str:
    """base64url of the key's UTF-8 bytes without ``=`` padding (the document's ``KeyBase64``)."""
    return base64.urlsafe_b64encode(key.encode("utf-8")).decode("ascii").rstrip("=")


def submit_comment(request: JobRequest) -> str:
    """A console-friendly Comment, cut to SSM's limit (the key is in the parameters)."""
    comment = f"processor submit s3://{request.bucket}/{_escaped(request.key)}"
    if len(comment) <= COMMENT_MAX_CHARS:
        return comment
    return comment[: COMMENT_MAX_CHARS - 1] + "\N{HORIZONTAL ELLIPSIS}"


def send_submit(
    client: SsmClient,
    *,
    document_name: str,
    instance_id: str,
    request: JobRequest,
    document_version: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Send the submit document for ``request`` to ``instance_id``; return the CommandId.

    Raises SendError. ``sleep`` is injectable so tests do not wait.
    """
    kwargs: dict[str, Any] = {
        "DocumentName": document_name,
        "InstanceIds": [instance_id],
        "Parameters": submit_parameters(request),
        "Comment": submit_comment(request),
    }
    if document_version:
        kwargs["DocumentVersion"] = document_version

    attempt = 1
    while True:
        try:
            response = client.send_command(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            # A BotoCoreError (connection, timeout) is left over after botocore's own
            # retries; its code is its class name, never TOO_MANY_UPDATES.
            code, message = error_reply(exc)
            if code != TOO_MANY_UPDATES or attempt >= UPDATE_ATTEMPTS:
                raise SendError(request, code, message, instance_id=instance_id) from exc
        else:
            return _command_id(response, request, instance_id)
        sleep(backoff_delay(attempt, UPDATE_BACKOFF_BASE_S, UPDATE_BACKOFF_CAP_S))
        attempt += 1


def _command_id(response: Mapping[str, Any], request: JobRequest, instance_id: str) -> str:
    command = response.get("Command")
    command_id = command.get("CommandId") if isinstance(command, Mapping) else None
    if not isinstance(command_id, str) or not command_id:
        raise SendError(request, "InvalidResponse", "SendCommand returned no Command.CommandId",
                        instance_id=instance_id)
    return command_id
