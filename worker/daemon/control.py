"""The daemon's control API on a Unix socket: one JSON request, one JSON reply.

Requests are ``{"op": NAME, ...}`` on one line; replies are ``{"ok": true, ...}``
or ``{"ok": false, "error": "..."}``. The socket is created mode 0660 so only
root and the service's group reach it. The daemon's ops (``ping``, ``wake``,
``status``, ``cancel``) are in worker.daemon.handlers.

It cannot be starved: a connection has ``READ_TIMEOUT_S`` to send its line,
and at most ``MAX_CONNECTIONS`` are served at once (one thread each). When
all are taken, a new connection evicts the one that has waited longest for
its request line (an idle or stuck client: a real request is one short line),
so a newcomer is served at once; only when none is idle does it get
``{"ok": false, "overloaded": true, ...}`` (the client retries it for a few
seconds). Idle clients can hold neither the threads nor the descriptors. A client that hangs up
early, times out or sends garbage costs one structured log line, never a
traceback.

This is the server. The client half (``request``, ``wake``) lives in
worker.ctl.control_client, so that processorctl can import it without
``socketserver``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from worker.errors import ControlError

__all__ = ["MAX_CONNECTIONS", "MAX_REQUEST_BYTES", "READ_TIMEOUT_S", "ControlServer", "Handler"]

#: Largest request accepted, in bytes: requests are small JSON objects.
MAX_REQUEST_BYTES = 64 * 1024

#: How long a connection may take to send its request line (and to take the reply).
READ_TIMEOUT_S = 3.0

#: Connections served at once; one more is answered "busy" and closed.
MAX_CONNECTIONS = 64

#: The listen backlog (socketserver's default is 5): a burst of clients is accepted, not stalled.
LISTEN_BACKLOG = 128

_BUSY = json.dumps({"ok": False, "overloaded": True,
                    "error": f"busy: {MAX_CONNECTIONS} control connections open; try again"}).encode() + b"\n"



class _StdlibLog:
    """The default event sink: stdlib logging, one line per event with its fields as JSON.
    The daemon passes its structlog logger instead (this module stays free of structlog,
    which processorctl never imports)."""

    def __init__(self) -> None:
        self._log = logging.getLogger("processor.control")

    def _emit(self, level: int, event: str, fields: Mapping[str, Any]) -> None:
        self._log.log(level, "%s %s", event, json.dumps(fields, default=str),
                      exc_info=bool(fields.get("exc_info")))

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, event, fields)

Handler = Callable[[Mapping[str, Any]], Mapping[str, Any]]


class _RequestHandler(socketserver.StreamRequestHandler):
    server: ControlServer
    timeout = READ_TIMEOUT_S  # StreamRequestHandler.setup applies it to the connection

    def handle(self) -> None:
        log = self.server.log
        try:
            with self.server.reading(self.connection):
                line = self.rfile.readline(MAX_REQUEST_BYTES)
        except TimeoutError:
            log.warning("control_request_dropped", reason=f"no request line within {READ_TIMEOUT_S}s")
            return
        except OSError as exc:
            log.warning("control_request_dropped", reason=f"read failed: {exc}")
            return
        if self.server.evicted(self.connection):
            log.info("control_request_dropped",
                     reason="evicted: no request line while every connection was taken")
            return
        if not line:
            log.info("control_request_dropped", reason="the client hung up before sending a request")
            return
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
            log.warning("control_request_malformed", error=str(exc), size=len(line))
        except Exception as exc:  # noqa: BLE001 - a bad op must not kill the server
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            log.error("control_request_failed", error=reply["error"])
        try:
            self.wfile.write(json.dumps(reply).encode() + b"\n")
        except OSError as exc:
            log.info("control_request_dropped", reason=f"the client left before the reply: {exc}")


class ControlServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, path: Path, handlers: Mapping[str, Handler],
                 max_connections: int = MAX_CONNECTIONS, log: Any = None) -> None:
        self.handlers = dict(handlers)
        #: Where dropped and refused connections are logged (``.info/.warning/.error(event, **fields)``).
        self.log = log if log is not None else _StdlibLog()
        self._open = threading.BoundedSemaphore(max_connections)
        #: Connections still waiting for their request line, oldest first (evicted first).
        self._reading: dict[int, socket.socket] = {}
        self._evicted: set[int] = set()
        self._reading_lock = threading.Lock()
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(path)
        old_umask = os.umask(0o117)
        try:
            super().__init__(str(path), _RequestHandler)
        finally:
            os.umask(old_umask)
        self._thread: threading.Thread | None = None

    @contextmanager
    def reading(self, connection: socket.socket) -> Iterator[None]:
        """While a handler waits for its request line, its connection may be evicted."""
        key = id(connection)
        with self._reading_lock:
            self._reading[key] = connection
        try:
            yield
        finally:
            with self._reading_lock:
                self._reading.pop(key, None)

    def evicted(self, connection: socket.socket) -> bool:
        """Whether ``connection`` was evicted while it read (asked once, right after the read)."""
        with self._reading_lock:
            if id(connection) in self._evicted:
                self._evicted.discard(id(connection))
                return True
        return False

    def _evict_oldest(self) -> bool:
        """Hang up on the connection that has waited longest for its line; False if none waits."""
        with self._reading_lock:
            if not self._reading:
                return False
            key, oldest = next(iter(self._reading.items()))
            del self._reading[key]
            self._evicted.add(key)
        try:
            oldest.shutdown(socket.SHUT_RDWR)  # its readline returns at once; its thread ends
        except OSError:
            pass
        self.log.info("control_connection_evicted", reason="oldest idle connection, to serve a new one")
        return True

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection in a thread of its own, evicting the oldest idle one when all
        are taken, or say "busy" when none is idle."""
        admitted = self._open.acquire(blocking=False)
        if not admitted and self._evict_oldest():
            admitted = self._open.acquire(timeout=1.0)
        if not admitted:
            try:
                request.setblocking(False)
                request.send(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            self.log.warning("control_connection_refused", reason="busy", max_connections=MAX_CONNECTIONS)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._open.release()  # no thread was started to release it
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._open.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One structured line instead of socketserver's traceback on stderr."""
        self.log.warning("control_connection_error", exc_info=True)

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
