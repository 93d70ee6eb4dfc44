"""`processor local` (the whole stack on the embedded emulator) as a child process, always stopped."""

from __future__ import annotations

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
from botocore.config import Config

from tests.support.emulator import CREDENTIALS
from tests.support.waiting import cpu_seconds, wait_until

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
