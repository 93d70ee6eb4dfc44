"""The retry budget: every layer that retries an AWS call, written down once, and its total.

An S3 call is retried at three nested levels, each multiplying the one inside:

1. **botocore** (standard retry mode) retries one HTTP request on throttling,
   5xx and transport errors: ``S3_CLIENT.attempts`` tries in all, with
   jittered exponential backoff (at most 20 s each).
2. **tenacity** retries one whole ``S3Store`` call (head, download, upload,
   put/read JSON, delete) when it still failed retryably: ``S3_CALL.attempts``
   tries, a random wait of up to 0.5 s, 1 s, ... (at most 8 s) between them.
   A managed (multipart) download has a level in between: s3transfer tries
   each ranged GET ``S3_DOWNLOAD_GET_ATTEMPTS`` times when its body breaks off.
3. **the job**: an attempt whose S3 call still failed goes back to the queue.
   A storage outage spends no attempt (the job waits, retried every
   ``processing.retry_max_s`` at most, until S3 answers: unbounded by design);
   any other retryable failure spends one of ``processing.max_attempts``.

SQS, Auto Scaling and CloudWatch Logs clients have level 1 only; their callers
(the queue consumer, the instance guard, watchtower's sender thread) retry on
their own schedule. ``s3_operation()``, ``job()`` and ``ClientRetries.worst()``
compute the worst cases the README's table shows; every adapter builds its
botocore ``Config`` from ``ClientRetries.config()`` and S3's tenacity policy
from ``S3_CALL``, so this module is the one place to change a daemon's number.
The Lambda's two clients are written in the same terms in
processor_shared/aws_edge.py (the Lambda ships without worker/) and listed here
as ``LAMBDA_SEND_CLIENT`` and ``LAMBDA_LIST_CLIENT``; that stdlib-only module
also holds what this budget is built on: ``ClientRetries``, ``Cost`` and the
one backoff (``backoff_ceiling``; ``backoff_delay`` draws below it).

No botocore here (only adapters import it): ``config()`` returns the keyword
arguments of ``botocore.config.Config``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from tenacity import RetryCallState, retry, retry_if_exception, stop_after_attempt, wait_random_exponential

from processor_shared.aws_edge import LIST_CLIENT, SEND_CLIENT, ClientRetries, Cost, backoff_ceiling
from worker.config.settings import ProcessingSettings

_P = ParamSpec("_P")
_R = TypeVar("_R")


@dataclass(frozen=True)
class CallRetries:
    """tenacity's retries of one whole call (level 2): full jitter, exponential window."""

    attempts: int
    #: The window of the first wait; it doubles per failure up to ``max_wait_s``.
    first_wait_s: float
    max_wait_s: float

    def wait_ceiling(self, failures: int) -> float:
        """The longest wait after ``failures`` failed tries (tenacity's wait_random_exponential)."""
        return backoff_ceiling(failures, self.first_wait_s, self.max_wait_s)

    def worst_waits_s(self) -> float:
        return sum(self.wait_ceiling(n) for n in range(1, self.attempts))

    def decorator(
        self, retryable: Callable[[BaseException], bool],
        before_sleep: Callable[[RetryCallState], None] | None = None,
    ) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
        """The tenacity decorator of this policy: retries exceptions ``retryable`` accepts,
        then re-raises the last one."""
        return retry(
            retry=retry_if_exception(retryable),
            stop=stop_after_attempt(self.attempts),
            wait=wait_random_exponential(multiplier=self.first_wait_s, max=self.max_wait_s),
            before_sleep=before_sleep,
            reraise=True,
        )


# -- the policies (change a number here and the README's table with it) -----------------

#: S3 requests: up to 10 s to connect, 60 s per read (a part of 8 MiB, a slow store).
S3_CLIENT = ClientRetries(attempts=6, connect_timeout_s=10, read_timeout_s=60)
#: S3Store calls, around botocore's retries: a few more tries before the job is requeued.
S3_CALL = CallRetries(attempts=3, first_wait_s=0.5, max_wait_s=8.0)
#: s3transfer's tries of each ranged GET of a managed download whose body breaks
#: off mid-stream (its ``num_download_attempts``; each GET has S3_CLIENT's tries).
S3_DOWNLOAD_GET_ATTEMPTS = 5

#: SQS: a long poll holds the request open for ``queue.wait_s``: reads wait past it.
SQS_ATTEMPTS = 5
SQS_CONNECT_TIMEOUT_S = 5
SQS_READ_MARGIN_S = 15

#: DynamoDB (the fleet's job record): small items, short reads; a claim that
#: cannot be written hands its message back and the consumer pauses receiving.
DYNAMODB_CLIENT = ClientRetries(attempts=4, connect_timeout_s=5, read_timeout_s=10)

#: Auto Scaling: short, so one call ends within the instance guard's bounded close;
#: the guard retries failures with its own backoff.
AUTOSCALING_CLIENT = ClientRetries(attempts=2, connect_timeout_s=2, read_timeout_s=5)
#: The Lambda's clients: SendCommand and SendMessageBatch, and the reconcile mode's
#: listings. Defined in processor_shared/aws_edge.py, which the Lambda ships without worker/.
LAMBDA_SEND_CLIENT = SEND_CLIENT
LAMBDA_LIST_CLIENT = LIST_CLIENT

#: CloudWatch Logs: short, so a slow endpoint never holds the shutdown flush.
LOGS_CLIENT = ClientRetries(attempts=2, connect_timeout_s=2, read_timeout_s=5)
#: watchtower's own tries of each PutLogEvents batch (its ``_submit_batch``
#: default, not settable; tests/unit/telemetry/test_watchtower_contract.py pins it).
WATCHTOWER_BATCH_TRIES = 5


def sqs_client(wait_s: int) -> ClientRetries:
    """The SQS client's policy for long polls of ``wait_s`` seconds."""
    return ClientRetries(SQS_ATTEMPTS, SQS_CONNECT_TIMEOUT_S, wait_s + SQS_READ_MARGIN_S)


# -- what they add up to ------------------------------------------------------------------


def s3_operation() -> Cost:
    """One S3Store call of one request (head, a small get or put, put_json, delete):
    every botocore try of every tenacity try."""
    inner = S3_CLIENT.worst()
    return Cost(S3_CALL.attempts * inner.requests,
                S3_CALL.attempts * inner.wall_s + S3_CALL.worst_waits_s())


def s3_download_part() -> Cost:
    """One ranged GET of a managed (multipart) download: s3transfer's tries inside tenacity's."""
    inner = S3_CLIENT.worst()
    tries = S3_CALL.attempts * S3_DOWNLOAD_GET_ATTEMPTS
    return Cost(tries * inner.requests, tries * inner.wall_s + S3_CALL.worst_waits_s())


def logs_batch() -> Cost:
    """One CloudWatch Logs batch: watchtower's tries of PutLogEvents, each with botocore's."""
    inner = LOGS_CLIENT.worst()
    return Cost(WATCHTOWER_BATCH_TRIES * inner.requests, WATCHTOWER_BATCH_TRIES * inner.wall_s)


def s3_calls_per_attempt(outputs: int) -> int:
    """S3Store calls of one job attempt: head, download, one upload per output file,
    removing a stale ``_failed.json``, and the manifest."""
    return outputs + 4


def job_wait_ceiling(attempt: int, processing: ProcessingSettings) -> float:
    """The longest wait before the job's attempt ``attempt + 1`` (the pipeline's backoff:
    ``retry_base_s`` doubling per attempt up to ``retry_max_s``, equal jitter below it)."""
    return float(backoff_ceiling(attempt, processing.retry_base_s, processing.retry_max_s))


@dataclass(frozen=True)
class JobBudget:
    """The worst case of one job outside a storage outage (level 3 over levels 1 and 2)."""

    #: Attempts that may run the command (``processing.max_attempts``).
    attempts: int
    #: S3 requests over all attempts.
    s3_requests: int
    #: Seconds: every attempt's command timing out, every S3 call at its worst, every backoff wait.
    wall_s: float
    #: Seconds between tries while S3 is unavailable, at most; those tries are not counted.
    outage_retry_every_s: float


def job(processing: ProcessingSettings, outputs: int = 1) -> JobBudget:
    """The budget of one job writing ``outputs`` files, under ``processing``'s settings."""
    calls = s3_calls_per_attempt(outputs)
    op = s3_operation()
    attempts = processing.max_attempts
    waits = sum(job_wait_ceiling(n, processing) for n in range(1, attempts))
    return JobBudget(
        attempts=attempts,
        s3_requests=attempts * calls * op.requests,
        wall_s=attempts * (processing.timeout_s + calls * op.wall_s) + waits,
        outage_retry_every_s=float(processing.retry_max_s),
    )
