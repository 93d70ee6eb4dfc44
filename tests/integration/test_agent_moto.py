"""The local SSM agent against the emulator over real HTTP: the template's own
documents are created with CreateDocument, commands go through SendCommand,
and the agent polls ListCommands / GetDocument like the real one polls SSM."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from worker.local import cfn
from worker.local.agent import LocalSsmAgent

REGION = "us-east-1"

FAKE_PROCESSORCTL = """#!/bin/sh
printf '%s\\0' "$@" > "$FAKE_ARGV_FILE"
echo job-0001
"""


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def _client(service: str, endpoint: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # the emulator's dummy credentials
    )


@pytest.fixture
def ssm(endpoint: str) -> Any:
    return _client("ssm", endpoint)


@pytest.fixture
def submit_document(ssm: Any) -> str:
    # The emulator's state lives as long as the process: a fresh stack name per
    # test keeps document names from colliding with other tests'.
    stack = f"processor-{uuid.uuid4().hex[:8]}"
    specs = cfn.ssm_documents(cfn.load_template(cfn.default_template_path()), stack)
    cfn.create_documents(ssm, specs)
    return next(s.name for s in specs if s.logical_id == "SubmitDocument")


def _instance_id(endpoint: str) -> str:
    ec2 = _client("ec2", endpoint)
    reservation = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)
    return str(reservation["Instances"][0]["InstanceId"])


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "processorctl"
    fake.write_text(FAKE_PROCESSORCTL, encoding="utf-8")
    fake.chmod(0o755)
    return {
        "PATH": f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin",
        "FAKE_ARGV_FILE": str(tmp_path / "argv"),
    }


def _argv(tmp_path: Path) -> list[str]:
    return (tmp_path / "argv").read_bytes()[:-1].decode("utf-8").split("\0")


def test_documents_round_trip_through_the_emulator(ssm: Any, submit_document: str) -> None:
    doc = ssm.get_document(Name=submit_document, DocumentFormat="YAML")
    assert doc["DocumentType"] == "Command"
    assert "{{" not in doc["Content"]
    described = ssm.describe_document(Name=submit_document)["Document"]
    assert {p["Name"] for p in described["Parameters"]} == {"Bucket", "Key", "KeyBase64", "VersionId",
                                                               "ETag"}


def test_hostile_key_is_submitted_verbatim(
    endpoint: str, ssm: Any, submit_document: str, env: dict[str, str], tmp_path: Path
) -> None:
    instance_id = _instance_id(endpoint)
    canary = tmp_path / "pwned"
    key = f"--help $(touch {canary}) `touch {canary}`; 'q' \"q\" résumé.csv"
    command_id = ssm.send_command(
        DocumentName=submit_document,
        InstanceIds=[instance_id],
        Parameters={"Bucket": ["processor-input"], "Key": [key]},
    )["Command"]["CommandId"]
    agent = LocalSsmAgent(ssm, instance_id, env=env, work_dir=tmp_path / "work")

    (result,) = agent.run_once()

    assert result.command_id == command_id
    assert result.status == "Success", result.stderr
    assert result.stdout == "job-0001\n"
    assert _argv(tmp_path) == [
        "submit",
        "--bucket=processor-input",
        f"--key={key}",
        "--version-id=",
        "--etag=",
    ]
    assert not canary.exists()
    assert agent.run_once() == []


def test_commands_for_other_instances_are_not_run(
    ssm: Any, submit_document: str, env: dict[str, str], tmp_path: Path
) -> None:
    # Managed-instance ids, not EC2 ones: moto 5.2's SendCommand adds every EC2
    # instance of the region to every command's InstanceIds (it expands an
    # empty Targets list to "all reservations"), so between two EC2 instances
    # the emulator itself says the command is for both.
    mine, other = (f"mi-{uuid.uuid4().hex[:17]}" for _ in range(2))
    ssm.send_command(
        DocumentName=submit_document,
        InstanceIds=[other],
        Parameters={"Bucket": ["processor-input"], "Key": ["theirs.csv"]},
    )
    agent = LocalSsmAgent(ssm, mine, env=env, work_dir=tmp_path / "work")
    assert agent.run_once() == []
    assert not (tmp_path / "argv").exists()

    ssm.send_command(
        DocumentName=submit_document,
        InstanceIds=[mine],
        Parameters={"Bucket": ["processor-input"], "Key": ["mine.csv"]},
    )
    (result,) = agent.run_once()
    assert result.status == "Success", result.stderr
    assert _argv(tmp_path)[2] == "--key=mine.csv"


def test_parameter_failing_its_pattern_is_rejected(
    endpoint: str, ssm: Any, submit_document: str, env: dict[str, str], tmp_path: Path
) -> None:
    instance_id = _instance_id(endpoint)
    # The emulator accepts what the real SendCommand would refuse.
    ssm.send_command(
        DocumentName=submit_document,
        InstanceIds=[instance_id],
        Parameters={"Bucket": ["Bad_Bucket"], "Key": ["a.csv"]},
    )
    agent = LocalSsmAgent(ssm, instance_id, env=env, work_dir=tmp_path / "work")

    (result,) = agent.run_once()

    assert result.status == "InvalidParameters"
    assert result.error is not None and "'Bucket'" in result.error
    assert "allowed pattern" in result.error
    assert result.exit_code is None
    assert not (tmp_path / "argv").exists()
