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
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from tests.conftest import CREDENTIALS
from tests.waiting import cpu_seconds, wait_until

pytestmark = pytest.mark.e2e

PROCESSOR = str(Path(sys.executable).parent / "processor")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Running:
    proc: subprocess.Popen[str]
    endpoint: str
    lines: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def output(self) -> str:
        with self.lock:
            return "\n".join(self.lines)

    def wait_for(self, text: str, stall_s: float = 60) -> None:
        """Until ``text`` is printed; fails when the output stops growing for ``stall_s``."""
        def seen() -> bool:
            output = self.output()
            assert text in output or self.proc.poll() is None, output
            return text in output

        wait_until(seen, stall_s=stall_s, progress=lambda: len(self.output()),
                   describe=lambda: f"{text!r} not seen in:\n{self.output()}")

    def client(self, service: str) -> Any:
        return boto3.session.Session(region_name="us-east-1", **{
            "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}).client(
            service, endpoint_url=self.endpoint, config=Config(s3={"addressing_style": "path"}))


@pytest.fixture
def local_stack(tmp_path: Path) -> Iterator[Running]:
    with running_local(tmp_path) as running:
        yield running


@contextmanager
def running_local(tmp_path: Path, *args: str) -> Iterator[Running]:
    """`processor local` (without --once) as a child; SIGTERM and wait at the end."""
    port = free_port()
    proc = subprocess.Popen(
        [PROCESSOR, "local", "--port", str(port), "--state-dir", str(tmp_path / "state"), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        env={**os.environ, **CREDENTIALS},
    )
    running = Running(proc, f"http://127.0.0.1:{port}")

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with running.lock:
                running.lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        # Start-up prints nothing until ready and may take minutes on a busy
        # machine: its progress is the stack's CPU time, so only a stack that
        # stopped working (a deadlock, a hung connection) fails here.
        wait_until(lambda: "processor local is ready" in running.output() or proc.poll() is not None,
                   stall_s=60, progress=lambda: (len(running.output()), cpu_seconds(proc.pid)),
                   describe=lambda: f"processor local never became ready:\n{running.output()}")
        assert proc.poll() is None, running.output()
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        reader.join(timeout=10)


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
    # traversal here is ".. /"; tests/unit/test_pipeline.py covers "../../" itself.
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
