"""The real lambda_handler in fleet mode (QUEUE_URL) and reconcile mode, over HTTP against moto.

No mock.patch of boto3: the handler builds its clients as in Lambda, and the
standard AWS_ENDPOINT_URL variable points them at the emulator. Each test
runs in a fresh moto account (MOTO_ACCOUNT_ID): moto's state is process-global.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from lambda_trigger import handler
from lambda_trigger.config import ConfigError
from lambda_trigger.handler import lambda_handler
from lambda_trigger.s3 import ListingError
from lambda_trigger.ssm import DeliveryError
from processor_shared.layout import job_id
from tests.support.emulator import aim_at_emulator
from tests.support.events import EXPECTED_PARAMETERS, load_event

#: Liveness bound of a receive loop: no new message for this long ends it.
QUIET_S = 3.0


def _clear_clients() -> None:
    for cached in (handler.cached_client, handler.cached_queue_client, handler.cached_s3_client):
        cached.cache_clear()


@pytest.fixture
def queue_url(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """A work queue in a fresh account; the Lambda's environment aimed at it."""
    aim_at_emulator(monkeypatch, moto_endpoint, tmp_path, unset=(
        "AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_S3", "DOCUMENT_NAME", "TARGET_INSTANCE_ID",
        "DOCUMENT_VERSION", "OUTPUT_PREFIX"))
    url = boto3.client("sqs").create_queue(QueueName="processor-work")["QueueUrl"]
    monkeypatch.setenv("QUEUE_URL", url)
    _clear_clients()
    try:
        yield url
    finally:
        _clear_clients()


def _drain(url: str) -> list[dict[str, Any]]:
    """Every message on the queue (received and deleted), bodies parsed."""
    sqs = boto3.client("sqs")
    bodies: list[dict[str, Any]] = []
    last = time.monotonic()
    while time.monotonic() - last < QUIET_S:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                       WaitTimeSeconds=1).get("Messages", [])
        for message in messages:
            bodies.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        if messages:
            last = time.monotonic()
    return bodies


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMETERS))
def test_created_object_becomes_one_message_with_the_raw_key(queue_url: str, name: str) -> None:
    summary = lambda_handler(load_event(name), None)

    (body,) = _drain(queue_url)
    expected = EXPECTED_PARAMETERS[name]
    assert body == {"bucket": "processor-input", "key": expected["Key"][0],
                    "version_id": expected.get("VersionId", [None])[0],
                    "etag": expected["ETag"][0]}
    assert summary["sent"] == 1 and summary["command_ids"] == []
    assert len(summary["message_ids"]) == 1


def test_a_large_event_becomes_one_message_per_record(queue_url: str) -> None:
    record = load_event("put_plain")["Records"][0]
    records = []
    for n in range(23):
        copy = json.loads(json.dumps(record))
        copy["s3"]["object"]["key"] = f"burst/{n:02d}+%C3%A9.txt"
        records.append(copy)

    summary = lambda_handler({"Records": records}, None)

    assert summary["sent"] == 23
    assert sorted(body["key"] for body in _drain(queue_url)) == [
        f"burst/{n:02d} \u00e9.txt" for n in range(23)]


def test_a_missing_queue_fails_the_invocation_naming_every_key(
    queue_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="processor.trigger")
    boto3.client("sqs").delete_queue(QueueUrl=queue_url)

    with pytest.raises(DeliveryError) as info:
        lambda_handler(load_event("multi_record"), None)

    assert [f.key for f in info.value.failures] == ["incoming/batch/a.csv",
                                                    "incoming/batch/b c+d.csv"]
    assert all("NonExistentQueue" in f.error or "QueueDoesNotExist" in f.error
               for f in info.value.failures), info.value
    failed = [json.loads(r.getMessage()) for r in caplog.records
              if "record_failed" in r.getMessage()]
    assert len(failed) == 2


# --- reconcile mode ---------------------------------------------------------------


def _reconcile_stack(monkeypatch: pytest.MonkeyPatch, prefix: str = "") -> dict[str, Any]:
    """Input and output buckets with objects in every reconcile situation; returns their versions.

    Bucket names are per test: moto shares them across its accounts.
    """
    s3 = boto3.client("s3")
    suffix = uuid.uuid4().hex[:12]
    in_bucket, out_bucket = f"fleet-in-{suffix}", f"fleet-out-{suffix}"
    for bucket in (in_bucket, out_bucket):
        s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=in_bucket, VersioningConfiguration={"Status": "Enabled"})
    room = 1024 - len(f"{prefix}/_manifest.json".encode())
    keys = {
        "lost": "lost/a b+c.txt", "lost2": "lost/\u65e5\u672c.csv", "done": "done.txt",
        "failed": "failed.txt", "long_done": "L" * (room + 1), "long_lost": "M" * (room + 5),
        "edge_done": "E" * room,
    }
    versions = {name: s3.put_object(Bucket=in_bucket, Key=key, Body=name.encode())
                for name, key in keys.items()}
    s3.put_object(Bucket=in_bucket, Key="folder/", Body=b"")
    s3.put_object(Bucket=out_bucket, Key=f"{prefix}done.txt/_manifest.json", Body=b"{}")
    s3.put_object(Bucket=out_bucket, Key=f"{prefix}failed.txt/_failed.json", Body=b"{}")
    s3.put_object(Bucket=out_bucket, Key=f"{prefix}{keys['edge_done']}/_manifest.json", Body=b"{}")
    long_id = job_id(in_bucket, keys["long_done"], versions["long_done"]["VersionId"], None)
    s3.put_object(Bucket=out_bucket, Key=f"{prefix}_by-id/{long_id}/_manifest.json", Body=b"{}")
    monkeypatch.setenv("INPUT_BUCKET", in_bucket)
    monkeypatch.setenv("OUTPUT_BUCKET", out_bucket)
    monkeypatch.setenv("OUTPUT_PREFIX", prefix)
    return {"in": in_bucket, **{name: (keys[name], v["VersionId"], v["ETag"].strip('"'))
                         for name, v in versions.items()}}


@pytest.mark.parametrize("prefix", ["", "results/"])
def test_reconcile_queues_every_lost_object_once_per_pass(
    queue_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, prefix: str,
) -> None:
    caplog.set_level(logging.INFO, logger="processor.trigger")
    objects = _reconcile_stack(monkeypatch, prefix)
    bucket = objects.pop("in")

    too_new = lambda_handler({"processor": "reconcile"}, None)  # default older_than_s: 900
    dry = lambda_handler({"processor": "reconcile", "older_than_s": 0, "dry_run": True}, None)
    assert _drain(queue_url) == []
    summary = lambda_handler({"processor": "reconcile", "older_than_s": 0}, None)

    assert too_new["too_new"] == 7 and too_new["sent"] == 0  # + the folder marker
    assert dry["sent"] == 3 and dry["dry_run"] is True
    assert summary == {"input_bucket": bucket, "prefix": "", "older_than_s": 0.0, "dry_run": False,
                       "listed": 8, "sent": 3, "failed": 0, "has_result": 4, "too_new": 0,
                       "folder": 1}
    expected = sorted(({"bucket": bucket, "key": key, "version_id": version, "etag": etag}
                       for name, (key, version, etag) in objects.items()
                       if name in ("lost", "lost2", "long_lost")), key=lambda b: b["key"])
    assert sorted(_drain(queue_url), key=lambda b: b["key"]) == expected
    finished = [json.loads(r.getMessage()) for r in caplog.records
                if '"reconcile_finished"' in r.getMessage()]
    assert finished[-1] == {"event": "reconcile_finished", **summary}


def test_reconcile_only_under_the_prefix(queue_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _reconcile_stack(monkeypatch)

    summary = lambda_handler({"processor": "reconcile", "older_than_s": 0, "prefix": "lost/"}, None)

    assert (summary["listed"], summary["sent"]) == (2, 2)
    assert sorted(b["key"] for b in _drain(queue_url)) == ["lost/a b+c.txt", "lost/\u65e5\u672c.csv"]


def test_reconcile_of_a_missing_bucket_names_it(queue_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INPUT_BUCKET", "no-such-bucket")
    monkeypatch.setenv("OUTPUT_BUCKET", "no-such-bucket")

    with pytest.raises(ListingError, match=r"no-such-bucket.*NoSuchBucket"):
        lambda_handler({"processor": "reconcile", "older_than_s": 0}, None)


def test_reconcile_that_cannot_send_raises_after_its_summary(
    queue_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="processor.trigger")
    _reconcile_stack(monkeypatch)
    boto3.client("sqs").delete_queue(QueueUrl=queue_url)

    with pytest.raises(DeliveryError) as info:
        lambda_handler({"processor": "reconcile", "older_than_s": 0}, None)

    assert len(info.value.failures) == 3
    (finished,) = [json.loads(r.getMessage()) for r in caplog.records
                   if '"reconcile_finished"' in r.getMessage()]
    assert (finished["sent"], finished["failed"]) == (0, 3)


@pytest.mark.parametrize(("event", "variable"), [
    ({"processor": "reconcile", "older_than_s": -1}, "older_than_s"),
    ({"processor": "reconcile", "older_than_s": "15m"}, "older_than_s"),
    ({"processor": "reconcile", "older_than_s": True}, "older_than_s"),
    ({"processor": "reconcile", "prefix": 3}, "prefix"),
    ({"processor": "reconcile", "dry_run": "yes"}, "dry_run"),
])
def test_reconcile_event_errors_name_the_field(
    queue_url: str, monkeypatch: pytest.MonkeyPatch, event: dict[str, Any], variable: str,
) -> None:
    monkeypatch.setenv("INPUT_BUCKET", "in")
    monkeypatch.setenv("OUTPUT_BUCKET", "out")

    with pytest.raises(ConfigError) as info:
        lambda_handler(event, None)

    assert info.value.variable == variable


def test_reconcile_needs_its_buckets(queue_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INPUT_BUCKET", raising=False)

    with pytest.raises(ConfigError, match="INPUT_BUCKET is required"):
        lambda_handler({"processor": "reconcile"}, None)
