"""sd_notify glue: READY/STATUS/STOPPING/WATCHDOG, silently absent outside systemd.

systemd-python (``systemd.daemon.notify``, which honours ``$NOTIFY_SOCKET``)
is used where importable: it is installed with the ``systemd`` extra on
instances and in CI. Where it cannot be imported (it is compiled against
libsystemd, which a host may lack) the datagram is sent directly to
``$NOTIFY_SOCKET`` instead -- the protocol is one line of text -- so the daemon
behaves the same with or without it. ``BACKEND`` names the one in use; the
daemon logs it in ``daemon_started``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

try:  # optional at run time
    from systemd import daemon as _sd_daemon
    from systemd import journal as _sd_journal  # noqa: F401 - BACKEND needs both halves
except ImportError:  # pragma: no cover - depends on the host
    _sd_daemon = None

#: Name of the sd_notify/journald implementation used by a backend choice.
LIBRARY = "systemd-python"
BUILTIN = "builtin"

#: The implementation this process uses: systemd-python where importable.
BACKEND = LIBRARY if _sd_daemon is not None else BUILTIN


def library_available() -> bool:
    """Whether systemd-python (``systemd.daemon`` and ``systemd.journal``) could be imported."""
    return _sd_daemon is not None


def raw_notify(message: str) -> bool:
    """The builtin sd_notify: one datagram to ``$NOTIFY_SOCKET`` (a path or ``@abstract``)."""
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


def library_notify(message: str) -> bool:
    """systemd-python's sd_notify; False outside systemd, like the builtin one."""
    if _sd_daemon is None:
        raise RuntimeError("systemd-python is not importable")
    try:
        return bool(_sd_daemon.notify(message))
    except OSError:  # a NOTIFY_SOCKET that is gone: the same quiet False as raw_notify
        return False


def notifier(backend: str | None = None) -> Callable[[str], bool]:
    """The notify function of ``backend`` (``LIBRARY`` or ``BUILTIN``; None: ``BACKEND``)."""
    backend = BACKEND if backend is None else backend
    if backend == LIBRARY:
        return library_notify
    if backend == BUILTIN:
        return raw_notify
    raise ValueError(f"unknown systemd backend {backend!r}: expected {LIBRARY!r} or {BUILTIN!r}")


def notify(message: str) -> bool:
    """Send one sd_notify message; False (and nothing else) when not under systemd."""
    return notifier()(message)


def ready(status: str) -> bool:
    return notify(f"READY=1\nSTATUS={status}\nMAINPID={os.getpid()}")


def status(text: str) -> bool:
    return notify(f"STATUS={text}")


def stopping(text: str) -> bool:
    return notify(f"STOPPING=1\nSTATUS={text}")


def watchdog() -> bool:
    return notify("WATCHDOG=1")
