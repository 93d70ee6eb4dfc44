"""`processor local --instances N`'s queue wiring, against its emulator over HTTP.

What the local fleet builds without its daemons: the work queue and its DLQ
(redrive policy), each daemon's ``[queue]`` config, the Lambda's QUEUE_URL,
and uploads turned into contract messages on the work queue by the real
Lambda handler (S3 -> event queue -> EventPump -> lambda_handler -> SQS).
The daemons consuming the queue are tests/e2e/test_fleet.py.
"""

from __future__ import annotations

import json
import tomllib
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lambda_trigger import handler
from tests.support.local import free_port
from tests.support.waiting import wait_until
from worker.local.emulator import (
    WORK_QUEUE_MAX_RECEIVES,
    WORK_QUEUE_VISIBILITY_S,
    Emulator,
    Resources,
    provision,
)
from worker.local.node import QUEUE_VISIBILITY_S, QUEUE_WAIT_S, write_config
from worker.local.pump import EventPump
from worker.local.stack import _command, lambda_environment

#: Liveness bound: a loop ends when nothing new arrived for this long.
QUIET_S = 5.0


def _reset(endpoint: str) -> None:
    """moto's state is process-wide: start and leave each test with none."""
    urllib.request.urlopen(
        urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=10
    ).close()


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    server = Emulator(free_port())
    try:
        _reset(server.endpoint)
        yield server
    finally:
        _reset(server.endpoint)
        server.stop()


def _provision(emulator: Emulator, instances: int) -> Resources:
    # Bucket names are global in moto (shared by every server in this process).
    suffix = uuid.uuid4().hex[:10]
    return provision(emulator, input_bucket=f"lf-in-{suffix}", output_bucket=f"lf-out-{suffix}",
                     instances=instances)


def test_a_fleet_gets_a_work_queue_with_a_dead_letter_queue(emulator: Emulator) -> None:
    res = _provision(emulator, 3)
    sqs = emulator.client("sqs")

    attributes = sqs.get_queue_attributes(QueueUrl=res.work_queue_url,
                                          AttributeNames=["All"])["Attributes"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=res.work_dead_letter_queue_url,
                                       AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]

    policy = json.loads(attributes["RedrivePolicy"])
    assert policy["deadLetterTargetArn"] == dlq_arn
    assert int(policy["maxReceiveCount"]) == WORK_QUEUE_MAX_RECEIVES
    assert int(attributes["VisibilityTimeout"]) == WORK_QUEUE_VISIBILITY_S
    assert "FifoQueue" not in attributes  # a standard queue
    assert len(res.instance_ids) == 3
    assert lambda_environment(res) == {"QUEUE_URL": res.work_queue_url}


def test_one_instance_keeps_the_ssm_flow(emulator: Emulator, tmp_path: Path) -> None:
    res = _provision(emulator, 1)

    assert (res.work_queue_url, res.work_dead_letter_queue_url) == ("", "")
    assert lambda_environment(res) == {"DOCUMENT_NAME": res.submit_document,
                                       "TARGET_INSTANCE_ID": res.instance_ids[0]}
    config = tomllib.loads(write_config(tmp_path, res, _command(None), holder="i-1").read_text())
    assert "queue" not in config


def test_each_fleet_daemon_is_configured_for_the_queue(emulator: Emulator, tmp_path: Path) -> None:
    res = _provision(emulator, 2)

    config = tomllib.loads(write_config(tmp_path, res, _command(None), holder="i-1").read_text())

    assert config["queue"] == {"url": res.work_queue_url, "endpoint_url": res.endpoint,
                               "visibility_s": QUEUE_VISIBILITY_S, "wait_s": QUEUE_WAIT_S,
                               "input_bucket": res.input_bucket, "table": res.job_table,
                               "dead_letter_url": res.work_dead_letter_queue_url, "holder": "i-1"}
    # A message no daemon can take reaches the DLQ only after every attempt.
    assert WORK_QUEUE_MAX_RECEIVES > config["processing"]["max_attempts"]
    assert config["s3"]["output_bucket"] == res.output_bucket


def test_uploads_become_contract_messages_on_the_work_queue(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    res = _provision(emulator, 3)
    for name in ("DOCUMENT_NAME", "TARGET_INSTANCE_ID", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    for name, value in {**emulator.env(), **lambda_environment(res)}.items():
        monkeypatch.setenv(name, value)
    handler.cached_queue_client.cache_clear()
    s3, sqs = emulator.client("s3"), emulator.client("sqs")
    keys = [f"fleet/{n:02d}.txt" for n in range(12)] + ["fleet/a b+c %25 \u65e5.txt",
                                                         "fleet/$(rm -rf ~);`id`.csv"]
    uploaded = {}
    for key in keys:
        put = s3.put_object(Bucket=res.input_bucket, Key=key, Body=key.encode())
        uploaded[key] = {"bucket": res.input_bucket, "key": key, "version_id": put["VersionId"],
                         "etag": put["ETag"].strip('"')}
    pump = EventPump(sqs, res.queue_url)
    bodies: list[dict[str, Any]] = []
    pumped = 0

    def all_received() -> bool:
        nonlocal pumped
        pumped += pump.run_once(wait_s=1)
        for message in sqs.receive_message(QueueUrl=res.work_queue_url,
                                           MaxNumberOfMessages=10).get("Messages", []):
            bodies.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=res.work_queue_url, ReceiptHandle=message["ReceiptHandle"])
        return len(bodies) >= len(keys)

    try:
        # Fails once neither the event queue nor the work queue has moved for QUIET_S.
        wait_until(all_received, stall_s=QUIET_S, progress=lambda: (pumped, len(bodies)), interval=0,
                   describe=lambda: f"{len(bodies)} of {len(keys)} work messages")
    finally:
        handler.cached_queue_client.cache_clear()

    assert sorted(body["key"] for body in bodies) == sorted(keys)  # one message per upload
    for body in bodies:
        expected = uploaded[body["key"]]
        assert set(body) == {"bucket", "key", "version_id", "etag"}
        assert (body["bucket"], body["etag"]) == (expected["bucket"], expected["etag"])
        # moto's S3 notification leaves out versionId (real S3 sends it; the
        # Lambda passes it on, see tests/integration/test_lambda_sqs.py).
        assert body["version_id"] in (None, expected["version_id"])
    # Every event was taken off the event queue (the Lambda succeeded for each).
    leftover = sqs.get_queue_attributes(QueueUrl=res.queue_url, AttributeNames=["All"])["Attributes"]
    assert (leftover["ApproximateNumberOfMessages"], leftover["ApproximateNumberOfMessagesNotVisible"]) \
        == ("0", "0")


def test_a_message_no_daemon_takes_ends_in_the_dead_letter_queue(emulator: Emulator) -> None:
    res = _provision(emulator, 2)
    sqs = emulator.client("sqs")
    sqs.send_message(QueueUrl=res.work_queue_url, MessageBody="not json")

    receives = 0

    def parked() -> list[dict[str, Any]]:
        nonlocal receives
        # VisibilityTimeout 0: give it back at once, as a daemon leaving a malformed message does.
        if sqs.receive_message(QueueUrl=res.work_queue_url, VisibilityTimeout=0).get("Messages", []):
            receives += 1
        found: list[dict[str, Any]] = sqs.receive_message(
            QueueUrl=res.work_dead_letter_queue_url).get("Messages", [])
        return found

    # Fails once the message has been neither received again nor parked for QUIET_S.
    dead = wait_until(parked, stall_s=QUIET_S, progress=lambda: receives, interval=0,
                      describe=lambda: f"not in the dead-letter queue after {receives} receives")
    assert [m["Body"] for m in dead] == ["not json"]
    assert receives == WORK_QUEUE_MAX_RECEIVES
