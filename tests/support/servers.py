"""Tiny loopback servers for tests: a recording HTTP endpoint, an IMDSv2 stub, a black hole."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


#: Answers a request: (status, content type, body).
Reply = Callable[[Seen], tuple[int, str, bytes]]


class LoopbackHTTP:
    """A threading HTTP server on 127.0.0.1 (a free port) serving from a daemon thread
    while the ``with`` block lasts; subclasses build their handler and call ``_serve``."""

    _server: ThreadingHTTPServer
    _thread: threading.Thread

    def _serve(self, handler: type[BaseHTTPRequestHandler],
               server: type[ThreadingHTTPServer] = ThreadingHTTPServer) -> None:
        self._server = server(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


class Recorder(LoopbackHTTP):
    """An HTTP server on 127.0.0.1 that records every request and answers with ``reply``."""

    def __init__(self, reply: Reply) -> None:
        self.seen: list[Seen] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: object) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                            self.rfile.read(length) if length else b"")
                recorder.seen.append(seen)
                status, kind, body = reply(seen)
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = _any

        self._serve(Handler)


class Imds(LoopbackHTTP):
    """The EC2 instance metadata service as IMDSv2 serves it, on 127.0.0.1.

    PUT /latest/api/token (with a TTL header of 1-21600 s) hands out a token;
    GETs under /latest/meta-data/ answer 401 without a live token, 404 for an
    item not in ``items``, else its value. Tests change ``items`` while it runs
    (a Spot notice appears), ``revoke()`` tokens, or set ``status`` to answer
    every request with an error (IMDS down).
    """

    def __init__(self, items: dict[str, str]) -> None:
        self.items = dict(items)
        self.status: int | None = None
        #: (method, path, token sent or "") of every request, in order.
        self.requests: list[tuple[str, str, str]] = []
        self._tokens: dict[str, float] = {}
        self._serial = itertools.count(1)
        imds = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: object) -> None:
                pass

            def _reply(self, status: int, body: str = "") -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:
                imds.requests.append(("PUT", self.path, ""))
                ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
                if imds.status is not None:
                    return self._reply(imds.status)
                if self.path != "/latest/api/token":
                    return self._reply(404)
                if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                    return self._reply(400)
                token = f"tok-{next(imds._serial)}"
                imds._tokens[token] = time.monotonic() + int(ttl)
                self._reply(200, token)

            def do_GET(self) -> None:
                token = self.headers.get("X-aws-ec2-metadata-token", "")
                imds.requests.append(("GET", self.path, token))
                if imds.status is not None:
                    return self._reply(imds.status)
                if imds._tokens.get(token, 0.0) < time.monotonic():
                    return self._reply(401)  # IMDSv2 only: no live token, no answer
                prefix = "/latest/meta-data/"
                value = imds.items.get(self.path[len(prefix):]) if self.path.startswith(prefix) else None
                if value is None:
                    return self._reply(404)
                self._reply(200, value)

        self._serve(Handler)

    def revoke(self) -> None:
        """Forget every token (as after a stop and start of the instance)."""
        self._tokens.clear()

    def gets(self, path: str) -> int:
        """How many GETs of /latest/meta-data/<path> it has had so far (answered or refused)."""
        return sum(1 for method, p, _ in list(self.requests) if method == "GET" and p.endswith("/" + path))


@contextmanager
def black_hole() -> Iterator[str]:
    """An endpoint that accepts TCP connections (in the kernel backlog) and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def dead_endpoint() -> str:
    """A loopback port nothing listens on (connection refused at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"
