"""Fleet targeting (TARGET_TAG) of the real lambda_handler against a moto server over HTTP.

As in test_lambda_ssm.py there is no mock.patch of boto3: the handler builds
its clients exactly as in Lambda and AWS_ENDPOINT_URL points them at the
emulator; each test runs in a fresh moto account.

What moto (5.2.5) does and does not do here:
- DescribeInstances honours the ``tag:`` and ``instance-state-name`` filters,
  so discovery is real;
- it has no DescribeInstanceInformation (the server answers 500), so the
  directory takes its documented fallback -- every running tagged instance --
  and says so once (``online_check_unavailable``);
- it records a command sent with ``InstanceIds=[x]`` as aimed at *every*
  instance of the account (see test_lambda_ssm.py), and never answers
  InvalidInstanceId. So the chosen instance is read from the request the
  handler's own client sends (a botocore ``before-call`` event handler: it
  observes the real request, it replaces nothing) and from the Lambda's log
  line; failover itself is covered with fakes in tests/unit.

Instance ids are moto's random ids, so the spread check seeds moto's
generator (``/moto-api/seed``) to make it reproducible, and re-seeds it
randomly afterwards.
"""

from __future__ import annotations

import json
import logging
import secrets
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from lambda_trigger.events import parse_event
from lambda_trigger.handler import cached_client, cached_directory, lambda_handler
from lambda_trigger.targeting import TargetTag, identity_of, rendezvous_order
from tests.eventfixtures import load_event
from tests.integration.test_lambda_ssm import SUBMIT_DOCUMENT

TAG = TargetTag("Role", "processor-fleet")
#: Any fixed value: it only makes moto's instance ids the same on every run.
MOTO_SEED = 20240506


@dataclass(frozen=True)
class Fleet:
    ssm: Any
    ec2: Any
    document_name: str
    tagged: list[str]  # running, tagged: the fleet
    untagged: str  # running, no tag
    stopped: str  # tagged, stopped


def _moto_api(endpoint: str, path: str) -> None:
    request = urllib.request.Request(f"{endpoint}/moto-api/{path}", method="POST")
    urllib.request.urlopen(request, timeout=10).close()


@pytest.fixture
def endpoint(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """The standard AWS environment pointing at the emulator, in a fresh account."""
    for name in ("AWS_ENDPOINT_URL_SSM", "AWS_ENDPOINT_URL_EC2", "AWS_PROFILE",
                 "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
                 "TARGET_INSTANCE_ID", "TARGET_CACHE_SECONDS", "DOCUMENT_VERSION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("MOTO_ACCOUNT_ID", f"{uuid.uuid4().int % 10**12:012d}")
    # Both caches belong to a warm container of *another* account/endpoint.
    cached_client.cache_clear()
    cached_directory.cache_clear()
    try:
        yield moto_endpoint
    finally:
        cached_client.cache_clear()
        cached_directory.cache_clear()


@pytest.fixture
def fleet(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    """3 running tagged instances, 1 running untagged, 1 stopped tagged; the Lambda env on them."""
    ssm, ec2 = boto3.client("ssm"), boto3.client("ec2")
    document_name = "processor-SubmitDocument"
    ssm.create_document(Content=json.dumps(SUBMIT_DOCUMENT), Name=document_name,
                        DocumentType="Command", DocumentFormat="JSON")
    tags = [{"ResourceType": "instance", "Tags": [{"Key": TAG.key, "Value": TAG.value}]}]
    _moto_api(endpoint, f"seed?a={MOTO_SEED}")
    try:
        tagged = [i["InstanceId"] for i in ec2.run_instances(
            ImageId="ami-12c6146b", MinCount=4, MaxCount=4, TagSpecifications=tags)["Instances"]]
        (untagged,) = [i["InstanceId"] for i in ec2.run_instances(
            ImageId="ami-12c6146b", MinCount=1, MaxCount=1)["Instances"]]
    finally:
        _moto_api(endpoint, f"seed?a={secrets.randbelow(2**31)}")
    stopped = tagged.pop()
    ec2.stop_instances(InstanceIds=[stopped])
    monkeypatch.setenv("DOCUMENT_NAME", document_name)
    monkeypatch.setenv("TARGET_TAG", str(TAG))
    yield Fleet(ssm, ec2, document_name, tagged, untagged, stopped)


@pytest.fixture(autouse=True)
def _capture_trigger_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="processor.trigger")


def _observe_sends() -> list[dict[str, Any]]:
    """The SendCommand requests the handler's own client makes from now on (decoded bodies)."""
    sent: list[dict[str, Any]] = []

    def before_call(params: dict[str, Any], **_: Any) -> None:
        sent.append(json.loads(params["body"]))

    client: Any = cached_client()
    client.meta.events.register("before-call.ssm.SendCommand", before_call)
    return sent


def _lines(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "processor.trigger"]
    return [line for line in lines if line["event"] == event]


def _many_objects(count: int) -> dict[str, Any]:
    event = load_event("put_plain")
    template = event["Records"][0]
    event["Records"] = [
        {**template, "s3": {**template["s3"], "object": {
            **template["s3"]["object"], "key": f"fleet/{n:04d}.csv", "eTag": f"{n:032x}"}}}
        for n in range(count)]
    return event


def _expected_instance(event: dict[str, Any], fleet: list[str]) -> list[str]:
    return [rendezvous_order(identity_of(request), fleet)[0]
            for request in parse_event(event).requests]


def test_discovery_finds_exactly_the_running_tagged_instances(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    directory = cached_directory(TAG, 60.0)

    assert directory.instances() == sorted(fleet.tagged)
    assert fleet.untagged not in directory.instances() and fleet.stopped not in fleet.tagged
    # moto has no DescribeInstanceInformation: the fallback is taken and said once.
    (warning,) = _lines(caplog, "online_check_unavailable")
    assert "DescribeInstanceInformation" in warning["reason"]
    (discovered,) = _lines(caplog, "instances_discovered")
    assert discovered["reason"].startswith("tag Role=processor-fleet: 3 running, not checked")


def test_a_record_goes_to_one_instance_of_the_fleet(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    event = load_event("put_shell_metachar_key")
    sent = _observe_sends()

    summary = lambda_handler(event, None)

    (request,) = sent
    (chosen,) = _expected_instance(event, fleet.tagged)
    assert request["InstanceIds"] == [chosen]
    assert "Targets" not in request
    (line,) = _lines(caplog, "record_sent")
    assert (line["instance_id"], line["failed_over_from"], line["command_id"]) == (
        chosen, [], summary["command_ids"][0])
    (command,) = fleet.ssm.list_commands(CommandId=summary["command_ids"][0])["Commands"]
    assert command["Parameters"]["Key"] == [parse_event(event).requests[0].key]


def test_many_records_spread_evenly_over_the_fleet(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    event = _many_objects(300)
    sent = _observe_sends()

    summary = lambda_handler(event, None)

    assert summary["sent"] == 300
    targets = [request["InstanceIds"] for request in sent]
    assert all(len(target) == 1 for target in targets)
    chosen = [target[0] for target in targets]
    assert chosen == _expected_instance(event, fleet.tagged)
    assert chosen == [line["instance_id"] for line in _lines(caplog, "record_sent")]
    counts = Counter(chosen)
    assert set(counts) == set(fleet.tagged), counts
    assert all(80 <= n <= 120 for n in counts.values()), counts
    # One discovery for the whole batch, not one per record.
    assert len(_lines(caplog, "instances_discovered")) == 1


def test_the_same_object_delivered_twice_goes_to_the_same_instance(fleet: Fleet) -> None:
    event = load_event("put_versioned")
    sent = _observe_sends()

    lambda_handler(event, None)
    lambda_handler(event, None)
    # A cold container (no cached fleet, a new client) chooses the same.
    cached_client.cache_clear()
    cached_directory.cache_clear()
    sent_cold = _observe_sends()
    lambda_handler(event, None)

    assert [r["InstanceIds"] for r in sent + sent_cold] == [_expected_instance(event, fleet.tagged)] * 3


def test_an_instance_leaving_moves_only_its_share(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TARGET_CACHE_SECONDS", "0")  # see the fleet change at once
    event = _many_objects(60)
    sent = _observe_sends()
    lambda_handler(event, None)
    before = [request["InstanceIds"][0] for request in sent]
    gone = fleet.tagged[0]

    fleet.ec2.stop_instances(InstanceIds=[gone])
    sent.clear()
    lambda_handler(event, None)
    after = [request["InstanceIds"][0] for request in sent]

    assert gone in before and gone not in after
    assert all(b == a for b, a in zip(before, after, strict=True) if b != gone)
    assert {a for b, a in zip(before, after, strict=True) if b == gone} == set(fleet.tagged[1:])
