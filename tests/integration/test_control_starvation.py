"""The control socket cannot be starved (issue 19): 1,100 clients that connect and never
finish a line once took all 1,024 descriptors of the daemon (systemd's default soft limit),
`processorctl status` said "not reachable" and a job submitted meanwhile failed for good."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import processorctl, wait_state, write_config
from tests.support.emulator import CREDENTIALS
from tests.support.waiting import wait_until
from worker.ctl.control_client import request
from worker.errors import ControlError

IN, OUT = "starve-in", "starve-out"
IDLE_CLIENTS = 1100


@pytest.fixture
def s3(aws: Callable[[str], Any]) -> Any:
    client = aws("s3")
    client.create_bucket(Bucket=IN)
    client.create_bucket(Bucket=OUT)
    return client


def _limit_descriptors() -> None:  # in the daemon's child, before exec: systemd's default soft limit
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def _idle_client(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Blocking: a Unix socket's connect with a timeout fails at once (EAGAIN) on a full backlog.
    sock.connect(str(path))
    sock.settimeout(30)
    try:
        sock.sendall(b'{"op": "sta')  # half a request, never finished
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused as busy: the daemon has closed its end already
    return sock


def test_idle_connections_neither_starve_status_nor_fail_jobs(
    s3: Any, moto_endpoint: str, short_tmp: Path
) -> None:
    config = write_config(short_tmp, output_bucket=OUT, endpoint=moto_endpoint)
    path = short_tmp / "p.sock"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < IDLE_CLIENTS + 200:
        pytest.skip(f"this test needs {IDLE_CLIENTS + 200} descriptors; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, IDLE_CLIENTS + 200), hard))
    err = (short_tmp / "daemon.stderr").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "run", "--config", str(config)],
        env={**os.environ, **CREDENTIALS}, stdout=subprocess.DEVNULL, stderr=err,
        preexec_fn=_limit_descriptors,
    )
    clients: list[socket.socket] = []
    try:
        def answers() -> bool:
            assert proc.poll() is None, (short_tmp / "daemon.stderr").read_text()[-3000:]
            try:
                request(path, "ping", timeout=1)
                return True
            except ControlError:
                return False

        wait_until(answers, stall_s=60, describe="daemon did not answer on its socket")
        for n in range(IDLE_CLIENTS):
            clients.append(_idle_client(path))
            if n == IDLE_CLIENTS // 2:  # jobs keep flowing while the clients pile up
                etag = s3.put_object(Bucket=IN, Key="during.txt", Body=b"a,b\n1,2\n")["ETag"]
                done = processorctl(config, "submit", "--bucket", IN, "--key=during.txt", f"--etag={etag}")
                assert done.returncode == 0, done.stderr
                during = done.stdout.strip()
        # All of them still connected (from this side): status answers, jobs run.
        status = processorctl(config, "status", "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["daemon"]["pid"] == proc.pid
        etag = s3.put_object(Bucket=IN, Key="after.txt", Body=b"a,b\n3,4\n")["ETag"]
        done = processorctl(config, "submit", "--bucket", IN, "--key=after.txt", f"--etag={etag}")
        assert done.returncode == 0, done.stderr
        for job_id in (during, done.stdout.strip()):
            assert wait_state(config, job_id, {"succeeded", "failed"})["state"] == "succeeded"
        descriptors = len(os.listdir(f"/proc/{proc.pid}/fd"))
        assert descriptors < 512, f"the daemon holds {descriptors} descriptors"
    finally:
        for sock in clients:
            sock.close()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        err.close()
    events = [json.loads(line)["event"] for line in
              (short_tmp / "state" / "logs" / "processor.jsonl").read_text().splitlines()]
    # The idle clients were evicted to serve newcomers (and said so, one line each).
    assert "control_connection_evicted" in events and "control_request_dropped" in events
    assert "Traceback" not in (short_tmp / "daemon.stderr").read_text()


def test_a_malformed_request_gets_an_error_reply_and_one_log_line(short_tmp: Path) -> None:
    from worker.control_server import ControlServer

    lines: list[tuple[str, dict[str, Any]]] = []

    class Sink:
        def info(self, event: str, **fields: Any) -> None:
            lines.append((event, fields))

        warning = error = info

    server = ControlServer(short_tmp / "c.sock", {"ping": lambda _: {}}, log=Sink())
    server.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(short_tmp / "c.sock"))
            sock.sendall(b"not json\n")
            reply = json.loads(sock.makefile("rb").readline())
        assert reply["ok"] is False and "bad request" in reply["error"]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(short_tmp / "c.sock"))  # and hang up at once
        wait_until(lambda: len(lines) >= 2, stall_s=10, describe="no log line for the early hang-up")
        assert [event for event, _ in lines] == ["control_request_malformed", "control_request_dropped"]
    finally:
        server.stop()


def test_an_overloaded_server_is_retried_and_a_busy_field_is_just_data(short_tmp: Path) -> None:
    """With every connection in a slow handler (none idle to evict), a newcomer is told
    "overloaded" and the client retries until one frees; a reply that merely has a "busy"
    field (status: busy slots) is an answer, not a reason to retry."""
    import threading

    from worker.control_server import ControlServer

    release = threading.Event()

    def slow(_request: Any) -> dict[str, Any]:
        release.wait(10)
        return {}

    server = ControlServer(short_tmp / "c.sock", {"slow": slow, "status": lambda _: {"busy": 2}},
                           max_connections=1)
    server.start()
    try:
        holder = threading.Thread(target=lambda: request(short_tmp / "c.sock", "slow", timeout=10))
        holder.start()
        wait_until(lambda: server._open._value == 0, stall_s=10,  # type: ignore[attr-defined]
                   describe="the slow request never started")
        threading.Timer(0.5, release.set).start()
        # Overloaded until the slow request ends: retried, then answered.
        assert request(short_tmp / "c.sock", "status", timeout=5) == {"ok": True, "busy": 2}
        assert release.is_set()  # it could only be answered once the slot was free
        holder.join(timeout=10)
    finally:
        release.set()
        server.stop()
