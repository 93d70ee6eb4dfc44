"""The client half of the control API (worker.daemon.control): one request, one reply.

Stdlib only and apart from the server, which needs ``socketserver`` and
``threading``: ``processorctl`` imports this and must start fast.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from worker.errors import ControlError

#: How long an "overloaded" reply (every control connection taken) is retried.
BUSY_RETRY_S = 10.0


def request(path: Path, op: str, *, timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
    """Send one request to the daemon and return its reply; ControlError if unreachable.

    An "overloaded" reply (the daemon serves a bounded number of connections at
    once) is retried for up to ``min(BUSY_RETRY_S, 2 x timeout)``.
    """
    deadline = time.monotonic() + min(BUSY_RETRY_S, 2 * timeout)
    while True:
        reply = _request_once(path, op, timeout, fields)
        overloaded = reply.get("ok") is False and reply.get("overloaded") is True
        if not overloaded or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "request failed")))
    return reply


def _request_once(path: Path, op: str, timeout: float, fields: dict[str, Any]) -> dict[str, Any]:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            try:
                sock.sendall(json.dumps({"op": op, **fields}).encode() + b"\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # it answered and hung up before reading (overloaded): read that answer
            data = b""
            while not data.endswith(b"\n"):
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        raise ControlError(f"daemon not reachable on {path}: {exc.strerror or exc}") from exc
    try:
        reply: dict[str, Any] = json.loads(data)
    except ValueError as exc:
        raise ControlError(f"daemon sent an unreadable reply on {path}") from exc
    if not isinstance(reply, dict):
        raise ControlError(f"daemon sent an unreadable reply on {path}")
    return reply


def wake(path: Path) -> bool:
    """Tell the daemon new work is queued; False (and nothing else) when it is not running.

    Best effort on purpose: the job is already committed to the ledger, and a
    daemon that is down picks it up when it starts.
    """
    try:
        request(path, "wake", timeout=1.0)
    except ControlError:
        return False
    return True
