"""Shared fixtures: the emulator on loopback, short temp dirs, a small tmpfs volume.

Helpers that are not fixtures live in tests/support/ (see its __init__).
"""

from __future__ import annotations

import logging
import os
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

from tests.support.emulator import CREDENTIALS
from tests.support.report import REPORT


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


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temp dir with a short path (Unix socket paths are limited to 107 bytes)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pt-") as name:
        yield Path(name)


@pytest.fixture
def small_volume(short_tmp: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs as the state dir (a disk that fills); skips unless root can mount it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    state = short_tmp / "state"
    state.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(state)],
                             capture_output=True, text=True, timeout=30)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield state
    finally:
        subprocess.run(["umount", "-l", str(state)], capture_output=True, timeout=30)
