"""sd_notify on both backends against a datagram socket the test binds as ``$NOTIFY_SOCKET``.

systemd-python's ``systemd.daemon.notify`` (libsystemd's sd_notify) honours
``$NOTIFY_SOCKET`` like the builtin sender, so both run in this process and
must put the same text on the wire.
"""

from __future__ import annotations

import importlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.support.systemd_backends import BACKENDS, require_library
from tests.support.tools import in_ci
from tests.support.waiting import wait_until
from worker.telemetry import systemd


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    name = str(request.param)
    if name == systemd.LIBRARY:
        require_library()
    monkeypatch.setattr(systemd, "BACKEND", name)
    return name


@pytest.fixture
def notify_socket(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = str(short_tmp / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    try:
        yield sock
    finally:
        sock.close()


def test_lifecycle_messages_arrive_verbatim(backend: str, notify_socket: socket.socket) -> None:
    assert systemd.ready("0 running, 0 queued") is True
    assert notify_socket.recv(4096).decode() == (
        f"READY=1\nSTATUS=0 running, 0 queued\nMAINPID={os.getpid()}")
    assert systemd.status("1 running") is True
    assert notify_socket.recv(4096) == b"STATUS=1 running"
    assert systemd.stopping("draining: 1 running") is True
    assert notify_socket.recv(4096) == b"STOPPING=1\nSTATUS=draining: 1 running"
    assert systemd.watchdog() is True
    assert notify_socket.recv(4096) == b"WATCHDOG=1"


def test_an_abstract_notify_socket_is_reached(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"processor-test-{os.getpid()}-{backend}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.watchdog() is True
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_outside_systemd_it_is_a_quiet_false(
    backend: str, short_tmp: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.ready("x") is False
    # A NOTIFY_SOCKET that is gone (the manager restarted): False, never an exception.
    monkeypatch.setenv("NOTIFY_SOCKET", str(short_tmp / "gone.sock"))
    assert systemd.status("x") is False


def test_the_library_is_the_default_where_importable() -> None:
    require_library()
    assert systemd.BACKEND == systemd.LIBRARY
    assert systemd.notifier() is systemd.library_notify


def test_ci_has_systemd_python() -> None:
    """CI installs libsystemd-dev and the `systemd` extra: the library must import there."""
    if not in_ci():
        pytest.skip("only enforced under CI=true")
    daemon = importlib.import_module("systemd.daemon")  # fails the test if it does not import
    journal = importlib.import_module("systemd.journal")
    assert callable(daemon.notify) and callable(journal.sendv)


def test_an_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="'libsystemd'"):
        systemd.notifier("libsystemd")


def test_the_daemon_says_ready_and_names_its_backend(
    notify_socket: socket.socket, short_tmp: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Builtin only: libsystemd blocks on a full queue while holding the GIL, so a
    # reader thread in this very process could deadlock with it (PID 1 is another
    # process). The library's daemon path is covered by tests/system.
    backend = systemd.BUILTIN
    monkeypatch.setattr(systemd, "BACKEND", backend)
    from tests.support.daemon_thread import running_daemon

    # Read every datagram as PID 1 does: the daemon notifies on each loop turn,
    # and a sender facing a full queue blocks (libsystemd's while holding the GIL).
    received: list[str] = []
    done = threading.Event()

    def read() -> None:
        notify_socket.settimeout(0.2)
        while not done.is_set():
            try:
                received.append(notify_socket.recv(4096).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        with capture_logs() as events, running_daemon(short_tmp):
            wait_until(lambda: any(m.startswith("READY=1") for m in received), stall_s=20,
                       interval=0.01, describe="the daemon never sent READY=1")
    finally:
        done.set()
        reader.join(10)
    ready = next(m for m in received if m.startswith("READY=1"))
    assert ready.startswith("READY=1\nSTATUS=0 running, 0 queued"), ready
    started = [e for e in events if e["event"] == "daemon_started"]
    assert started and started[0].get("systemd_backend") == backend, events[:5]
