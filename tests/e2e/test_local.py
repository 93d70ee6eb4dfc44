"""`processor local` end to end: upload through boto3, results and manifest in the output bucket.

The whole chain is real: moto server over HTTP, S3 -> SQS notification, the
real lambda_handler, the real SSM document run by the local agent,
processorctl, and the daemon as a child process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.emulator import CREDENTIALS
from tests.support.local import PROCESSOR, Running, free_port, running_local
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def local_stack(tmp_path: Path) -> Iterator[Running]:
    with running_local(tmp_path) as running:
        yield running


def wait_for_object(s3: Any, bucket: str, key: str, stall_s: float = 60) -> bytes:
    def fetched() -> bytes | None:
        try:
            return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        except s3.exceptions.NoSuchKey:
            return None

    return wait_until(fetched, stall_s=stall_s, interval=0.2, describe=f"s3://{bucket}/{key} never appeared")


def test_upload_produces_results_and_manifest(local_stack: Running) -> None:
    s3 = local_stack.client("s3")
    body = b"city,visitors\nLyon,120\nKyoto,80\nLima,\n"
    put = s3.put_object(Bucket="processor-input", Key="uploads/city stats+2026.csv", Body=body)
    prefix = "uploads/city stats+2026.csv/"
    manifest = json.loads(wait_for_object(s3, "processor-output", prefix + "_manifest.json"))
    assert manifest["source"]["key"] == "uploads/city stats+2026.csv"
    assert manifest["source"]["etag"] == put["ETag"].strip('"')
    assert manifest["source"]["size"] == len(body)
    summary_key = "uploads/city stats+2026.csv/summary.json"
    assert {o["key"] for o in manifest["outputs"]} == {summary_key, "uploads/city stats+2026.csv/summary.md"}
    summary = json.loads(s3.get_object(Bucket="processor-output", Key=summary_key)["Body"].read())
    visitors = next(c for c in summary["columns"] if c["name"] == "visitors")
    assert summary["rows"] == 3 and visitors["missing"] == 1 and visitors["sum"] == 200
    local_stack.wait_for("succeeded: s3://processor-input/uploads/city stats+2026.csv")
    # A duplicate delivery of the same object version is the same job.
    local_stack.proc.send_signal(signal.SIGTERM)
    assert local_stack.proc.wait(timeout=60) == 0


def test_hostile_key_is_processed_without_running_anything(local_stack: Running, tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    # moto's server normalises pure ".." path segments (real S3 does not), so the
    # traversal here is ".. /"; tests/unit/runner/test_pipeline.py covers "../../" itself.
    key = (f"-rf --help .. /.. /$(touch {canary}); `touch {canary}` | touch {canary} & "
           f"'\"$HOME\" > {canary} * ~ résumé 日本.txt")
    s3 = local_stack.client("s3")
    s3.put_object(Bucket="processor-input", Key=key, Body=b"just some words words\n")
    manifest = json.loads(wait_for_object(s3, "processor-output", key + "/_manifest.json"))
    assert manifest["source"]["key"] == key
    summary = json.loads(s3.get_object(Bucket="processor-output", Key=key + "/summary.json")["Body"].read())
    assert summary["words"] == 4
    assert not canary.exists()
    assert not list(Path("/").glob("pwned")) and not (Path.home() / "pwned").exists()


def test_key_failing_the_key_pattern_travels_as_key_base64_and_is_processed(
    local_stack: Running,
) -> None:
    # A tab is legal in S3 keys; the submit document's Key pattern refuses it, so the
    # Lambda sends KeyBase64 (it used to end as InvalidParameters, with no result at all).
    s3 = local_stack.client("s3")
    s3.put_object(Bucket="processor-input", Key="tab\tkey.txt", Body=b"fine words\n")
    manifest = json.loads(wait_for_object(s3, "processor-output", "tab\tkey.txt/_manifest.json"))
    assert manifest["source"]["key"] == "tab\tkey.txt"
    assert "InvalidParameters" not in local_stack.output()


def test_once_processes_every_sample_and_exits_zero(tmp_path: Path) -> None:
    done = subprocess.run(
        [PROCESSOR, "local", "--once", "--port", str(free_port()), "--state-dir", str(tmp_path / "s")],
        capture_output=True, text=True, timeout=240, cwd=tmp_path, env={**os.environ, **CREDENTIALS},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    samples = sorted(p.name for p in (Path(__file__).parents[2] / "worker/local/samples").iterdir())
    assert len(samples) >= 3
    for name in samples:
        assert f"SUCCEEDED  s3://processor-input/incoming/{name}" in done.stdout
        assert f"s3://processor-output/incoming/{name}/_manifest.json" in done.stdout
    assert f"summary: {len(samples)}/{len(samples)} succeeded" in done.stdout


def test_once_with_a_failing_command_exits_non_zero(tmp_path: Path) -> None:
    done = subprocess.run(
        [PROCESSOR, "local", "--once", "--port", str(free_port()), "--state-dir", str(tmp_path / "s"),
         "--command", f"{sys.executable} -c 'import sys; sys.exit(4)' {{input}}"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path, env={**os.environ, **CREDENTIALS},
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED" in done.stdout and "exited with status 4" in done.stdout


def test_busy_port_is_a_clear_usage_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run([PROCESSOR, "local", "--once", "--port", str(port),
                               "--state-dir", str(tmp_path / "s")],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2 and f"--port {port}" in done.stderr
