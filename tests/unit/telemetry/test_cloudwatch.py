"""The CloudWatch sink's pieces over real loopback HTTP: IMDS, the EMF header, bounded flush.

Nothing here contacts 169.254.169.254: every IMDS query goes to a stub on 127.0.0.1.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import time
from pathlib import Path

import pytest
import structlog

from tests.support.logstate import restored_logging
from tests.support.servers import Recorder, Seen, black_hole, dead_endpoint
from worker.config.settings import settings_from_mapping
from worker.telemetry import logsetup
from worker.telemetry.cloudwatch import (
    EMF_HEADER,
    CloudWatchHandler,
    Target,
    logs_client,
    stream_name,
)

# watchtower warns (on stderr) about every batch it cannot deliver: expected here.
pytestmark = pytest.mark.filterwarnings("ignore::watchtower.WatchtowerWarning")


def test_stream_name_prefers_config_then_instance_id_then_hostname() -> None:
    def never() -> str | None:
        raise AssertionError("IMDS must not be asked when the stream is configured")

    assert stream_name("i-test", never) == "i-test"
    assert stream_name("", lambda: "i-0abc") == "i-0abc"
    assert stream_name("", lambda: None) == socket.gethostname()


def test_target_from_settings() -> None:
    base = {"s3": {"output_bucket": "o", "region": "eu-west-1"}}
    assert Target.from_settings(settings_from_mapping(base, {}), lambda: "i-x") is None
    on = settings_from_mapping({**base, "logging": {"cloudwatch_log_group": "/processor/daemon"}}, {})
    target = Target.from_settings(on, lambda: "i-0abc")
    assert target is not None
    assert (target.group, target.stream, target.metrics_stream) == (
        "/processor/daemon", "i-0abc", "i-0abc-metrics")
    assert (target.create_group, target.region) == (False, "eu-west-1")


def logs_reply(_seen: Seen) -> tuple[int, str, bytes]:
    return 200, "application/x-amz-json-1.1", b"{}"


def test_only_put_log_events_of_the_metrics_client_carry_the_emf_header(
    aws_env: pytest.MonkeyPatch,
) -> None:
    with Recorder(logs_reply) as endpoint:
        aws_env.setenv("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", endpoint.endpoint)
        event = [{"timestamp": int(time.time() * 1000), "message": "{}"}]
        emf = logs_client(emf=True)
        emf.put_log_events(logGroupName="g", logStreamName="s-metrics", logEvents=event)
        emf.create_log_stream(logGroupName="g", logStreamName="s-metrics")
        logs_client().put_log_events(logGroupName="g", logStreamName="s", logEvents=event)
    marked = [(s.headers["x-amz-target"], s.headers.get(EMF_HEADER[0])) for s in endpoint.seen]
    assert marked == [
        ("Logs_20140328.PutLogEvents", "json/emf"),
        ("Logs_20140328.CreateLogStream", None),
        ("Logs_20140328.PutLogEvents", None),
    ]
    # Signed like any other header (SigV4 lists it), so no proxy can strip it unnoticed.
    assert "x-amzn-logs-format" in endpoint.seen[0].headers["authorization"]


def test_a_dead_cloudwatch_never_blocks_logging_and_shutdown_is_bounded(
    aws_env: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    stream = io.StringIO()
    with black_hole() as silent, restored_logging():
        aws_env.setenv("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", silent)
        target = Target("/processor/test", "i-test", send_interval_s=1, max_queued=100)
        sinks = logsetup.configure("info", tmp_path, stream=stream, cloudwatch=target)
        assert sinks == ["stderr", "file", "cloudwatch"]
        log = structlog.get_logger("processor.test")
        log.info("job_progress", job_id="j-first")
        time.sleep(1.5)  # the sender has sent its first batch and waits for an answer
        started = time.monotonic()
        for n in range(5000):
            log.info("job_progress", job_id=f"j-{n}")
        # The queue takes them, up to max_queued, then drops: never a wait.
        assert time.monotonic() - started < 5
        started = time.monotonic()
        assert logsetup.shutdown(1.0) is False
        assert time.monotonic() - started < 2.5
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    (incomplete,) = [e for e in lines if e["event"] == "cloudwatch_flush_incomplete"]
    assert incomplete["timed_out"] is True and incomplete["dropped"] == 5000 - 100
    assert incomplete["pending"]["i-test"] >= 100
    assert (tmp_path / "processor.jsonl").read_text().count('"job_progress"') == 5001


def test_a_group_that_cannot_be_created_is_reported_not_fatal(
    aws_env: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    stream = io.StringIO()
    with restored_logging():
        aws_env.setenv("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", dead_endpoint())
        target = Target("/processor/test", "i-test", create_group=True)
        assert logsetup.configure("info", stream=stream, cloudwatch=target)[-1] == "cloudwatch"
        assert logsetup.shutdown(2.0) is True  # nothing queued: closes at once
    events = [json.loads(line)["event"] for line in stream.getvalue().splitlines()]
    assert "cloudwatch_group_not_created" in events


def test_records_are_kept_while_watchtower_creates_a_stream(aws_env: pytest.MonkeyPatch) -> None:
    with Recorder(logs_reply) as endpoint:
        aws_env.setenv("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", endpoint.endpoint)
        handler = CloudWatchHandler(logs_client(), "/processor/test", "i-{test}", send_interval_s=60)
        # What watchtower's sender thread sets around CreateLogStream; stock emit() would
        # then drop this record, from whichever thread it came.
        handler.creating_log_stream = True
        handler.emit(logging.LogRecord("processor", logging.INFO, __file__, 1, "kept", None, None))
        assert handler.pending() == 1
        handler.close()  # sends the queue
    (put,) = [json.loads(s.body) for s in endpoint.seen]
    assert put["logStreamName"] == "i-{test}"  # braces taken literally, not as a format field
    assert [e["message"] for e in put["logEvents"]] == ["kept"]
