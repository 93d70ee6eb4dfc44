"""The daemon's control API on a Unix socket: one JSON request, one JSON reply.

Requests are ``{"op": NAME, ...}`` on one line; replies are ``{"ok": true, ...}``
or ``{"ok": false, "error": "..."}``. The socket is created mode 0660 so only
root and the service's group reach it. Ops: ``ping``, ``wake`` (a job was
submitted), ``status``.

This is the server. The client half (``request``, ``wake``) lives in
worker.ctl.control_client, so that processorctl can import it without
``socketserver``.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from worker.errors import ControlError

__all__ = ["MAX_REQUEST_BYTES", "ControlServer", "Handler"]

#: Largest request accepted, in bytes: requests are small JSON objects.
MAX_REQUEST_BYTES = 64 * 1024

Handler = Callable[[Mapping[str, Any]], Mapping[str, Any]]


class _RequestHandler(socketserver.StreamRequestHandler):
    server: ControlServer

    def handle(self) -> None:
        line = self.rfile.readline(MAX_REQUEST_BYTES)
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                raise ValueError("request must be a JSON object with a string 'op'")
            handler = self.server.handlers.get(request["op"])
            if handler is None:
                reply: Mapping[str, Any] = {"ok": False, "error": f"unknown op {request['op']!r}"}
            else:
                reply = {"ok": True, **handler(request)}
        except ValueError as exc:
            reply = {"ok": False, "error": f"bad request: {exc}"}
        except Exception as exc:  # noqa: BLE001 - a bad op must not kill the server
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        self.wfile.write(json.dumps(reply).encode() + b"\n")


class ControlServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, handlers: Mapping[str, Handler]) -> None:
        self.handlers = dict(handlers)
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(path)
        old_umask = os.umask(0o117)
        try:
            super().__init__(str(path), _RequestHandler)
        finally:
            os.umask(old_umask)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def _remove_stale(path: Path) -> None:
    """Remove a socket left by a dead daemon; refuse if a live one answers."""
    if not path.exists() and not path.is_symlink():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
        return
    finally:
        probe.close()
    raise ControlError(f"another daemon is already listening on {path}")
