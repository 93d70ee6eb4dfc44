"""The daemon's stderr: human console lines on a terminal, JSON otherwise (and in the journal)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import structlog

from tests.support.logstate import restored_logging
from worker.telemetry import logsetup


def test_a_terminal_gets_console_lines_and_the_log_file_keeps_json(tmp_path: Path) -> None:
    master, slave = os.openpty()
    try:
        with open(slave, "w", encoding="utf-8", closefd=False) as terminal, restored_logging():
            sinks = logsetup.configure("info", tmp_path, stream=terminal)
            structlog.get_logger("processor.daemon").info("daemon_ready", slots=2)
            terminal.flush()
        shown = os.read(master, 65536).decode("utf-8", "replace")
    finally:
        os.close(master)
        os.close(slave)
    assert "stderr" in sinks and "daemon_ready" in shown and "slots" in shown
    assert not shown.lstrip().startswith("{"), shown  # not JSON
    line = (tmp_path / "processor.jsonl").read_text().splitlines()[-1]
    assert json.loads(line)["event"] == "daemon_ready"


def test_a_pipe_or_file_gets_json() -> None:
    stream = io.StringIO()
    with restored_logging():
        logsetup.configure("info", stream=stream)
        structlog.get_logger("processor.daemon").info("daemon_ready", slots=2)
    assert json.loads(stream.getvalue().splitlines()[-1])["slots"] == 2
