"""processor_shared/aws_edge.py: the one backoff, the one reading of an AWS error, the Lambda's clients.

The backoff replaced five copies of its formula; the first tests hold it to
those copies' results draw for draw, so the change moved code and nothing else.
"""

from __future__ import annotations

import ast
import random
import sys
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, HTTPClientError, NoCredentialsError

from lambda_trigger import s3, sqs, ssm
from processor_shared import aws_edge
from processor_shared.aws_edge import LIST_CLIENT, SEND_CLIENT, backoff_ceiling, backoff_delay, error_reply
from worker.fleet.breaker import Breaker

REPO = Path(__file__).resolve().parents[3]


def _old_equal_jitter(attempt: int, base_s: float, max_s: float, doublings: int, rng: random.Random) -> float:
    """The copies in fleet/instance.py (doublings 30) and the Lambda's ssm.py and sqs.py (no clamp)."""
    ceiling = min(max_s, base_s * 2.0 ** min(attempt - 1, doublings))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


@pytest.mark.parametrize(("base_s", "max_s", "doublings"), [
    (1.0, 60.0, 30),     # the instance guard's Backoff()
    (0.25, 2.0, 1000),   # ssm.py's TooManyUpdates loop, sqs.py's failed entries
    (0.02, 0.1, 30),     # the guard in tests
])
def test_backoff_delay_draws_what_the_copies_drew(base_s: float, max_s: float, doublings: int) -> None:
    old, new = random.Random(11), random.Random(11)
    for attempt in range(1, 41):
        assert backoff_delay(attempt, base_s, max_s, new.random) == _old_equal_jitter(
            attempt, base_s, max_s, doublings, old)


def test_the_ceiling_is_the_no_jitter_loops_schedule() -> None:
    # The consumer's receive loop and the breaker's probes: first, doubled after each failure, capped.
    delay, old = 1.0, []
    for _ in range(12):
        old.append(delay)
        delay = min(delay * 2, 30.0)
    assert [backoff_ceiling(n, 1.0, 30.0) for n in range(1, 13)] == old
    assert backoff_ceiling(10_000, 0.5, 900.0) == 900.0  # no overflow on a long outage's count
    assert backoff_delay(1, 4.0, 60.0, lambda: 0.0) == 2.0  # equal jitter: never below half


def test_the_breaker_probes_on_the_ceiling_schedule() -> None:
    waits: list[float] = []

    class _Stop:
        def wait(self, timeout: float) -> bool:
            waits.append(timeout)
            return False

    def probe() -> None:
        raise OSError("still down")

    breaker = Breaker(probe, 1.0, 5.0, clock=lambda: 0.0)
    breaker.open("storage", "down")
    for _ in range(5):
        assert not breaker.wait_and_probe(_Stop())  # type: ignore[arg-type]
    assert waits == [1.0, 2.0, 4.0, 5.0, 5.0]
    breaker.open("storage", "down")  # already open: the schedule goes on
    breaker.wait_and_probe(_Stop())  # type: ignore[arg-type]
    assert waits[-1] == 5.0


def test_error_reply_reads_every_kind_of_botocore_error() -> None:
    reply = {"Error": {"Code": "ThrottlingException", "Message": "slow down"},
             "ResponseMetadata": {"HTTPStatusCode": 400}}
    assert error_reply(ClientError(reply, "SendCommand")) == ("ThrottlingException", "slow down")
    # No code: the HTTP status stands in (as botocore's parsers do); no message: the error's text.
    no_code = ClientError({"Error": {}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "ListObjectsV2")
    assert error_reply(no_code) == ("503", str(no_code))
    assert error_reply(ClientError({}, "X"))[0] == "ClientError"
    unreachable = EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
    assert error_reply(unreachable) == ("EndpointConnectionError", str(unreachable))
    # An HTTPClientError carries a ``response`` that is no service reply.
    assert error_reply(HTTPClientError(error="reset"))[0] == "HTTPClientError"
    assert error_reply(NoCredentialsError())[0] == "NoCredentialsError"


def test_the_lambdas_clients_are_built_from_one_place() -> None:
    for config, policy in ((ssm.CLIENT_CONFIG, SEND_CLIENT), (sqs.CLIENT_CONFIG, SEND_CLIENT),
                           (s3.CLIENT_CONFIG, LIST_CLIENT)):
        assert config.retries == {"mode": "standard", "total_max_attempts": policy.attempts}
        assert (config.connect_timeout, config.read_timeout) == (
            policy.connect_timeout_s, policy.read_timeout_s)
    # The figures as they were (botocore's legacy max_attempts 8 = 9 tries), and in the README.
    assert (SEND_CLIENT.attempts, SEND_CLIENT.connect_timeout_s, SEND_CLIENT.read_timeout_s) == (9, 5, 15)
    assert (LIST_CLIENT.attempts, LIST_CLIENT.connect_timeout_s, LIST_CLIENT.read_timeout_s) == (9, 5, 30)


def test_the_module_is_stdlib_only() -> None:
    """It ships in the Lambda package (lambda_trigger/ alone) and the outcome policy imports it."""
    tree = ast.parse(Path(aws_edge.__file__).read_text(encoding="utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported - {"__future__"} <= sys.stdlib_module_names, imported
