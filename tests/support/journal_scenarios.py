"""What the journald tests log, runnable in the test process or in a child.

The builtin backend can be pointed at a test's socket, so its scenarios run in
the test process. libsystemd always sends to ``/run/systemd/journal/socket``,
so for the systemd-python backend the same scenario runs in a child started
under ``unshare --mount`` with a private /run where that path is bind-mounted
onto the test's socket (see ``run_in_child``). Each scenario returns the
handler's ``dropped`` count; the child prints it as JSON.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import structlog

from worker.telemetry import logsetup
from worker.telemetry.journal import JournalHandler

REPO = Path(__file__).resolve().parents[2]


def job_events(handler: JournalHandler) -> list[str]:
    sinks = logsetup.configure("debug", journal=handler, stream=io.StringIO())
    log = structlog.get_logger("processor.test")
    log.info("job_finished", job_id="j-1", bucket="in", key="a/b.csv", state="succeeded",
             attempt=2, duration_s=1.5, exit_code=0)
    log.warning("job_retry_scheduled", job_id="j-1")
    log.error("job_crashed")
    log.debug("detail")
    logging.getLogger("botocore.hooks").warning("foreign %s", "record")
    return sinks


def newline_key(handler: JournalHandler) -> list[str]:
    sinks = logsetup.configure(journal=handler, stream=io.StringIO())
    structlog.get_logger().info("job_started", job_id="j-2", key="evil\nPRIORITY=0\nkey")
    return sinks


def huge_event(handler: JournalHandler) -> list[str]:
    sinks = logsetup.configure(journal=handler, stream=io.StringIO())
    structlog.get_logger().info("job_finished", job_id="j-4", error="x" * 300_000)
    return sinks


def no_journal(handler: JournalHandler) -> list[str]:
    stream = io.StringIO()
    sinks = logsetup.configure(journal=handler, stream=stream)
    structlog.get_logger().info("daemon_started")
    assert "daemon_started" in stream.getvalue()
    # Used directly, it swallows the failure and counts it.
    handler.emit(logging.LogRecord("processor", logging.INFO, __file__, 1, "hello", None, None))
    return sinks


SCENARIOS: dict[str, Callable[[JournalHandler], list[str]]] = {
    f.__name__: f for f in (job_events, newline_key, huge_event, no_journal)
}

#: Gives the child a private /run whose journal socket is the test's ("$0"), then runs "$@".
_PRIVATE_RUN = (
    "set -e; mount --make-rprivate /; mount -t tmpfs tmpfs /run;"
    " mkdir -p /run/systemd/journal;"
    ' if [ -n "$0" ]; then touch /run/systemd/journal/socket;'
    ' mount --bind "$0" /run/systemd/journal/socket; fi; exec "$@"'
)


def run_in_child(name: str, socket_path: str | None, timeout: float = 60) -> dict[str, object]:
    """Run scenario ``name`` with the library backend in a child whose journald is ``socket_path``.

    ``socket_path`` None: the child's /run has no journal socket at all.
    """
    done = subprocess.run(
        ["unshare", "--mount", "sh", "-c", _PRIVATE_RUN, socket_path or "",
         sys.executable, "-m", "tests.support.journal_scenarios", name],
        cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _main(name: str) -> None:
    handler = JournalHandler()
    sinks = SCENARIOS[name](handler)
    print(json.dumps({"backend": handler.backend, "sinks": sinks, "dropped": handler.dropped}))


if __name__ == "__main__":
    _main(sys.argv[1])
