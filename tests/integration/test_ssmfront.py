"""The local SSM front: addresses commands like the real service, where moto does not."""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from worker.local import cfn
from worker.local.agent import parse_content
from worker.local.ssmfront import SsmFront


@pytest.fixture
def front(aws: Callable[[str], Any], moto_endpoint: str) -> Any:
    ssm = aws("ssm")
    specs = cfn.ssm_documents(cfn.load_template(cfn.default_template_path()), "front")
    cfn.create_documents(ssm, specs)
    server = SsmFront(moto_endpoint, lambda name, version: parse_content(ssm.get_document(Name=name)))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def client(endpoint: str) -> Any:
    return boto3.session.Session(region_name="us-east-1").client("ssm", endpoint_url=endpoint)


def test_commands_reach_only_the_addressed_online_agent(front: SsmFront) -> None:
    inboxes: dict[str, queue.SimpleQueue[dict[str, Any]]] = {}
    online = {"i-aaa": True, "i-bbb": True, "i-ccc": False}
    for instance in online:
        inboxes[instance] = queue.SimpleQueue()
        front.register(instance, inboxes[instance], lambda i=instance: online[i])
    ssm = client(front.endpoint)
    reply = ssm.send_command(DocumentName="front-SubmitDocument", InstanceIds=["i-bbb"],
                             Parameters={"Bucket": ["in-bucket"], "Key": ["a b/$(x).csv"]})
    delivered = inboxes["i-bbb"].get_nowait()
    assert delivered["CommandId"] == reply["Command"]["CommandId"]
    assert delivered["Parameters"]["Key"] == ["a b/$(x).csv"] and delivered["InstanceIds"] == ["i-bbb"]
    assert inboxes["i-aaa"].empty()

    with pytest.raises(ClientError) as offline:
        ssm.send_command(DocumentName="front-SubmitDocument", InstanceIds=["i-ccc"],
                         Parameters={"Bucket": ["in-bucket"], "Key": ["k"]})
    assert offline.value.response["Error"]["Code"] == "InvalidInstanceId"
    with pytest.raises(ClientError) as unknown:
        ssm.send_command(DocumentName="front-SubmitDocument", InstanceIds=["i-zzz"],
                         Parameters={"Bucket": ["in-bucket"], "Key": ["k"]})
    assert unknown.value.response["Error"]["Code"] == "InvalidInstanceId"

    info = ssm.describe_instance_information()["InstanceInformationList"]
    assert {i["InstanceId"]: i["PingStatus"] for i in info} == {
        "i-aaa": "Online", "i-bbb": "Online", "i-ccc": "ConnectionLost"}
    assert front.deliveries == [("i-bbb", reply["Command"]["CommandId"])]


def test_parameters_failing_the_pattern_are_rejected_at_send_time(front: SsmFront) -> None:
    front.register("i-aaa", queue.SimpleQueue(), lambda: True)
    ssm = client(front.endpoint)
    with pytest.raises(ClientError) as bad:
        ssm.send_command(DocumentName="front-SubmitDocument", InstanceIds=["i-aaa"],
                         Parameters={"Bucket": ["in-bucket"], "Key": ["line\nbreak"]})
    assert bad.value.response["Error"]["Code"] == "InvalidParameters"
    assert "Key" in bad.value.response["Error"]["Message"]
