"""The journald sink against a real Unix datagram socket standing in for journald.

The wire tests run on both backends (builtin and systemd-python) and expect
the very same datagrams: journald cannot tell which one the daemon used.
"""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog

from tests.support import journal_scenarios
from tests.support.logstate import restored_logging
from tests.support.systemd_backends import BACKENDS, private_run_unavailable, require_library
from worker.telemetry import logsetup, systemd
from worker.telemetry.journal import MAX_MESSAGE_BYTES, JournalHandler, encode, priority, stderr_is_journal


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
    os.chmod(path, 0o666)
    sock.settimeout(5)
    try:
        yield sock, path
    finally:
        sock.close()


def receive(sock: socket.socket) -> dict[str, str]:
    return parse(sock.recv(1 << 20))


Scenario = Callable[[str, "str | None"], dict[str, object]]


@pytest.fixture(params=BACKENDS)
def scenario(request: pytest.FixtureRequest) -> Scenario:
    """Runs a journal_scenarios scenario on one backend against the given fake journald.

    builtin: in this process, the handler pointed at the socket. systemd-python:
    in a child with a private /run whose journal socket is the test's.
    """
    backend = str(request.param)
    if backend == systemd.LIBRARY:
        require_library()
        reason = private_run_unavailable()
        if reason is not None:
            pytest.skip(reason)

    def run(name: str, socket_path: str | None) -> dict[str, object]:
        if backend == systemd.LIBRARY:
            result = journal_scenarios.run_in_child(name, socket_path)
        else:
            absent = str(Path(tempfile.gettempdir()) / "no-such-journal.sock")
            handler = JournalHandler(socket_path=socket_path or absent, backend=systemd.BUILTIN)
            with restored_logging():
                sinks = journal_scenarios.SCENARIOS[name](handler)
            result = {"backend": handler.backend, "sinks": sinks, "dropped": handler.dropped}
        assert result["backend"] == backend
        return result

    return run


def test_events_arrive_with_job_fields_priority_and_identifier(
    journald: tuple[socket.socket, str], scenario: Scenario,
) -> None:
    sock, path = journald
    result = scenario("job_events", path)
    assert result["sinks"] == ["journald", "stderr"] and result["dropped"] == 0
    entry = receive(sock)
    assert entry["JOB_ID"] == "j-1" and entry["S3_BUCKET"] == "in" and entry["S3_KEY"] == "a/b.csv"
    assert entry["JOB_STATE"] == "succeeded" and entry["ATTEMPT"] == "2"
    assert entry["EVENT"] == "job_finished" and entry["DURATION_S"] == "1.5"
    assert entry["PRIORITY"] == "6" and entry["SYSLOG_IDENTIFIER"] == "processor"
    message = json.loads(entry["MESSAGE"])  # MESSAGE is the same JSON line as the file's
    assert message["event"] == "job_finished" and message["exit_code"] == 0
    assert "EXIT_CODE" not in entry  # only the fixed keys become fields
    assert "CODE_FILE" not in entry  # sendv, not send: no location of the handler itself

    warned = receive(sock)
    assert warned["PRIORITY"] == "4" and "S3_KEY" not in warned and "DURATION_S" not in warned
    assert receive(sock)["PRIORITY"] == "3"
    assert receive(sock)["PRIORITY"] == "7"
    foreign = receive(sock)
    assert foreign["EVENT"] == "foreign record" and foreign["PRIORITY"] == "4"


def test_a_key_with_a_newline_uses_the_binary_form(
    journald: tuple[socket.socket, str], scenario: Scenario,
) -> None:
    sock, path = journald
    scenario("newline_key", path)
    datagram = sock.recv(1 << 20)
    assert b"S3_KEY\n" + struct.pack("<Q", len("evil\nPRIORITY=0\nkey")) in datagram
    entry = parse(datagram)
    # The newline cannot forge a field: the key is one value, PRIORITY stays ours.
    assert entry["S3_KEY"] == "evil\nPRIORITY=0\nkey" and entry["PRIORITY"] == "6"


def test_encode_is_binary_safe_for_any_value() -> None:
    fields = {"MESSAGE": "line one\nline two", "JOB_ID": "j-3", "S3_KEY": "=\n="}
    assert parse(encode(fields)) == fields
    assert encode({"A": "b"}) == b"A=b\n"


def test_a_huge_event_is_truncated_to_fit_one_datagram(
    journald: tuple[socket.socket, str], scenario: Scenario,
) -> None:
    sock, path = journald
    assert scenario("huge_event", path)["dropped"] == 0
    entry = receive(sock)
    assert len(entry["MESSAGE"].encode()) <= MAX_MESSAGE_BYTES
    assert int(entry["MESSAGE_TRUNCATED"]) > 300_000 and entry["JOB_ID"] == "j-4"


def test_no_journal_is_a_silent_no_op(scenario: Scenario) -> None:
    result = scenario("no_journal", None)
    # Not under systemd: the sink is left out and stderr keeps every line;
    # used directly, the handler swallows the failure and counts it.
    assert result["sinks"] == ["stderr"] and result["dropped"] == 1


def test_the_backend_is_the_library_where_importable(short_tmp: Path) -> None:
    require_library()
    assert systemd.BACKEND == systemd.LIBRARY
    assert JournalHandler().backend == systemd.LIBRARY
    # A socket of our own can only be spoken to by the builtin sender.
    assert JournalHandler(socket_path=str(short_tmp / "j.sock")).backend == systemd.BUILTIN
    with pytest.raises(ValueError, match="socket_path=None"):
        JournalHandler(socket_path=str(short_tmp / "j.sock"), backend=systemd.LIBRARY)


def test_an_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="'journalctl'"):
        JournalHandler(backend="journalctl")


def test_journald_going_away_never_reaches_the_caller(journald: tuple[socket.socket, str]) -> None:
    sock, path = journald
    handler = JournalHandler(socket_path=path)
    with restored_logging():
        logsetup.configure(journal=handler, stream=io.StringIO())
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
        sinks = logsetup.configure(journal=JournalHandler(socket_path=path), stream=stderr, environ=same)
        assert sinks == ["journald"]
        structlog.get_logger().info("once_only")
        assert json.loads(receive(sock)["MESSAGE"])["event"] == "once_only"
        stderr.flush()
        assert (tmp_path / "stderr").read_text() == ""  # not twice in the journal
        other = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}  # stderr redirected elsewhere
        sinks = logsetup.configure(journal=JournalHandler(socket_path=path), stream=stderr, environ=other)
        assert sinks == ["journald", "stderr"]
        # Without the journald sink, stderr stays whatever it is connected to.
        assert logsetup.configure(journal=None, stream=stderr, environ=same) == ["stderr"]
