"""Logging: structlog, one JSON event per line, to every configured sink.

Sinks (each enabled by config, all fed the same rendered JSON line):

- stderr. Under systemd that is the journal's stdout stream, so it is dropped
  when the structured journald sink is on and stderr is that very stream
  (``$JOURNAL_STREAM``): otherwise every line would be in the journal twice.
  On a terminal (the daemon run by hand) stderr gets structlog's human
  ``ConsoleRenderer`` lines instead of JSON.
- ``logs/processor.jsonl`` on the EBS volume, rotated by size.
- journald with searchable fields (``worker.telemetry.journal``).
- CloudWatch Logs via watchtower, a stream per instance (``worker.telemetry.cloudwatch``),
  plus the EMF metrics of ``worker.telemetry.metrics`` on ``<stream>-metrics``.

Event names are snake_case facts and the keys are fixed (``event``,
``job_id``, ``bucket``, ``key``, ``state``, ``attempt``, ``duration_s`` …).
botocore and urllib3 stay at WARNING. ``shutdown()`` flushes CloudWatch within
a bounded time; the daemon calls it last.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import structlog

from worker.config.settings import Settings
from worker.state.dirs import make_dirs
from worker.telemetry import metrics
from worker.telemetry.journal import JournalHandler, stderr_is_journal

if TYPE_CHECKING:  # the CloudWatch module imports boto3: only when it is used
    from worker.telemetry.cloudwatch import CloudWatchHandler, Target

#: Rotation of the JSON log on the state volume.
LOG_FILE_BYTES = 20 * 1024 * 1024
LOG_FILE_BACKUPS = 5

#: Flush budget when configure() replaces a previous CloudWatch sink (tests, reconfiguring).
RECONFIGURE_FLUSH_S = 2.0

_SHARED: list[structlog.typing.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
]

# The CloudWatch handlers configure() attached, for shutdown() to flush.
_attached: list[CloudWatchHandler] = []

log = structlog.get_logger("processor.telemetry")


class _RenderOnce(structlog.stdlib.ProcessorFormatter):
    """ProcessorFormatter that renders a record once for all the handlers sharing it.

    Every sink gets the same JSON line, so the first handler's result is kept on
    the record (ProcessorFormatter works on a copy and leaves the record as it was).
    """

    def format(self, record: logging.LogRecord) -> str:
        cached: str | None = getattr(record, "_processor_json", None)
        if cached is None:
            cached = super().format(record)
            record._processor_json = cached
        return cached


def _formatter() -> logging.Formatter:
    return _RenderOnce(
        foreign_pre_chain=_SHARED,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(ensure_ascii=False, sort_keys=False),
        ],
    )


def _console_formatter() -> logging.Formatter:
    """For stderr on a terminal (`processor run` by hand): structlog's human console lines.

    Not the shared JSON (``_RenderOnce``'s cache is left alone); the journal,
    the log file and CloudWatch keep JSON.
    """
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.dev.ConsoleRenderer(colors=True),
        ],
    )


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def configure(
    level: str = "info", log_dir: Path | None = None, *, stream: TextIO | None = None,
    journal: JournalHandler | None = None, cloudwatch: Target | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[str]:
    """Send every structlog and stdlib record, as JSON lines, to the sinks; return their names.

    stderr gets human console lines instead when it is a terminal.

    ``journal`` is the journald sink (None: off); ``cloudwatch`` the CloudWatch
    target (None: off, and no EMF metrics).
    """
    shutdown(RECONFIGURE_FLUSH_S)
    environ = os.environ if environ is None else environ
    stderr = stream or sys.stderr
    handlers: dict[str, logging.Handler] = {}
    if journal is not None and journal.available:
        handlers["journald"] = journal
    if "journald" not in handlers or not stderr_is_journal(environ, _fileno(stderr)):
        handlers["stderr"] = logging.StreamHandler(stderr)
    if log_dir is not None:
        make_dirs(log_dir)
        handlers["file"] = logging.handlers.RotatingFileHandler(
            log_dir / "processor.jsonl", maxBytes=LOG_FILE_BYTES,
            backupCount=LOG_FILE_BACKUPS, encoding="utf-8",
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    formatter = _formatter()
    for name, handler in handlers.items():
        handler.setFormatter(_console_formatter() if name == "stderr" and _is_terminal(stderr) else formatter)
        root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    sinks = list(handlers)
    if cloudwatch is not None and _attach_cloudwatch(cloudwatch, formatter):
        sinks.append("cloudwatch")
    return sinks


def setup(settings: Settings, *, lookup: Callable[[], str | None] | None = None) -> list[str]:
    """configure() from ``[logging]``: the daemon's sinks. ``lookup`` replaces the IMDS query."""
    target = None
    if settings.logging.cloudwatch_log_group:
        from worker.aws.imds import instance_id
        from worker.telemetry.cloudwatch import Target

        target = Target.from_settings(settings, lookup or instance_id)
    journal = JournalHandler() if settings.logging.journald else None
    sinks = configure(settings.logging.level, settings.paths.logs, journal=journal, cloudwatch=target)
    log.info("logging_configured", sinks=sinks,
             cloudwatch_group=target.group if target else None,
             cloudwatch_stream=target.stream if target else None,
             journald_backend=journal.backend if journal is not None else None)
    return sinks


def _attach_cloudwatch(target: Target, formatter: logging.Formatter) -> bool:
    from worker.telemetry.cloudwatch import open_handlers

    try:
        events, emf, problem = open_handlers(target)
    except ValueError as exc:
        # e.g. no region anywhere: CloudWatch is an extra sink, never a reason not to run.
        log.warning("cloudwatch_disabled", error=str(exc))
        return False
    if problem is not None:
        log.warning("cloudwatch_group_not_created", group=target.group, error=problem)
    events.setFormatter(formatter)
    logging.getLogger().addHandler(events)
    emf.setFormatter(logging.Formatter("%(message)s"))  # the EMF document is the whole event
    emf_logger = logging.getLogger(metrics.LOGGER_NAME)
    emf_logger.addHandler(emf)
    emf_logger.setLevel(logging.INFO)
    _attached.extend((events, emf))
    return True


def shutdown(timeout_s: float) -> bool:
    """Flush and close the CloudWatch sink, waiting at most ``timeout_s``; False if events were left.

    Each handler is closed in a daemon thread of its own (watchtower's close()
    waits for its sender thread, which may be stuck on a dead endpoint); the
    caller waits for them up to one common deadline and then moves on, so a
    dead CloudWatch cannot hold the stop past systemd's TimeoutStopSec. What
    was still queued then is lost and counted in ``cloudwatch_flush_incomplete``.
    """
    handlers = list(_attached)
    _attached.clear()
    if not handlers:
        return True
    emf_logger = logging.getLogger(metrics.LOGGER_NAME)
    emf_logger.setLevel(logging.CRITICAL + 1)
    for handler in handlers:
        # Detached first: nothing may be queued behind the end marker.
        logging.getLogger().removeHandler(handler)
        emf_logger.removeHandler(handler)
        # watchtower waits this long per queue inside close(); past our deadline,
        # so that the deadline below is the one bound that counts.
        handler.FLUSH_TIMEOUT = math.ceil(max(timeout_s, 0.0)) + 1
    threads = [
        threading.Thread(target=_close_quietly, args=(h,), name=f"log-flush-{h.stream}", daemon=True)
        for h in handlers
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + max(timeout_s, 0.0)
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    timed_out = any(thread.is_alive() for thread in threads)
    pending = {h.stream: h.pending() for h in handlers}  # unsent: lost when we exit
    dropped = sum(h.dropped for h in handlers)
    complete = not timed_out and not any(pending.values())
    if not complete or dropped:
        log.warning("cloudwatch_flush_incomplete", timed_out=timed_out, timeout_s=timeout_s,
                    pending=pending, dropped=dropped)
    return complete


def _close_quietly(handler: logging.Handler) -> None:
    # A failed flush is reported by shutdown() (pending events), never raised.
    with contextlib.suppress(Exception):
        handler.close()


def _fileno(stream: TextIO) -> int:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return -1  # not a file (a test's StringIO): never the journal stream
