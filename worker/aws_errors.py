"""botocore's errors, read one way by every worker adapter (S3, SQS, Auto Scaling).

Each adapter still decides what an error means for it (its retryable codes,
``ObjectChanged`` for S3); what they share is how a service's error reply is
read and which failures are the connection's rather than the request's. An
adapter itself: it imports botocore, so tests/unit/test_layering.py lists it.
"""

from __future__ import annotations

import botocore.exceptions

__all__ = ["TRANSPORT_ERRORS", "client_error"]

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
