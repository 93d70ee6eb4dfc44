"""A fault-injecting HTTP proxy between a client and the emulator, on loopback.

Each request is forwarded unless the fault plan says otherwise: answer 503
SlowDown, 500 InternalError, or drop the connection without a reply. The plan
is a seeded RNG (reproducible) plus an ``outage`` switch that fails every
request while set, and ``truncate_gets``: that many GET replies are cut off
halfway through their body (the headers announce the whole length).
"""

from __future__ import annotations

import http.client
import random
import sys
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from tests.support.servers import LoopbackHTTP

_FAULTS = {
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
    "internal": (500, "InternalError", "We encountered an internal error. Please try again."),
}


class FaultProxy(LoopbackHTTP):
    def __init__(self, upstream: str, *, rate: float = 0.1, seed: int = 7,
                 on_request: Callable[[str, dict[str, str], bytes], None] | None = None) -> None:
        self.upstream = urlsplit(upstream)
        #: Sees every request (method, headers, body) before it is forwarded or failed.
        self.on_request = on_request
        self.rate = rate
        self.outage = threading.Event()
        self.truncate_gets = 0
        self.counts: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: object) -> None:
                pass

            def _any(self) -> None:
                proxy._handle(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                # A client hanging up on a cut-off or dropped reply is the point, not an error.
                if not isinstance(sys.exc_info()[1], ConnectionError):
                    super().handle_error(request, client_address)

        self._serve(Handler, Server)

    def _choose(self) -> str:
        with self._lock:
            if self.outage.is_set():
                fault = "outage"
            elif self._rng.random() < self.rate:
                fault = self._rng.choice(["slowdown", "internal", "drop"])
            else:
                fault = "forward"
            self.counts[fault] += 1
            return fault

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else b""
        if self.on_request is not None:
            self.on_request(req.command, {k.lower(): v for k, v in req.headers.items()}, body)
        fault = self._choose()
        if fault in ("drop",):
            req.close_connection = True
            req.connection.close()
            return
        if fault in _FAULTS or fault == "outage":
            status, code, message = _FAULTS.get(fault, _FAULTS["slowdown"])
            payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                       f"<Message>{message}</Message></Error>").encode()
            req.send_response(status)
            req.send_header("Content-Type", "application/xml")
            req.send_header("Content-Length", str(len(payload)))
            req.end_headers()
            if req.command != "HEAD":
                req.wfile.write(payload)
            return
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        try:
            headers = {k: v for k, v in req.headers.items() if k.lower() != "connection"}
            conn.request(req.command, req.path, body=body, headers=headers)
            reply = conn.getresponse()
            data = reply.read()
            req.send_response(reply.status, reply.reason)
            skip = {"transfer-encoding", "connection", "content-length", "date", "server"}
            for name, value in reply.getheaders():
                if name.lower() not in skip:
                    req.send_header(name, value)
            # A HEAD reply describes the object: keep the upstream length.
            length = reply.getheader("Content-Length", "0") if req.command == "HEAD" else len(data)
            req.send_header("Content-Length", str(length))
            req.end_headers()
            if req.command == "GET" and reply.status in (200, 206) and self._truncate():
                req.wfile.write(data[: len(data) // 2])
                req.wfile.flush()
                req.close_connection = True
                req.connection.shutdown(2)
            elif req.command != "HEAD":
                req.wfile.write(data)
        finally:
            conn.close()

    def _truncate(self) -> bool:
        with self._lock:
            if self.truncate_gets <= 0:
                return False
            self.truncate_gets -= 1
            self.counts["truncated"] += 1
            return True
