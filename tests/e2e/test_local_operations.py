"""DEPLOY.md's verification and the operator documents, rehearsed on `processor local`: SSM
documents sent to its SSM endpoint run through the local agent and return what really ran;
`processorctl reconcile` works from a shell that sourced the stack's env.sh."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.support.local import Running, running_local
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running_local(tmp_path_factory.mktemp("ops")) as running:
        yield running


def shell_env(stack: Running) -> dict[str, str]:
    """The environment after `. env.sh`, read from the file the banner names."""
    path = Path(re.search(r"your shell +\. (\S+)", stack.output()).group(1))  # type: ignore[union-attr]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PROCESSOR_"))}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            for assignment in shlex.split(line[len("export "):]):
                name, _, value = assignment.partition("=")
                env[name] = value
    return env


def ssm_client(env: dict[str, str]) -> Any:
    return boto3.session.Session(aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                                 aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                                 region_name=env["AWS_DEFAULT_REGION"]).client(
        "ssm", endpoint_url=env["AWS_ENDPOINT_URL_SSM"])


def run_document(ssm: Any, instance: str, name: str, **parameters: str) -> dict[str, Any]:
    command_id = ssm.send_command(DocumentName=name, InstanceIds=[instance],
                                  Parameters={k: [v] for k, v in parameters.items()})["Command"]["CommandId"]
    seen: dict[str, Any] = {}

    def finished() -> dict[str, Any] | None:
        seen.update(ssm.get_command_invocation(CommandId=command_id, InstanceId=instance))
        return dict(seen) if seen["Status"] not in ("Pending", "InProgress") else None

    result = wait_until(finished, stall_s=60, progress=lambda: time.monotonic() // 30,
                        describe=lambda: f"{name} still {seen.get('Status')}")
    assert result is not None
    return result


def test_the_banner_names_every_endpoint(stack: Running) -> None:
    out = stack.output()
    assert f"S3, SQS endpoint   {stack.endpoint}" in out
    assert re.search(r"SSM endpoint +http://127\.0\.0\.1:\d+", out)
    assert "processor-{SubmitDocument,StatusDocument" in out


def test_status_and_reconcile_documents_return_what_really_ran(stack: Running) -> None:
    env = shell_env(stack)
    stack.client("s3").put_object(Bucket="processor-input", Key="verify/sample.csv", Body=b"a,b\n1,2\n")
    stack.wait_for("succeeded: s3://processor-input/verify/sample.csv")
    ssm = ssm_client(env)
    status = run_document(ssm, env["INSTANCE"], "processor-StatusDocument", Format="table", Show="both")
    assert status["Status"] == "Success" and status["ResponseCode"] == 0, status
    assert "daemon: running" in status["StandardOutputContent"]
    assert "verify/sample.csv" in status["StandardOutputContent"]
    dry = run_document(ssm, env["INSTANCE"], "processor-ReconcileDocument", OlderThan="0s", DryRun="true")
    assert dry["Status"] == "Success", dry
    assert "with a result" in dry["StandardOutputContent"]
    # The fleet tag targets every instance, as on AWS; the invocation list carries the output.
    command_id = ssm.send_command(
        DocumentName="processor-StatusDocument", Parameters={"Format": ["json"], "Show": ["status"]},
        Targets=[{"Key": "tag:processor:fleet", "Values": ["processor"]}])["Command"]["CommandId"]

    def listed() -> list[dict[str, Any]] | None:
        found = ssm.list_command_invocations(CommandId=command_id, Details=True)["CommandInvocations"]
        return found if found and found[0]["Status"] == "Success" else None

    invocations = wait_until(listed, stall_s=60, describe="the targeted command never finished")
    assert invocations is not None
    assert invocations[0]["InstanceId"] == env["INSTANCE"]
    assert '"daemon"' in invocations[0]["CommandPlugins"][0]["Output"]


def test_processorctl_reconcile_works_from_a_shell_with_env_sh(stack: Running) -> None:
    env = shell_env(stack)
    ctl = str(Path(sys.executable).parent / "processorctl")
    done = subprocess.run([ctl, "reconcile", "--dry-run"], capture_output=True, text=True, timeout=120,
                          env=env)
    assert done.returncode == 0, done.stderr
    assert "listed" in done.stdout and "s3://processor-input/" in done.stdout


def test_the_drain_document_stops_the_daemon_and_status_then_fails_with_3(stack: Running) -> None:
    env = shell_env(stack)
    ssm = ssm_client(env)
    stack.client("s3").put_object(Bucket="processor-input", Key="verify/before-drain.csv", Body=b"a\n1\n")
    stack.wait_for("succeeded: s3://processor-input/verify/before-drain.csv")
    drained = run_document(ssm, env["INSTANCE"], "processor-DrainDocument")
    assert drained["Status"] == "Success", drained
    assert "drained and stopped" in drained["StandardOutputContent"]
    assert "daemon: not running" in drained["StandardOutputContent"]
    status = run_document(ssm, env["INSTANCE"], "processor-StatusDocument", Format="table", Show="both")
    assert status["Status"] == "Failed" and status["ResponseCode"] == 3, status
    assert "verify/before-drain.csv" in status["StandardOutputContent"]  # the jobs are still listed
