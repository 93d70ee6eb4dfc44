"""lambda_trigger.handler in its SSM mode (with an in-memory SSM fake), its configuration, and
lambda_trigger.ssm's pure parts.

The SendCommand adapter against the emulator over HTTP is in
tests/integration/test_lambda_ssm.py; the queue mode in tests/unit/lambda_trigger/test_queue_mode.py.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from lambda_trigger import handler as handler_module
from lambda_trigger.events import JobRequest
from lambda_trigger.handler import ConfigError, TriggerConfig, handle, load_config
from lambda_trigger.ssm import (
    CLIENT_CONFIG,
    COMMENT_MAX_CHARS,
    TOO_MANY_UPDATES,
    UPDATE_ATTEMPTS,
    UPDATE_BACKOFF_BASE_S,
    UPDATE_BACKOFF_CAP_S,
    DeliveryError,
    SendError,
    make_client,
    send_submit,
    submit_comment,
)
from tests.support.events import load_event
from tests.support.trigger import ENV, INSTANCE, Factory, FakeSsm

QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/processor-work"
LOG_KEYS = {"event", "bucket", "key", "version_id", "etag", "instance_id", "command_id",
            "queue_url", "message_id", "error", "reason"}


def _log_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "processor.trigger"]
    for line in lines:
        assert set(line) == LOG_KEYS
    return lines


@pytest.fixture(autouse=True)
def _capture_trigger_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="processor.trigger")


# --- handle(): sending -------------------------------------------------------


def test_one_send_per_created_record_with_exact_arguments() -> None:
    fake = FakeSsm()

    summary = handle(load_event("multi_record"), ENV, Factory(fake))

    assert summary == {"sent": 2, "skipped": 2, "command_ids": ["cmd-1", "cmd-2"], "message_ids": []}
    assert fake.calls == [
        {
            "DocumentName": "processor-SubmitDocument",
            "InstanceIds": [INSTANCE],
            "Parameters": {"Bucket": ["processor-input"], "Key": ["incoming/batch/a.csv"],
                           "ETag": ["0f343b0931126a20f133d67c2b018a3b"]},
            "Comment": "processor submit s3://processor-input/incoming/batch/a.csv",
        },
        {
            "DocumentName": "processor-SubmitDocument",
            "InstanceIds": [INSTANCE],
            "Parameters": {"Bucket": ["processor-input"], "Key": ["incoming/batch/b c+d.csv"],
                           "VersionId": ["Ht.m4Mb0HmHRLyqG6CdbPnJY2T5Uc1Vp"],
                           "ETag": ["9b2cf535f27731c974343645a3985328"]},
            "Comment": "processor submit s3://processor-input/incoming/batch/b c+d.csv",
        },
    ]


def test_document_version_is_sent_when_configured() -> None:
    fake = FakeSsm()

    handle(load_event("put_plain"), {**ENV, "DOCUMENT_VERSION": "3"}, Factory(fake))

    assert fake.calls[0]["DocumentVersion"] == "3"


def test_no_targets_and_no_document_version_by_default() -> None:
    fake = FakeSsm()

    handle(load_event("put_plain"), ENV, Factory(fake))

    assert set(fake.calls[0]) == {"DocumentName", "InstanceIds", "Parameters", "Comment"}


@pytest.mark.parametrize("name", ["removed_delete", "folder_marker", "s3_test_event"])
def test_nothing_to_send_builds_no_client(name: str) -> None:
    factory = Factory(FakeSsm())

    summary = handle(load_event(name), ENV, factory)

    assert factory.built == 0
    assert summary["sent"] == 0 and summary["command_ids"] == []


def test_failed_record_does_not_stop_the_others_then_raises() -> None:
    event = load_event("multi_record")
    event["Records"].append(load_event("put_unicode_key")["Records"][0])
    fake = FakeSsm(fail={"incoming/batch/a.csv": ["InvalidInstanceId"]})

    with pytest.raises(DeliveryError) as info:
        handle(event, ENV, Factory(fake))

    assert fake.keys == ["incoming/batch/a.csv", "incoming/batch/b c+d.csv",
                         "inbox/r\u00e9sum\u00e9 \u65e5\u672c.csv"]
    (failure,) = info.value.failures
    assert (failure.bucket, failure.key, failure.error) == (
        "processor-input", "incoming/batch/a.csv", "InvalidInstanceId")
    assert "s3://processor-input/incoming/batch/a.csv (InvalidInstanceId" in str(info.value)


def test_malformed_record_fails_the_invocation_after_sending_the_good_ones() -> None:
    event = load_event("multi_record")
    del event["Records"][2]["s3"]["object"]["key"]
    fake = FakeSsm()

    with pytest.raises(DeliveryError, match=r"Records\[2\]\.s3\.object\.key: missing") as info:
        handle(event, ENV, Factory(fake))

    assert fake.keys == ["incoming/batch/a.csv"]
    assert [f.error for f in info.value.failures] == ["MalformedRecord"]


def test_malformed_event_propagates() -> None:
    with pytest.raises(ValueError, match="Records"):
        handle({"hello": "world"}, ENV, Factory(FakeSsm()))


# --- handle(): configuration --------------------------------------------------


@pytest.mark.parametrize(
    ("env", "variable", "words"),
    [
        ({"TARGET_INSTANCE_ID": INSTANCE}, "DOCUMENT_NAME", "required"),
        ({"DOCUMENT_NAME": " ", "TARGET_INSTANCE_ID": INSTANCE}, "DOCUMENT_NAME", "required"),
        ({"DOCUMENT_NAME": "doc"}, "TARGET_INSTANCE_ID", "required"),
        ({"DOCUMENT_NAME": "doc", "TARGET_INSTANCE_ID": ""}, "TARGET_INSTANCE_ID", "required"),
        ({"DOCUMENT_NAME": "doc"}, "TARGET_INSTANCE_ID", "or set QUEUE_URL for a fleet"),
        ({}, "DOCUMENT_NAME", "or set QUEUE_URL for a fleet"),
        ({**ENV, "TARGET_TAG": "Role=processor"}, "TARGET_TAG", "replaced by QUEUE_URL"),
        ({"QUEUE_URL": QUEUE, "TARGET_TAG": "Role=processor"}, "TARGET_TAG", "QUEUE_URL"),
        ({**ENV, "TARGET_CACHE_SECONDS": "60"}, "TARGET_CACHE_SECONDS", "removed"),
        ({**ENV, "QUEUE_URL": QUEUE}, "QUEUE_URL", "TARGET_INSTANCE_ID"),
        ({"QUEUE_URL": "processor-work"}, "QUEUE_URL", "not the URL of an SQS standard queue"),
        ({"QUEUE_URL": QUEUE + ".fifo"}, "QUEUE_URL", "standard queue"),
        ({"DOCUMENT_NAME": "doc", "TARGET_INSTANCE_ID": "web-1"}, "TARGET_INSTANCE_ID",
         "not an instance id"),
    ],
)
def test_config_errors_name_the_variable(env: dict[str, str], variable: str, words: str) -> None:
    fake = FakeSsm()

    with pytest.raises(ConfigError) as info:
        handle(load_event("put_plain"), env, Factory(fake))

    assert info.value.variable == variable
    assert str(info.value).startswith(variable)
    assert words in str(info.value)
    assert fake.calls == []


def test_config_accepts_instance_ids_and_treats_empty_version_as_unset() -> None:
    for instance in ("i-0123abcd", "i-0123456789abcdef0", "mi-0123456789abcdef0"):
        env = {"DOCUMENT_NAME": "doc", "TARGET_INSTANCE_ID": instance, "DOCUMENT_VERSION": ""}
        assert load_config(env) == TriggerConfig("doc", instance, None)


@pytest.mark.parametrize("env", [
    {"QUEUE_URL": QUEUE},
    # DOCUMENT_NAME may stay set (the stack sets it in both modes); it is not used.
    {"QUEUE_URL": f" {QUEUE} ", "DOCUMENT_NAME": "doc", "TARGET_INSTANCE_ID": " "},
    {"QUEUE_URL": "http://127.0.0.1:4566/000000000000/processor-work"},
])
def test_config_accepts_a_queue_url(env: dict[str, str]) -> None:
    config = load_config(env)

    assert config.queue_url == env["QUEUE_URL"].strip()
    assert (config.document_name, config.instance_id) == (None, None)


def test_config_is_checked_even_for_a_test_event() -> None:
    # S3 sends the test event when the notification is saved: a broken
    # configuration should surface then, not at the first real upload.
    with pytest.raises(ConfigError):
        handle(load_event("s3_test_event"), {}, Factory(FakeSsm()))


# --- handle(): logging --------------------------------------------------------


def test_one_json_log_line_per_record(caplog: pytest.LogCaptureFixture) -> None:
    event = load_event("multi_record")
    event["Records"].append({"eventSource": "aws:s3"})
    fake = FakeSsm(fail={"incoming/batch/b c+d.csv": ["InvalidDocument"]})

    with pytest.raises(DeliveryError):
        handle(event, ENV, Factory(fake))

    lines = _log_lines(caplog)
    assert sorted(line["event"] for line in lines) == [
        "record_failed", "record_malformed", "record_sent", "record_skipped", "record_skipped"]
    by_event = {line["event"]: line for line in lines}
    assert by_event["record_sent"] == {
        "event": "record_sent", "bucket": "processor-input", "key": "incoming/batch/a.csv",
        "version_id": None, "etag": "0f343b0931126a20f133d67c2b018a3b",
        "instance_id": INSTANCE, "command_id": "cmd-1", "queue_url": None, "message_id": None,
        "error": None, "reason": None}
    assert by_event["record_failed"]["key"] == "incoming/batch/b c+d.csv"
    assert by_event["record_failed"]["error"].startswith("InvalidDocument")
    assert by_event["record_malformed"]["error"] == "Records[4].eventName: missing"
    skipped_keys = {line["key"] for line in lines if line["event"] == "record_skipped"}
    assert skipped_keys == {"incoming/batch/old.csv", "incoming/batch/"}
    levels = {r.levelno for r in caplog.records if "record_failed" in r.getMessage()}
    assert levels == {logging.ERROR}


def test_log_line_cannot_be_split_by_a_key(caplog: pytest.LogCaptureFixture) -> None:
    event = load_event("put_plain")
    event["Records"][0]["s3"]["object"]["key"] = "evil%0A%7B%22event%22%3A%22x%22%7D"

    handle(event, ENV, Factory(FakeSsm()))

    (record,) = caplog.records
    assert "\n" not in record.getMessage()
    assert json.loads(record.getMessage())["key"] == 'evil\n{"event":"x"}'


def test_test_event_logs_one_line(caplog: pytest.LogCaptureFixture) -> None:
    handle(load_event("s3_test_event"), ENV, Factory(FakeSsm()))

    assert [line["event"] for line in _log_lines(caplog)] == ["test_event_ignored"]


# --- lambda_handler ------------------------------------------------------------


def test_lambda_handler_reads_env_per_call_and_reuses_the_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[FakeSsm] = []

    def fake_make_client() -> FakeSsm:
        built.append(FakeSsm())
        return built[-1]

    monkeypatch.setattr(handler_module, "make_client", fake_make_client)
    handler_module.cached_client.cache_clear()
    try:
        for name, value in ENV.items():
            monkeypatch.setenv(name, value)
        handler_module.lambda_handler(load_event("put_plain"), None)
        monkeypatch.setenv("DOCUMENT_NAME", "renamed-document")
        handler_module.lambda_handler(load_event("put_versioned"), None)
    finally:
        handler_module.cached_client.cache_clear()

    (client,) = built
    assert [call["DocumentName"] for call in client.calls] == [
        "processor-SubmitDocument", "renamed-document"]


# --- ssm.send_submit -----------------------------------------------------------

REQUEST = JobRequest("processor-input", "a b.csv", None, None, "ObjectCreated:Put", None)


def test_too_many_updates_is_retried_with_growing_bounded_backoff() -> None:
    fake = FakeSsm(fail={"a b.csv": [TOO_MANY_UPDATES] * (UPDATE_ATTEMPTS - 1)})
    sleeps: list[float] = []

    command_id = send_submit(fake, document_name="d", instance_id=INSTANCE, request=REQUEST,
                             sleep=sleeps.append)

    assert command_id == f"cmd-{UPDATE_ATTEMPTS}"
    assert len(sleeps) == UPDATE_ATTEMPTS - 1
    for attempt, delay in enumerate(sleeps, start=1):
        # Equal jitter: between half and all of the exponential ceiling.
        ceiling = min(UPDATE_BACKOFF_CAP_S, UPDATE_BACKOFF_BASE_S * 2 ** (attempt - 1))
        assert ceiling / 2 <= delay <= ceiling


def test_too_many_updates_gives_up_after_the_attempts() -> None:
    fake = FakeSsm(fail={"a b.csv": [TOO_MANY_UPDATES] * UPDATE_ATTEMPTS})

    with pytest.raises(SendError) as info:
        send_submit(fake, document_name="d", instance_id=INSTANCE, request=REQUEST,
                    sleep=lambda _: None)

    assert info.value.code == TOO_MANY_UPDATES
    assert len(fake.calls) == UPDATE_ATTEMPTS


def test_other_client_errors_are_not_retried_here() -> None:
    fake = FakeSsm(fail={"a b.csv": ["InvalidDocument"]})

    with pytest.raises(SendError) as info:
        send_submit(fake, document_name="d", instance_id=INSTANCE, request=REQUEST,
                    sleep=lambda _: pytest.fail("must not sleep"))

    assert (info.value.code, info.value.request, len(fake.calls)) == (
        "InvalidDocument", REQUEST, 1)
    assert isinstance(info.value.__cause__, ClientError)


def test_transport_errors_become_send_errors() -> None:
    class Unreachable:
        def send_command(self, **kwargs: Any) -> dict[str, Any]:
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")

    with pytest.raises(SendError) as info:
        send_submit(Unreachable(), document_name="d", instance_id=INSTANCE, request=REQUEST)

    assert info.value.code == "EndpointConnectionError"


def test_response_without_command_id_is_a_send_error() -> None:
    class Odd:
        def send_command(self, **kwargs: Any) -> dict[str, Any]:
            return {"Command": {}}

    with pytest.raises(SendError, match="InvalidResponse"):
        send_submit(Odd(), document_name="d", instance_id=INSTANCE, request=REQUEST)


def test_comment_is_cut_to_the_ssm_limit() -> None:
    long_key = JobRequest("b", "k" * 300, None, None, "ObjectCreated:Put", None)

    assert submit_comment(REQUEST) == "processor submit s3://processor-input/a b.csv"
    assert len(submit_comment(long_key)) == COMMENT_MAX_CHARS
    assert submit_comment(long_key).startswith("processor submit s3://b/kkk")


def test_make_client_uses_standard_retries_timeouts_and_the_endpoint_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL_SSM", "http://127.0.0.1:4566")

    client: Any = make_client()

    assert client.meta.endpoint_url == "http://127.0.0.1:4566"
    # botocore turns the legacy max_attempts (retries) into total attempts.
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 9}
    assert (client.meta.config.connect_timeout, client.meta.config.read_timeout) == (5, 15)
    assert CLIENT_CONFIG.retries["mode"] == "standard"
