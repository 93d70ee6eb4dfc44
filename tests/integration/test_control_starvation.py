"""The control socket cannot be starved (issue 19): 1,100 clients that connect and never
finish a line once took all 1,024 descriptors of the daemon (systemd's default soft limit),
`processorctl status` said "not reachable" and a job submitted meanwhile failed for good."""

from __future__ import annotations

import json
import os
import resource
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import daemon, log_events, processorctl, upload_and_submit, wait_state, write_config
from tests.support.emulator import with_buckets
from tests.support.waiting import wait_until
from worker.ctl.control_client import request

IN, OUT = "starve-in", "starve-out"
IDLE_CLIENTS = 1100


@pytest.fixture
def s3(aws: Callable[[str], Any]) -> Any:
    return with_buckets(aws("s3"), IN, OUT)


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
    clients: list[socket.socket] = []
    with daemon(config, path, preexec_fn=_limit_descriptors) as proc:
        try:
            for n in range(IDLE_CLIENTS):
                clients.append(_idle_client(path))
                if n == IDLE_CLIENTS // 2:  # jobs keep flowing while the clients pile up
                    during = upload_and_submit(s3, config, IN, "during.txt", b"a,b\n1,2\n")
            # All of them still connected (from this side): status answers, jobs run.
            status = processorctl(config, "status", "--json")
            assert status.returncode == 0, status.stderr
            assert json.loads(status.stdout)["daemon"]["pid"] == proc.pid
            after = upload_and_submit(s3, config, IN, "after.txt", b"a,b\n3,4\n")
            for job_id in (during, after):
                assert wait_state(config, job_id, {"succeeded", "failed"})["state"] == "succeeded"
            descriptors = len(os.listdir(f"/proc/{proc.pid}/fd"))
            assert descriptors < 512, f"the daemon holds {descriptors} descriptors"
        finally:
            for sock in clients:
                sock.close()
        proc.terminate()  # a clean stop (the block's end would kill it): no traceback on the way out
        proc.wait(timeout=30)
    events = [line["event"] for line in log_events(config)]
    # The idle clients were evicted to serve newcomers (and said so, one line each).
    assert "control_connection_evicted" in events and "control_request_dropped" in events
    assert "Traceback" not in (short_tmp / "daemon.stderr").read_text()


def test_a_malformed_request_gets_an_error_reply_and_one_log_line(short_tmp: Path) -> None:
    from worker.daemon.control import ControlServer

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

    from worker.daemon.control import ControlServer

    release, running = threading.Event(), threading.Event()

    def slow(_request: Any) -> dict[str, Any]:
        running.set()
        release.wait(10)
        return {}

    server = ControlServer(short_tmp / "c.sock", {"slow": slow, "status": lambda _: {"busy": 2}},
                           max_connections=1)
    server.start()
    try:
        holder = threading.Thread(target=lambda: request(short_tmp / "c.sock", "slow", timeout=10))
        holder.start()
        # In its handler, not merely connected: a connection whose request is not read yet
        # is idle, and a newcomer may evict it (the first test), which is not this case.
        wait_until(running.is_set, stall_s=10, describe="the slow request never started")
        assert server._open._value == 0  # type: ignore[attr-defined]  # its one connection taken
        threading.Timer(0.5, release.set).start()
        # Overloaded until the slow request ends: retried, then answered.
        assert request(short_tmp / "c.sock", "status", timeout=5) == {"ok": True, "busy": 2}
        assert release.is_set()  # it could only be answered once the slot was free
        holder.join(timeout=10)
    finally:
        release.set()
        server.stop()
