"""Shared fixtures: the emulator on loopback, config files, processes that are always stopped."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

REPO = Path(__file__).resolve().parents[1]
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}


#: Facts tests want in every CI log (exposure score, verify result …), printed at the end.
REPORT: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if REPORT:
        terminalreporter.section("processor facts")
        for line in REPORT:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """One moto server on 127.0.0.1 (an ephemeral port) for the whole session."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request is noise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], Any]]:
    """A factory of boto3 clients on the emulator, with its state reset after the test."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)

    def client(service: str) -> Any:
        return boto3.session.Session(region_name="us-east-1").client(
            service, endpoint_url=moto_endpoint, config=Config(s3={"addressing_style": "path"})
        )

    yield client
    urllib.request.urlopen(
        urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST"), timeout=10
    ).close()


#: The bundled summariser, as the processing command of test daemons.
DEFAULT_COMMAND = [sys.executable, "-m", "worker.examples.summarize", "{input}", "{output_dir}"]


def write_config(
    directory: Path, *, output_bucket: str = "out", endpoint: str = "", command: list[str] | None = None,
    **processing: Any,
) -> Path:
    """A processor.toml whose state lives under ``directory``."""
    state = directory / "state"
    lines = [
        "[s3]", f"output_bucket = {json.dumps(output_bucket)}", f"endpoint_url = {json.dumps(endpoint)}",
        "[processing]",
        f"command = {json.dumps(command or DEFAULT_COMMAND)}",
        *(f"{k} = {json.dumps(v)}" for k, v in processing.items()),
        "[paths]", f"state_dir = {json.dumps(str(state))}",
        f"socket = {json.dumps(str(directory / 'p.sock'))}",
        "[logging]", "journald = false",
    ]
    path = directory / "processor.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temp dir with a short path (Unix socket paths are limited to 107 bytes)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pt-") as name:
        yield Path(name)


def processorctl(config: Path, *args: str, env: dict[str, str] | None = None,
                 timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run the real processorctl console script."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "processorctl"), "--config", str(config), *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )
