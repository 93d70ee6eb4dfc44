"""Configuration of a fleet's work queue: the [queue] section, its overrides and checks."""

from __future__ import annotations

import pytest

from worker.config.settings import (
    QUEUE_TRANSFER_MARGIN_S,
    SQS_MAX_INVISIBLE_S,
    QueueSettings,
    queue_region,
    settings_from_mapping,
)
from worker.errors import ConfigError

URL = "https://sqs.eu-west-2.amazonaws.com/123456789012/processor-work"


def test_no_queue_by_default() -> None:
    s = settings_from_mapping({"s3": {"output_bucket": "o"}}, {})
    assert s.queue == QueueSettings()
    assert (s.queue.url, s.queue.endpoint_url, s.queue.visibility_s, s.queue.wait_s,
            s.queue.input_bucket) == ("", "", 300, 20, "")


def test_every_queue_key_can_be_overridden_from_the_environment() -> None:
    env = {"PROCESSOR_QUEUE_URL": URL, "PROCESSOR_QUEUE_ENDPOINT_URL": "http://127.0.0.1:4566",
           "PROCESSOR_QUEUE_VISIBILITY_S": "60", "PROCESSOR_QUEUE_WAIT_S": "5",
           "PROCESSOR_QUEUE_INPUT_BUCKET": "in", "PROCESSOR_QUEUE_TABLE": "jobs",
           "PROCESSOR_QUEUE_TABLE_ENDPOINT_URL": "http://127.0.0.1:4567",
           "PROCESSOR_QUEUE_DEAD_LETTER_URL": URL + "-dlq", "PROCESSOR_QUEUE_HOLDER": "node-1"}
    s = settings_from_mapping({"s3": {"output_bucket": "o"}}, env)
    assert s.queue == QueueSettings(URL, "http://127.0.0.1:4566", 60, 5, "in", "jobs",
                                    "http://127.0.0.1:4567", URL + "-dlq", "node-1")


def test_a_queue_needs_the_fleet_record_table() -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({"s3": {"output_bucket": "o"}, "queue": {"url": URL}}, {})
    assert info.value.key == "queue.table" and "DynamoDB" in str(info.value)


def test_the_region_comes_from_the_queue_url_else_from_s3() -> None:
    s = settings_from_mapping(
        {"s3": {"output_bucket": "o", "region": "us-west-1"}, "queue": {"url": URL, "table": "t"}}, {}
    )
    assert queue_region(s) == "eu-west-2"
    local = settings_from_mapping({"s3": {"output_bucket": "o", "region": "us-west-1"},
                                   "queue": {"url": "http://127.0.0.1:4566/1/q", "table": "t"}}, {})
    assert queue_region(local) == "us-west-1"


@pytest.mark.parametrize(("key", "value", "fragment"), [
    ("url", "sqs.eu-west-2.amazonaws.com/1/q", "queue.url must be empty or an http(s) URL"),
    ("endpoint_url", "localhost:4566", "queue.endpoint_url"),
    ("visibility_s", 0, "queue.visibility_s must be 1..43200"),
    ("visibility_s", SQS_MAX_INVISIBLE_S + 1, "queue.visibility_s"),
    ("wait_s", 21, "queue.wait_s must be 0..20"),
    ("wait_s", -1, "queue.wait_s"),
    ("wait_s", "20", "queue.wait_s must be an integer"),
    ("dead_letter_url", "sqs/dlq", "queue.dead_letter_url must be empty or an http(s) URL"),
    ("table_endpoint_url", "localhost:8000", "queue.table_endpoint_url"),
    ("visbility_s", 30, "unknown key queue.visbility_s"),
])
def test_bad_queue_values_are_named(key: str, value: object, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({"s3": {"output_bucket": "o"}, "queue": {key: value}}, {})
    assert fragment in str(info.value)


def test_with_a_queue_the_job_timeout_stays_below_sqs_12_hour_ceiling() -> None:
    grace = 10
    ok = SQS_MAX_INVISIBLE_S - QUEUE_TRANSFER_MARGIN_S - grace - 1
    raw = {"s3": {"output_bucket": "o"}, "queue": {"url": URL, "table": "t"},
           "processing": {"timeout_s": ok, "kill_grace_s": grace}}
    assert settings_from_mapping(raw, {}).processing.timeout_s == ok
    raw["processing"]["timeout_s"] = ok + 1  # type: ignore[index]
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(raw, {})
    assert info.value.key == "processing.timeout_s" and "12 h" in str(info.value)
    # Without a queue, a day-long job is fine (no lease to outlive).
    del raw["queue"]
    raw["processing"]["timeout_s"] = 86400  # type: ignore[index]
    assert settings_from_mapping(raw, {}).processing.timeout_s == 86400
