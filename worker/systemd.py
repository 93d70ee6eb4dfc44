"""sd_notify glue: READY/STATUS/STOPPING/WATCHDOG, silently absent outside systemd.

systemd-python is used where importable; otherwise the datagram is sent
directly to ``$NOTIFY_SOCKET`` (the protocol is one line of text), so the
daemon behaves the same with or without the optional dependency.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

try:  # optional at run time
    from systemd import daemon as _sd_daemon
except ImportError:  # pragma: no cover - depends on the host
    _sd_daemon = None


def _raw_notify(message: str) -> bool:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError:
        return False
    return True


def _notifier() -> Callable[[str], bool]:
    if _sd_daemon is not None:
        return lambda message: bool(_sd_daemon.notify(message))
    return _raw_notify


def notify(message: str) -> bool:
    """Send one sd_notify message; False (and nothing else) when not under systemd."""
    return _notifier()(message)


def ready(status: str) -> bool:
    return notify(f"READY=1\nSTATUS={status}\nMAINPID={os.getpid()}")


def status(text: str) -> bool:
    return notify(f"STATUS={text}")


def stopping(text: str) -> bool:
    return notify(f"STOPPING=1\nSTATUS={text}")


def watchdog() -> bool:
    return notify("WATCHDOG=1")
