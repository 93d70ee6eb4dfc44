"""The retry budget against the emulator: one S3 call sends exactly the requests
worker.aws.retry says, through a fault-injecting proxy on loopback.

The proxy answers 500 InternalError (retryable at every level, and botocore's
short non-throttling backoff keeps each case to a few seconds) to the first N
requests and forwards the rest to the moto server.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.support.faultproxy import FaultProxy
from worker.aws import retry
from worker.config.settings import S3Settings
from worker.errors import StorageError
from worker.storage.s3 import S3Store

BUCKET = "budget-bucket"


class FailFirst(FaultProxy):
    """Fails the first ``failures`` requests with 500 InternalError, then forwards all."""

    def __init__(self, upstream: str, failures: int) -> None:
        super().__init__(upstream, rate=0.0)
        self.failures = failures

    def _choose(self) -> str:
        with self._lock:
            fault = "internal" if self.counts["internal"] < self.failures else "forward"
            self.counts[fault] += 1
            return fault

    @property
    def requests(self) -> int:
        return sum(self.counts.values())


@pytest.fixture
def s3(aws: Callable[[str], Any]) -> Any:
    client = aws("s3")
    client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key="in.txt", Body=b"budget")
    return client


def _store(endpoint: str) -> S3Store:
    # A new client per case: botocore's retry quota is per client and must start full.
    return S3Store.from_settings(S3Settings(output_bucket=BUCKET, endpoint_url=endpoint))


def test_a_failing_s3_call_sends_exactly_the_budgeted_requests(s3: Any, moto_endpoint: str) -> None:
    budget = retry.s3_operation().requests
    assert budget == retry.S3_CALL.attempts * retry.S3_CLIENT.attempts == 18
    with FailFirst(moto_endpoint, failures=10 * budget) as proxy:
        store = _store(proxy.endpoint)
        with pytest.raises(StorageError) as failed:
            store.head(BUCKET, "in.txt")
        store.close()
    assert failed.value.retryable  # level 3 takes over: the job goes back to the queue
    assert proxy.requests == budget, proxy.counts


def test_the_last_budgeted_request_still_succeeds(s3: Any, moto_endpoint: str) -> None:
    # One request fewer than the budget fails: the call succeeds on its very last try,
    # and a write goes through to the emulator (a rewound body on every retry).
    budget = retry.s3_operation().requests
    with FailFirst(moto_endpoint, failures=budget - 1) as proxy:
        store = _store(proxy.endpoint)
        store.put_json(BUCKET, "out/_manifest.json", {"job_id": "j-1"})
        store.close()
    assert proxy.counts == {"internal": budget - 1, "forward": 1}
    body = s3.get_object(Bucket=BUCKET, Key="out/_manifest.json")["Body"].read()
    assert b'"job_id": "j-1"' in body
