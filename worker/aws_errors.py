"""botocore's errors, read one way by every worker adapter (S3, SQS, Auto Scaling).

Each adapter still decides what an error means for it (its retryable codes,
``ObjectChanged`` for S3); what they share is how a service's error reply is
read and which failures are the connection's rather than the request's. An
adapter itself: it imports botocore, so tests/unit/test_layering.py lists it.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import botocore.exceptions

__all__ = ["BOTOCORE_ERRORS", "TRANSPORT_ERRORS", "Failure", "client_error", "failure"]

#: The connection failed, not the request: always worth another try.
TRANSPORT_ERRORS: tuple[type[Exception], ...] = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectTimeoutError,
)


def client_error(exc: botocore.exceptions.ClientError) -> tuple[str, str]:
    """(code, message) of a service's error reply; the HTTP status stands in for a missing code."""
    err = exc.response.get("Error", {})
    code = str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return code, str(err.get("Message") or exc)


#: What ``failure`` reads: every error botocore raises.
BOTOCORE_ERRORS: tuple[type[Exception], ...] = (
    botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError)


@dataclass(frozen=True)
class Failure:
    """A botocore error as an adapter reports it: a code, the text, and whether it was the connection."""

    code: str
    text: str
    transport: bool = False

    def retryable(self, codes: Collection[str]) -> bool:
        """The connection failed, or the service answered one of ``codes``."""
        return self.transport or self.code in codes


def failure(exc: Exception) -> Failure:
    """Read any of ``BOTOCORE_ERRORS`` one way (the SQS and DynamoDB adapters raise their own from it)."""
    if isinstance(exc, botocore.exceptions.ClientError):
        code, message = client_error(exc)
        return Failure(code, f"{code}: {message}")
    if isinstance(exc, TRANSPORT_ERRORS):
        return Failure("Transport", f"transport error: {exc}", transport=True)
    return Failure(type(exc).__name__, str(exc))
