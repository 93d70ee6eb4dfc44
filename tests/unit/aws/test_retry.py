"""The retry budget (worker/aws/retry.py): its figures, the libraries' behaviour they assume,
and that every adapter's client is built from it.

The real count of requests for one failing S3 call, through a fault-injecting
proxy in front of the emulator, is in tests/integration/test_retry_budget.py.
"""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import pytest
from botocore.retries.standard import ExponentialBackoff, RetryContext

from lambda_trigger import s3 as lambda_s3
from lambda_trigger import sqs as lambda_sqs
from lambda_trigger import ssm as lambda_ssm
from processor_shared import aws_edge
from processor_shared.aws_edge import backoff_delay
from tests.support.emulator import CREDENTIALS
from tests.support.servers import dead_endpoint
from worker.aws import retry
from worker.aws.retry import Cost
from worker.config.settings import ProcessingSettings, S3Settings, settings_from_mapping
from worker.fleet.autoscaling import AutoScaling
from worker.fleet.sqs import SQSQueue
from worker.storage.s3 import TRANSFER_CONFIG, S3Store
from worker.telemetry.cloudwatch import logs_client


def test_the_figures_of_each_level() -> None:
    # botocore: 6 tries of 10 s connect + 60 s read, waits of at most 1, 2, 4, 8, 16 s
    # (+ 5 s each for a retry-after header).
    assert retry.S3_CLIENT.worst() == Cost(6, 6 * 70 + (1 + 2 + 4 + 8 + 16) + 5 * 5)
    # tenacity: 3 tries of the above, waits of at most 0.5 and 1 s.
    assert retry.s3_operation() == Cost(18, 3 * 476 + 0.5 + 1.0)
    # a ranged GET of a managed download: s3transfer's 5 tries inside each tenacity try.
    assert retry.s3_download_part() == Cost(90, 15 * 476 + 1.5)
    assert retry.AUTOSCALING_CLIENT.worst() == Cost(2, 2 * 7 + 1 + 5)
    assert retry.logs_batch() == Cost(10, 5 * (2 * 7 + 1 + 5))
    assert retry.sqs_client(20).worst() == Cost(5, 5 * (5 + 35) + (1 + 2 + 4 + 8) + 4 * 5)
    # The Lambda's clients (processor_shared/aws_edge.py): 9 tries, waits of at most 1 ... 16, 20, 20, 20 s.
    assert retry.LAMBDA_SEND_CLIENT.worst() == Cost(9, 9 * (5 + 15) + (1 + 2 + 4 + 8 + 16 + 60) + 8 * 5)
    assert retry.LAMBDA_LIST_CLIENT.worst() == Cost(9, 9 * (5 + 30) + (1 + 2 + 4 + 8 + 16 + 60) + 8 * 5)


def test_the_job_budget_with_the_default_settings() -> None:
    p = ProcessingSettings()
    budget = retry.job(p, outputs=2)
    calls = 2 + 4  # head, download, two uploads, the stale _failed.json, the manifest
    assert budget.attempts == 3
    assert budget.s3_requests == 3 * calls * 18
    # three commands timing out, every S3 call at its worst, and the waits of 30 and 60 s.
    assert budget.wall_s == 3 * (3600 + calls * retry.s3_operation().wall_s) + 30 + 60
    assert budget.outage_retry_every_s == 900


def test_the_job_wait_ceiling_doubles_up_to_retry_max() -> None:
    p = ProcessingSettings(retry_base_s=30, retry_max_s=900)
    assert [retry.job_wait_ceiling(n, p) for n in range(1, 8)] == [30, 60, 120, 240, 480, 900, 900]
    assert retry.job_wait_ceiling(5000, p) == 900  # no overflow on a long outage's count


@pytest.mark.parametrize("attempt", [1, 2, 3, 6, 40])
def test_the_pipeline_backoff_stays_within_the_job_wait_ceiling(attempt: int) -> None:
    # Equal jitter: between half the ceiling and the ceiling, never past it.
    p = ProcessingSettings(retry_base_s=30, retry_max_s=900)
    ceiling = retry.job_wait_ceiling(attempt, p)
    state = random.getstate()
    random.seed(attempt)  # reproducible draws; the module's RNG is put back after
    try:
        drawn = [backoff_delay(attempt, p.retry_base_s, p.retry_max_s) for _ in range(500)]
    finally:
        random.setstate(state)
    assert ceiling / 2 <= min(drawn) and max(drawn) <= ceiling
    assert max(drawn) > ceiling * 0.9  # the ceiling is reached, not a loose bound


class _Throttled:
    def is_throttling_error_from_context(self, _context: Any) -> bool:
        return True


@pytest.mark.parametrize("retry_number", [1, 2, 3, 5, 6, 9])
def test_botocore_never_waits_longer_than_the_ceiling(retry_number: int) -> None:
    # The largest random draw, throttling's 1 s scale, and a huge x-amz-retry-after:
    # botocore's own backoff at its longest equals the budget's ceiling.
    backoff = ExponentialBackoff(random=lambda: 1.0, throttling_detector=_Throttled())
    reply = SimpleNamespace(headers={"x-amz-retry-after": "600000"})
    context = RetryContext(attempt_number=retry_number, http_response=reply)
    assert backoff.delay_amount(context) == aws_edge.botocore_wait_ceiling(retry_number)


class _Flaky(Exception):
    def __init__(self, retryable: bool) -> None:
        super().__init__("flaky")
        self.retryable = retryable


def test_the_call_policy_tries_its_attempts_and_waits_within_its_ceilings() -> None:
    calls: list[int] = []
    waits: list[float] = []

    @retry.S3_CALL.decorator(lambda exc: isinstance(exc, _Flaky) and exc.retryable)
    def always_fails(retryable: bool) -> None:
        calls.append(1)
        raise _Flaky(retryable)

    fast = always_fails.retry_with(sleep=waits.append)  # type: ignore[attr-defined]
    with pytest.raises(_Flaky):
        fast(True)
    assert len(calls) == retry.S3_CALL.attempts == 3
    assert len(waits) == 2
    assert all(0 <= w <= retry.S3_CALL.wait_ceiling(n) for n, w in enumerate(waits, 1))
    calls.clear()
    with pytest.raises(_Flaky):
        fast(False)  # not retryable: one try, re-raised as it is
    assert len(calls) == 1


@pytest.fixture
def no_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    # Building a client sends nothing; should anything be sent, it fails on loopback.
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead_endpoint())


def _client_policy(client: Any) -> retry.ClientRetries:
    config = client.meta.config
    assert config.retries["mode"] == "standard"
    return retry.ClientRetries(config.retries["total_max_attempts"], config.connect_timeout,
                               config.read_timeout)


@pytest.mark.usefixtures("no_aws")
def test_every_adapter_builds_its_client_from_the_budget() -> None:
    store = S3Store.from_settings(S3Settings(output_bucket="o", endpoint_url=dead_endpoint()))
    assert _client_policy(store._client) == retry.S3_CLIENT
    assert TRANSFER_CONFIG.num_download_attempts == retry.S3_DOWNLOAD_GET_ATTEMPTS
    settings = settings_from_mapping(
        {"s3": {"output_bucket": "o"},
         "queue": {"url": "http://127.0.0.1:9/000000000000/q", "wait_s": 7, "table": "t"}}, {})
    sqs = SQSQueue.from_settings(settings)
    assert _client_policy(sqs._client) == retry.sqs_client(7)
    scaling = AutoScaling.connect("eu-west-1")
    assert _client_policy(scaling._client) == retry.AUTOSCALING_CLIENT
    assert _client_policy(logs_client("eu-west-1")) == retry.LOGS_CLIENT
    assert _client_policy(logs_client("eu-west-1", emf=True)) == retry.LOGS_CLIENT
    for adapter in (sqs, scaling):
        adapter.close()
    store.close()
    # The Lambda's, from the same terms (it ships without worker/: processor_shared/aws_edge.py).
    assert _client_policy(lambda_ssm.make_client()) == retry.LAMBDA_SEND_CLIENT
    assert _client_policy(lambda_sqs.make_client()) == retry.LAMBDA_SEND_CLIENT
    assert _client_policy(lambda_s3.make_client()) == retry.LAMBDA_LIST_CLIENT
