"""journald sink: each log event as one journal entry with fields to search by.

``journalctl -u processor JOB_ID=j-…`` finds a job because every entry carries
upper-cased copies of the fixed keys (``JOB_ID``, ``S3_BUCKET``, ``S3_KEY``,
``JOB_STATE``, ``ATTEMPT``, ``EVENT``, ``DURATION_S``, only those present),
``PRIORITY`` from the level and ``SYSLOG_IDENTIFIER=processor``; ``MESSAGE``
is the very JSON line the file sink writes.

How the handler sees the event: it is given the same ``ProcessorFormatter`` as
the other sinks and parses the JSON line it renders. That costs one
``json.loads`` per event, and in exchange treats structlog events and foreign
stdlib records (botocore warnings, tracebacks) alike, after the same
processors, with no second rendering pipeline to keep in step.

Transport: ``systemd.journal.sendv`` (systemd-python, which libsystemd sends
to the fixed ``/run/systemd/journal/socket``) when it is importable and the
default socket is used; otherwise journald's native protocol spoken here over
the datagram socket (``KEY=value`` lines; values holding a newline in the
binary form ``KEY\\n`` + 64-bit little-endian length + value + ``\\n``). The
handler's ``backend`` says which. Both paths send the same fields: ``MESSAGE``
is cut to ``MAX_MESSAGE_BYTES`` on either (the entry then carries
``MESSAGE_TRUNCATED=<original bytes>``; the file sink keeps the whole line),
so one datagram always suffices and what journalctl shows does not depend on
the host having the library. The one difference is back-pressure: the native
socket is non-blocking, so a journald that cannot keep up loses entries
instead of stalling a job, while libsystemd's socket is blocking (with an
8 MiB send buffer) and systemd-python does not release the GIL around it, so a
stalled journald pauses the daemon's threads until it reads again (the
watchdog restarts a daemon stalled past ``WatchdogSec``). Nothing here ever
raises: with no journal (not under systemd) every entry is silently dropped
and counted.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
from collections.abc import Callable, Mapping

from worker.telemetry.systemd import BUILTIN, LIBRARY

try:  # optional at run time
    from systemd import journal as _sd_journal
except ImportError:  # pragma: no cover - depends on the host
    _sd_journal = None

#: journald's native-protocol socket.
JOURNAL_SOCKET = "/run/systemd/journal/socket"

#: Largest MESSAGE sent over the native socket: far below the datagram limit
#: (net.core.wmem_default, ~208 KiB), leaving room for the other fields.
MAX_MESSAGE_BYTES = 48 * 1024

#: SYSLOG_IDENTIFIER of every entry (what `journalctl -t` matches).
IDENTIFIER = "processor"

#: Event keys copied to journal fields, so journalctl can match on them.
FIELDS: Mapping[str, str] = {
    "job_id": "JOB_ID",
    "bucket": "S3_BUCKET",
    "key": "S3_KEY",
    "state": "JOB_STATE",
    "attempt": "ATTEMPT",
    "event": "EVENT",
    "duration_s": "DURATION_S",
}


def priority(levelno: int) -> int:
    """syslog priority of a logging level (journald's PRIORITY field)."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def encode(fields: Mapping[str, str]) -> bytes:
    """One native-protocol datagram: ``KEY=value`` lines, binary-safe where needed."""
    parts: list[bytes] = []
    for name, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            parts.append(name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n")
        else:
            parts.append(name.encode() + b"=" + data + b"\n")
    return b"".join(parts)


def entry(line: str, levelno: int, identifier: str = IDENTIFIER) -> dict[str, str]:
    """The journal fields of one rendered JSON line (MESSAGE stays the whole line)."""
    fields = {"MESSAGE": line, "PRIORITY": str(priority(levelno)), "SYSLOG_IDENTIFIER": identifier}
    try:
        event = json.loads(line)
    except ValueError:
        event = None
    if isinstance(event, dict):
        for key, name in FIELDS.items():
            value = event.get(key)
            if value is not None and value != "":
                fields[name] = value if isinstance(value, str) else json.dumps(value)
    return fields


def stderr_is_journal(environ: Mapping[str, str], fd: int = 2) -> bool:
    """Whether ``fd`` is the stream systemd connected to the journal (``$JOURNAL_STREAM``).

    systemd sets ``JOURNAL_STREAM=<dev>:<inode>`` of the socket it gave the
    service as stdout/stderr; comparing with ``fstat`` tells whether stderr is
    still that socket (not redirected by a wrapper or a shell).
    """
    value = environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError):
        return False


class JournalHandler(logging.Handler):
    """A logging handler writing each record to the journal; never raises, never blocks."""

    def __init__(
        self, socket_path: str | None = None, *, identifier: str = IDENTIFIER,
        backend: str | None = None,
    ) -> None:
        """``socket_path`` None: journald's own socket. ``backend`` None: systemd-python
        where importable and the default socket is used (libsystemd cannot be pointed
        elsewhere), else the builtin native-protocol sender."""
        super().__init__()
        if backend is None:
            backend = LIBRARY if _sd_journal is not None and socket_path is None else BUILTIN
        if backend == LIBRARY and (_sd_journal is None or socket_path is not None):
            raise ValueError("the systemd-python journal backend needs the library importable "
                             "and journald's default socket (socket_path=None)")
        if backend not in (LIBRARY, BUILTIN):
            raise ValueError(f"unknown journal backend {backend!r}: expected {LIBRARY!r} or {BUILTIN!r}")
        self.socket_path = socket_path or JOURNAL_SOCKET
        self.identifier = identifier
        #: Which sender is used: ``"systemd-python"`` or ``"builtin"``.
        self.backend = backend
        #: Entries that could not be delivered (no journal, journald busy or gone).
        self.dropped = 0
        self._sock: socket.socket | None = None
        self._send: Callable[[dict[str, str]], None] = (
            self._send_library if backend == LIBRARY else self._send_native
        )

    @property
    def available(self) -> bool:
        """Whether a journal is listening now (false outside systemd)."""
        return os.path.exists(self.socket_path)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._send(_fit(entry(self.format(record), record.levelno, self.identifier)))
        except Exception:  # noqa: BLE001 - a journal problem must never reach a job
            self.dropped += 1

    def close(self) -> None:
        self.acquire()
        try:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
        finally:
            self.release()
        super().close()

    # -- transports -----------------------------------------------------------

    def _send_library(self, fields: dict[str, str]) -> None:
        assert _sd_journal is not None
        if not self.available:
            # libsystemd drops an entry silently (success) when there is no
            # journal; count it, as the builtin sender does.
            self.dropped += 1
            return
        # sendv, not send: send() would add CODE_FILE/LINE of this handler,
        # which says nothing about where the event came from.
        _sd_journal.sendv(*(f"{name}={value}" for name, value in fields.items()))

    def _send_native(self, fields: dict[str, str]) -> None:
        if self._sock is None:
            # Unconnected: each datagram is addressed, so a restarted journald
            # (new socket, same path) is reached without reconnecting.
            self._sock = socket.socket(
                socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
            )
        try:
            self._sock.sendto(encode(fields), self.socket_path)
        except OSError:
            # ENOENT/ECONNREFUSED: no journal; EAGAIN: journald is behind.
            self.dropped += 1



def _fit(fields: dict[str, str]) -> dict[str, str]:
    """Cut ``MESSAGE`` to ``MAX_MESSAGE_BYTES`` (noting the original size), for both backends."""
    raw = fields["MESSAGE"].encode("utf-8", "replace")
    if len(raw) > MAX_MESSAGE_BYTES:
        fields["MESSAGE"] = raw[:MAX_MESSAGE_BYTES].decode("utf-8", "ignore")
        fields["MESSAGE_TRUNCATED"] = str(len(raw))
    return fields
