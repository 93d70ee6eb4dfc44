"""botocore's errors, read one way by every worker adapter (S3, SQS, DynamoDB, Auto Scaling).

Each adapter still decides what an error means for it (its retryable codes,
``ObjectChanged`` for S3) in a translation of its own; what they share is how
a service's error reply is read (``error_reply``, the Lambda's reader too:
processor_shared/aws_edge.py), which failures are the connection's rather than
the request's, and ``translated``, the one block that turns an SDK error into
the adapter's error, chained. An adapter itself: it imports botocore, so
tests/unit/test_layering.py lists it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import botocore.exceptions

from processor_shared.aws_edge import error_reply

__all__ = ["BOTOCORE_ERRORS", "TRANSPORT_ERRORS", "Failure", "Translation", "error_reply", "failure",
           "translated"]

#: The connection failed, not the request: always worth another try.
TRANSPORT_ERRORS: tuple[type[Exception], ...] = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectTimeoutError,
)


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
        code, message = error_reply(exc)
        return Failure(code, f"{code}: {message}")
    if isinstance(exc, TRANSPORT_ERRORS):
        return Failure("Transport", f"transport error: {exc}", transport=True)
    return Failure(type(exc).__name__, str(exc))


#: An adapter's translation: (what was being done, the SDK error) -> its own error.
Translation = Callable[[str, Exception], Exception]


@contextmanager
def translated(
    what: str, translation: Translation, catch: tuple[type[Exception], ...] = BOTOCORE_ERRORS
) -> Iterator[None]:
    """Run the block; an error of ``catch`` leaves it as ``translation(what, exc)``, chained from it."""
    try:
        yield
    except catch as exc:
        raise translation(what, exc) from exc
