"""What worker/telemetry/cloudwatch.py relies on in watchtower beyond its public API.

watchtower has no queue bound, no queue length, no way to keep records while it
creates a stream and (before 3.2) no bounded close, so the CloudWatch sink uses
``queues``, ``creating_log_stream`` and ``FLUSH_TIMEOUT``, and the retry budget
counts on its five tries per batch. setup.cfg pins the releases where these
hold; each test here fails if one changes (name, type, or the behaviour used),
so widening the pin is: bump it, run this file.

Stock ``watchtower.CloudWatchLogHandler`` throughout (our subclass changes some
of this on purpose), against recording stubs and a black hole on 127.0.0.1.
"""

from __future__ import annotations

import configparser
import json
import logging
import queue
import threading
from importlib.metadata import version
from pathlib import Path
from typing import Any

import boto3
import pytest
import watchtower
from botocore.config import Config
from packaging.requirements import Requirement

from tests.support.servers import Recorder, Seen, black_hole
from worker.aws import retry
from worker.telemetry.cloudwatch import CloudWatchHandler, logs_client

# watchtower warns (on stderr) about every batch it cannot deliver: expected here.
pytestmark = pytest.mark.filterwarnings("ignore::watchtower.WatchtowerWarning")

GROUP = "/processor/contract"
STREAM = "i-contract"
#: Liveness bound of every wait here: each step is a loopback round trip or a
#: timeout of a few seconds, so nothing for this long is a hang.
PATIENCE_S = 30.0


def stock(client: Any, **options: Any) -> watchtower.CloudWatchLogHandler:
    options.setdefault("send_interval", 60)
    return watchtower.CloudWatchLogHandler(
        log_group_name=GROUP, log_stream_name=STREAM, boto3_client=client,
        create_log_group=False, create_log_stream=True, use_queues=True, **options)


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("processor", logging.INFO, __file__, 1, message, None, None)


def target(seen: Seen) -> str:
    return seen.headers.get("x-amz-target", "").rsplit(".", 1)[-1]


def closed(handler: logging.Handler, step: str = "close") -> None:
    """close() (or flush()) in a thread of its own, joined within the liveness bound."""
    thread = threading.Thread(target=getattr(handler, step), daemon=True)
    thread.start()
    thread.join(PATIENCE_S)
    assert not thread.is_alive(), f"{step}() made no progress for {PATIENCE_S} s"


def test_the_installed_watchtower_is_within_a_bounded_pin() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).parents[3] / "setup.cfg")
    (line,) = [r for r in cfg["options"]["install_requires"].split("\n") if r.startswith("watchtower")]
    pin = Requirement(line)
    assert any(spec.operator == "<" for spec in pin.specifier), f"{line}: no upper bound"
    assert pin.specifier.contains(version("watchtower")), (line, version("watchtower"))


def test_the_internals_exist_with_their_types(aws_env: pytest.MonkeyPatch) -> None:
    handler = stock(logs_client())
    assert handler.queues == {} and isinstance(handler.queues, dict)
    assert handler.creating_log_stream is False
    assert isinstance(watchtower.CloudWatchLogHandler.FLUSH_TIMEOUT, int)
    ends = {watchtower.CloudWatchLogHandler.END, watchtower.CloudWatchLogHandler.FLUSH}
    assert all(isinstance(marker, int) for marker in ends) and len(ends) == 2
    handler.close()


def test_queues_hold_each_stream_s_events_as_dicts_and_markers_as_ints(
    aws_env: pytest.MonkeyPatch,
) -> None:
    with Recorder(lambda _s: (200, "application/x-amz-json-1.1", b"{}")) as endpoint:
        aws_env.setenv("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", endpoint.endpoint)
        handler = stock(logs_client())
        handler.emit(record("first"))
        handler.emit(record("second"))
        # Keyed by the formatted stream name; a queue.Queue of dicts with the message.
        assert list(handler.queues) == [STREAM]
        queued = handler.queues[STREAM]
        assert isinstance(queued, queue.Queue)
        with queued.mutex:
            items = list(queued.queue)
        assert [item["message"] for item in items] == ["first", "second"]
        assert all(isinstance(item["timestamp"], int) for item in items)
        # close() queues END behind the events and sends them in one batch.
        closed(handler)
        assert queued.unfinished_tasks == 0
    (put,) = [json.loads(s.body) for s in endpoint.seen if target(s) == "PutLogEvents"]
    assert [e["message"] for e in put["logEvents"]] == ["first", "second"]


def test_creating_log_stream_is_set_during_create_and_stock_emit_drops_meanwhile(
    aws_env: pytest.MonkeyPatch,
) -> None:
    handlers: dict[str, watchtower.CloudWatchLogHandler] = {}
    during: dict[str, Any] = {}

    def reply(seen: Seen) -> tuple[int, str, bytes]:
        if target(seen) == "CreateLogStream":
            # The sender thread waits for this answer, inside watchtower's creation.
            stock_handler = handlers["stock"]
            during["flag"] = stock_handler.creating_log_stream
            before = stock_handler.queues[STREAM].qsize()
            stock_handler.emit(record("dropped"))
            during["stock_kept"] = stock_handler.queues[STREAM].qsize() - before
            return 200, "application/x-amz-json-1.1", b"{}"
        if target(seen) == "PutLogEvents" and not during:
            body = {"__type": "ResourceNotFoundException", "message": "The log stream does not exist."}
            return 400, "application/x-amz-json-1.1", json.dumps(body).encode()
        return 200, "application/x-amz-json-1.1", b"{}"

    with Recorder(reply) as endpoint:
        aws_env.setenv("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", endpoint.endpoint)
        handlers["stock"] = stock(logs_client())
        handlers["stock"].emit(record("first"))
        # flush(), not close(): after close() emit() refuses every record anyway.
        closed(handlers["stock"], "flush")
        closed(handlers["stock"])
    assert during == {"flag": True, "stock_kept": 0}
    puts = [json.loads(s.body) for s in endpoint.seen if target(s) == "PutLogEvents"]
    assert [[e["message"] for e in put["logEvents"]] for put in puts] == [["first"], ["first"]]
    # Ours keeps what stock watchtower drops there (the reason for the override).
    ours = CloudWatchHandler(logs_client(), GROUP, STREAM)
    ours.creating_log_stream = True
    assert ours.creating_log_stream is False
    ours.close()


def test_close_waits_flush_timeout_per_queue_not_for_the_send(aws_env: pytest.MonkeyPatch) -> None:
    # A sender stuck on an endpoint that never answers: close() returns after
    # FLUSH_TIMEOUT with the batch still unsent (what logsetup.shutdown bounds with it).
    with black_hole() as silent:
        client = boto3.session.Session().client(
            "logs", region_name="us-east-1", endpoint_url=silent,
            config=Config(connect_timeout=2, read_timeout=600, retries={"total_max_attempts": 1}))
        handler = stock(client)
        handler.emit(record("stuck"))
        handler.FLUSH_TIMEOUT = 1
        closed(handler)
        assert handler.queues[STREAM].unfinished_tasks > 0  # returned without the send
    client.close()


def test_a_failing_batch_is_tried_five_times_each_with_botocore_s_tries(
    aws_env: pytest.MonkeyPatch,
) -> None:
    # The figure worker.aws.retry.logs_batch() counts on: watchtower's loop around our client.
    def failing(seen: Seen) -> tuple[int, str, bytes]:
        if target(seen) == "PutLogEvents":
            body = {"__type": "ServiceUnavailableException", "message": "down"}
            return 500, "application/x-amz-json-1.1", json.dumps(body).encode()
        return 200, "application/x-amz-json-1.1", b"{}"

    with Recorder(failing) as endpoint:
        aws_env.setenv("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", endpoint.endpoint)
        handler = stock(logs_client())
        handler.emit(record("lost"))
        closed(handler)
        assert handler.queues[STREAM].unfinished_tasks == 0  # the sender gave up: done
    puts = [s for s in endpoint.seen if target(s) == "PutLogEvents"]
    assert len(puts) == retry.logs_batch().requests == 10
