"""The real daemon's CloudWatch sink: job events and EMF metrics on the emulator, and a dead
CloudWatch that neither slows a job nor holds the stop."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import daemon, log_events, submit, wait_state, write_config
from tests.support.emulator import with_buckets
from tests.support.faultproxy import FaultProxy
from tests.support.servers import black_hole, dead_endpoint

IN, OUT = "cw-in", "cw-out"
GROUP = "/processor/test"
#: botocore's name for the CloudWatch Logs endpoint (from the service id "CloudWatch Logs").
LOGS_ENDPOINT_VAR = "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS"


@pytest.fixture
def buckets(aws: Callable[[str], Any]) -> Any:
    return with_buckets(aws("s3"), IN, OUT)


def cloudwatch_config(directory: Path, endpoint: str, **keys: object) -> Path:
    config = write_config(directory, output_bucket=OUT, endpoint=endpoint)
    settings = {"cloudwatch_log_group": GROUP, "cloudwatch_stream": "i-test",
                "cloudwatch_create_group": True, **keys}
    # [logging] is the last table write_config writes: append to it.
    config.write_text(config.read_text() + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))
    return config


def run_one_job(config: Path, socket: Path, s3: Any, key: str, body: bytes) -> tuple[str, float]:
    """Process one object with the real daemon, stop it with SIGTERM; (job id, seconds to stop)."""
    etag = s3.put_object(Bucket=IN, Key=key, Body=body)["ETag"]
    with daemon(config, socket) as proc:
        job_id = submit(config, IN, key, etag)
        assert wait_state(config, job_id, {"succeeded", "failed"}, stall_s=20)["state"] == "succeeded"
        stopping = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        return job_id, time.monotonic() - stopping


def stream_events(logs: Any, stream: str) -> list[dict[str, Any]]:
    events = logs.get_log_events(logGroupName=GROUP, logStreamName=stream, startFromHead=True)["events"]
    return [json.loads(e["message"]) for e in events]


def test_job_events_and_emf_metrics_reach_cloudwatch(
    buckets: Any, aws: Callable[[str], Any], moto_endpoint: str, short_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    config = cloudwatch_config(short_tmp, moto_endpoint)
    body = b"a,b\n1,2\n3,4\n"
    job_id, _ = run_one_job(config, short_tmp / "p.sock", buckets, "cw/q3.csv", body)

    logs = aws("logs")
    events = stream_events(logs, "i-test")
    (finished,) = [e for e in events if e["event"] == "job_finished"]
    assert finished["job_id"] == job_id and finished["state"] == "succeeded"
    assert finished["bytes_in"] == len(body) and finished["bytes_out"] > 0
    # Sent by the shutdown flush, after the drain: nothing of the stop is lost.
    assert events[-1]["event"] == "daemon_stopped"

    (emf,) = stream_events(logs, "i-test-metrics")
    directive = emf["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "processor" and directive["Dimensions"] == [["Outcome"], []]
    assert emf["job_id"] == job_id and emf["Outcome"] == "succeeded" and emf["key"] == "cw/q3.csv"
    assert (emf["Jobs"], emf["Attempts"], emf["BytesIn"]) == (1, 1, len(body))
    assert emf["BytesOut"] == finished["bytes_out"]
    # EMF documents go to their stream only: not the events stream, not the file.
    assert not any("_aws" in e for e in events)
    assert not any("_aws" in e for e in log_events(config))


def test_put_log_events_of_the_metrics_stream_carry_the_emf_header(
    buckets: Any, aws: Callable[[str], Any], moto_endpoint: str, short_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # moto ignores the header, so a forwarding proxy in front of it records what was sent.
    puts: list[tuple[str, str | None]] = []

    def record(_method: str, headers: dict[str, str], body: bytes) -> None:
        if headers.get("x-amz-target", "").endswith(".PutLogEvents"):
            puts.append((json.loads(body)["logStreamName"], headers.get("x-amzn-logs-format")))

    with FaultProxy(moto_endpoint, rate=0.0, on_request=record) as proxy:
        monkeypatch.setenv(LOGS_ENDPOINT_VAR, proxy.endpoint)
        config = cloudwatch_config(short_tmp, moto_endpoint)
        run_one_job(config, short_tmp / "p.sock", buckets, "cw/header.txt", b"words and words")
    assert ("i-test-metrics", "json/emf") in puts and ("i-test", None) in puts
    assert {header for stream, header in puts if stream == "i-test-metrics"} == {"json/emf"}
    assert {header for stream, header in puts if stream == "i-test"} == {None}
    assert len(stream_events(aws("logs"), "i-test-metrics")) == 1


@pytest.mark.parametrize("endpoint", ["dead", "black hole"])
def test_an_unreachable_cloudwatch_neither_slows_jobs_nor_holds_the_stop(
    endpoint: str, buckets: Any, moto_endpoint: str, short_tmp: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    flush_timeout_s = 3
    with black_hole() as silent:
        # dead: connection refused at once; black hole: accepted, never answered.
        monkeypatch.setenv(LOGS_ENDPOINT_VAR, dead_endpoint() if endpoint == "dead" else silent)
        config = cloudwatch_config(short_tmp, moto_endpoint, flush_timeout_s=flush_timeout_s,
                                   cloudwatch_create_group=endpoint == "dead")
        started = time.monotonic()
        _, stop_s = run_one_job(config, short_tmp / "p.sock", buckets, "cw/down.txt", b"x y z")
    assert time.monotonic() - started < 30
    assert stop_s < flush_timeout_s + 5
    events = log_events(config)
    assert [e["state"] for e in events if e["event"] == "job_finished"] == ["succeeded"]
    if endpoint == "dead":
        assert any(e["event"] == "cloudwatch_group_not_created" for e in events)
    else:
        (incomplete,) = [e for e in events if e["event"] == "cloudwatch_flush_incomplete"]
        assert incomplete["timed_out"] is True and incomplete["timeout_s"] == flush_timeout_s
