"""What every AWS edge shares, stdlib only: the backoff, the reading of an AWS error, client retries.

One definition each, for the Lambda and the daemon alike:

- ``backoff_delay``: exponential backoff with equal jitter (half fixed, half
  random: never zero, never in step across a fleet), below ``backoff_ceiling``,
  the doubling-and-capped window that every retry loop here, and the budget's
  worst cases, are written with;
- ``error_reply``: the (code, message) of any error botocore raises;
- ``ClientRetries``: a boto3 client's retries and timeouts in botocore's
  ``total_max_attempts`` convention, and its worst case (``Cost``). The
  Lambda's own clients are ``SEND_CLIENT`` and ``LIST_CLIENT``; the daemon's
  are in ``worker/aws/retry.py``, the retry budget, which builds on this module
  and lists the Lambda's beside its own (the README's retry table).

Stdlib only, on purpose: the Lambda package holds ``lambda_trigger/`` alone
(boto3 comes with the runtime) and the worker's pure modules (the outcome
policy) import it too, so nothing here may pull in botocore or ``worker``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["BOTOCORE_MAX_BACKOFF_S", "BOTOCORE_RETRY_AFTER_EXTRA_S", "LIST_CLIENT", "SEND_CLIENT",
           "ClientRetries", "Cost", "backoff_ceiling", "backoff_delay", "botocore_wait_ceiling",
           "error_reply"]

#: botocore standard mode: retry n waits rand(0, 1) x min(2 ** (n - 1), 20) s (recent
#: botocore scales the window by 0.05 for errors other than throttling: the ceiling holds).
BOTOCORE_MAX_BACKOFF_S = 20.0
#: Recent botocore stretches a wait to an ``x-amz-retry-after`` header, by at most this much.
BOTOCORE_RETRY_AFTER_EXTRA_S = 5.0

#: 2.0 ** n overflows past n = 1,023, and a long wait for S3 or disk space counts
#: that far; 2 ** 62 is past any sane cap anyway.
_MAX_DOUBLINGS = 62


def backoff_ceiling(attempt: int, base_s: float, max_s: float) -> float:
    """The window before try ``attempt + 1``: ``base_s`` doubling per attempt (1-based), up to ``max_s``."""
    return min(max_s, base_s * 2.0 ** min(max(attempt - 1, 0), _MAX_DOUBLINGS))


def backoff_delay(
    attempt: int, base_s: float, max_s: float, jitter: Callable[[], float] = random.random
) -> float:
    """Exponential backoff with equal jitter: half of ``backoff_ceiling`` fixed, half random.

    ``jitter`` returns a number in [0, 1) (``random.random``, or a seeded
    ``Random``'s); tests pass a constant.
    """
    ceiling = backoff_ceiling(attempt, base_s, max_s)
    return ceiling / 2 + jitter() * ceiling / 2


def error_reply(exc: BaseException) -> tuple[str, str]:
    """(code, message) of any error botocore raises, read without importing botocore.

    A service's reply (a ``ClientError``'s ``response``) gives its error code --
    the HTTP status standing in for a missing one, as botocore's parsers do --
    and message; any other error (connection, timeout, credentials) its class
    name and text.
    """
    response = getattr(exc, "response", None)
    if not isinstance(response, Mapping):  # BotoCoreError (an HTTPClientError's is no reply)
        return type(exc).__name__, str(exc)
    error = response.get("Error") or {}
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    code = str(error.get("Code") or status or "ClientError")
    return code, str(error.get("Message") or exc)


@dataclass(frozen=True)
class Cost:
    """The worst case of one retried operation: HTTP requests sent, and seconds spent
    in timeouts and backoff waits (time moving data is on top)."""

    requests: int
    wall_s: float


@dataclass(frozen=True)
class ClientRetries:
    """Retries and timeouts of one boto3 client (botocore's standard retry mode)."""

    #: Tries of one HTTP request, the first included (botocore's ``total_max_attempts``;
    #: its ``max_attempts`` key would count retries only).
    attempts: int
    connect_timeout_s: float
    #: Per socket read: a server that stops answering costs this much per try.
    read_timeout_s: float

    def config(self) -> dict[str, Any]:
        """Keyword arguments for ``botocore.config.Config``."""
        return {
            "retries": {"mode": "standard", "total_max_attempts": self.attempts},
            "connect_timeout": self.connect_timeout_s,
            "read_timeout": self.read_timeout_s,
        }

    def worst(self) -> Cost:
        """Every try timing out (connect, then read), with the longest backoff between tries."""
        waits = sum(botocore_wait_ceiling(n) for n in range(1, self.attempts))
        return Cost(self.attempts, self.attempts * (self.connect_timeout_s + self.read_timeout_s) + waits)


def botocore_wait_ceiling(retry_number: int) -> float:
    """The longest wait botocore's standard mode makes before retry ``retry_number`` (1-based)."""
    return backoff_ceiling(retry_number, 1.0, BOTOCORE_MAX_BACKOFF_S) + BOTOCORE_RETRY_AFTER_EXTRA_S


# -- the Lambda's clients (the README's retry table shows them; change both) -------------

#: SendCommand and SendMessageBatch: 9 tries ride out a burst of S3 events' throttling;
#: the timeouts bound a hung connection. Lambda's own retries of the invocation are on top.
SEND_CLIENT = ClientRetries(attempts=9, connect_timeout_s=5, read_timeout_s=15)
#: The reconcile mode's bucket listings (idempotent; a page of versions may be slow).
LIST_CLIENT = ClientRetries(attempts=9, connect_timeout_s=5, read_timeout_s=30)
