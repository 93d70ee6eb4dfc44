"""The journald sink against a real Unix datagram socket standing in for journald."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from tests.unit.logstate import restored_logging
from worker import logs
from worker.journal import MAX_MESSAGE_BYTES, JournalHandler, encode, priority, stderr_is_journal


def parse(datagram: bytes) -> dict[str, str]:
    """journald's side of the native protocol: ``KEY=value\\n`` or ``KEY\\n<le64><value>\\n``."""
    fields: dict[str, str] = {}
    rest = datagram
    while rest:
        line_end = rest.index(b"\n")
        head = rest[:line_end]
        if b"=" in head:
            name, _, value = head.partition(b"=")
            rest = rest[line_end + 1:]
        else:
            name = head
            (size,) = struct.unpack("<Q", rest[line_end + 1:line_end + 9])
            value = rest[line_end + 9:line_end + 9 + size]
            assert rest[line_end + 9 + size:line_end + 10 + size] == b"\n"
            rest = rest[line_end + 10 + size:]
        fields[name.decode()] = value.decode()
    return fields


@pytest.fixture
def journald(short_tmp: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(short_tmp / "journal.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    try:
        yield sock, path
    finally:
        sock.close()


def receive(sock: socket.socket) -> dict[str, str]:
    return parse(sock.recv(1 << 20))


def test_events_arrive_with_job_fields_priority_and_identifier(
    journald: tuple[socket.socket, str],
) -> None:
    sock, path = journald
    handler = JournalHandler(socket_path=path)
    with restored_logging():
        assert logs.configure("debug", journal=handler, stream=io.StringIO()) == ["journald", "stderr"]
        log = structlog.get_logger("processor.test")
        log.info("job_finished", job_id="j-1", bucket="in", key="a/b.csv", state="succeeded",
                 attempt=2, duration_s=1.5, exit_code=0)
        entry = receive(sock)
        assert entry["JOB_ID"] == "j-1" and entry["S3_BUCKET"] == "in" and entry["S3_KEY"] == "a/b.csv"
        assert entry["JOB_STATE"] == "succeeded" and entry["ATTEMPT"] == "2"
        assert entry["EVENT"] == "job_finished" and entry["DURATION_S"] == "1.5"
        assert entry["PRIORITY"] == "6" and entry["SYSLOG_IDENTIFIER"] == "processor"
        message = json.loads(entry["MESSAGE"])  # MESSAGE is the same JSON line as the file's
        assert message["event"] == "job_finished" and message["exit_code"] == 0
        assert "EXIT_CODE" not in entry  # only the fixed keys become fields

        log.warning("job_retry_scheduled", job_id="j-1")
        warned = receive(sock)
        assert warned["PRIORITY"] == "4" and "S3_KEY" not in warned and "DURATION_S" not in warned
        log.error("job_crashed")
        assert receive(sock)["PRIORITY"] == "3"
        log.debug("detail")
        assert receive(sock)["PRIORITY"] == "7"
        logging.getLogger("botocore.hooks").warning("foreign %s", "record")
        foreign = receive(sock)
        assert foreign["EVENT"] == "foreign record" and foreign["PRIORITY"] == "4"
    assert handler.dropped == 0


def test_a_key_with_a_newline_uses_the_binary_form(journald: tuple[socket.socket, str]) -> None:
    sock, path = journald
    handler = JournalHandler(socket_path=path)
    with restored_logging():
        logs.configure(journal=handler, stream=io.StringIO())
        structlog.get_logger().info("job_started", job_id="j-2", key="evil\nPRIORITY=0\nkey")
        datagram = sock.recv(1 << 20)
    assert b"S3_KEY\n" + struct.pack("<Q", len("evil\nPRIORITY=0\nkey")) in datagram
    entry = parse(datagram)
    # The newline cannot forge a field: the key is one value, PRIORITY stays ours.
    assert entry["S3_KEY"] == "evil\nPRIORITY=0\nkey" and entry["PRIORITY"] == "6"


def test_encode_is_binary_safe_for_any_value() -> None:
    fields = {"MESSAGE": "line one\nline two", "JOB_ID": "j-3", "S3_KEY": "=\n="}
    assert parse(encode(fields)) == fields
    assert encode({"A": "b"}) == b"A=b\n"


def test_a_huge_event_is_truncated_to_fit_one_datagram(journald: tuple[socket.socket, str]) -> None:
    sock, path = journald
    handler = JournalHandler(socket_path=path)
    with restored_logging():
        logs.configure(journal=handler, stream=io.StringIO())
        structlog.get_logger().info("job_finished", job_id="j-4", error="x" * 300_000)
        entry = receive(sock)
    assert len(entry["MESSAGE"].encode()) <= MAX_MESSAGE_BYTES
    assert int(entry["MESSAGE_TRUNCATED"]) > 300_000 and entry["JOB_ID"] == "j-4"


def test_no_journal_is_a_silent_no_op(short_tmp: Path) -> None:
    handler = JournalHandler(socket_path=str(short_tmp / "absent.sock"))
    assert handler.available is False
    stream = io.StringIO()
    with restored_logging():
        # Not under systemd: the sink is left out and stderr keeps every line.
        assert logs.configure(journal=handler, stream=stream) == ["stderr"]
        structlog.get_logger().info("daemon_started")
    assert "daemon_started" in stream.getvalue()
    # Used directly, it swallows the failure and counts it.
    record = logging.LogRecord("processor", logging.INFO, __file__, 1, "hello", None, None)
    handler.emit(record)
    assert handler.dropped == 1


def test_journald_going_away_never_reaches_the_caller(journald: tuple[socket.socket, str]) -> None:
    sock, path = journald
    handler = JournalHandler(socket_path=path)
    with restored_logging():
        logs.configure(journal=handler, stream=io.StringIO())
        sock.close()
        os.unlink(path)
        structlog.get_logger().info("job_finished", job_id="j-5")  # must not raise
    assert handler.dropped == 1


def test_priority_mapping() -> None:
    assert [priority(n) for n in (10, 20, 30, 40, 50)] == [7, 6, 4, 3, 2]


def test_journal_stream_detection(tmp_path: Path) -> None:
    with (tmp_path / "stream").open("w") as fh:
        st = os.fstat(fh.fileno())
        assert stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, fh.fileno())
        assert not stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, fh.fileno())
        assert not stderr_is_journal({}, fh.fileno())
        assert not stderr_is_journal({"JOURNAL_STREAM": "garbage"}, fh.fileno())
        assert not stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, -1)


def test_stderr_is_dropped_only_when_it_already_is_the_journal(
    journald: tuple[socket.socket, str], tmp_path: Path,
) -> None:
    sock, path = journald
    with (tmp_path / "stderr").open("w") as stderr, restored_logging():
        st = os.fstat(stderr.fileno())
        same = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        sinks = logs.configure(journal=JournalHandler(socket_path=path), stream=stderr, environ=same)
        assert sinks == ["journald"]
        structlog.get_logger().info("once_only")
        assert json.loads(receive(sock)["MESSAGE"])["event"] == "once_only"
        stderr.flush()
        assert (tmp_path / "stderr").read_text() == ""  # not twice in the journal
        other = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}  # stderr redirected elsewhere
        sinks = logs.configure(journal=JournalHandler(socket_path=path), stream=stderr, environ=other)
        assert sinks == ["journald", "stderr"]
        # Without the journald sink, stderr stays whatever it is connected to.
        assert logs.configure(journal=None, stream=stderr, environ=same) == ["stderr"]
