"""Logging: structlog, one JSON event per line, to stderr and the state volume.

Under systemd stderr goes to the journal; the file ``logs/processor.jsonl``
on the EBS volume is rotated by size. Event names are snake_case facts and the
keys are fixed (``event``, ``job_id``, ``bucket``, ``key``, ``state``,
``attempt``, ``duration_s`` …). botocore and urllib3 stay at WARNING.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

import structlog

#: Rotation of the JSON log on the state volume.
LOG_FILE_BYTES = 20 * 1024 * 1024
LOG_FILE_BACKUPS = 5

_SHARED: list[structlog.typing.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
]


def configure(level: str = "info", log_dir: Path | None = None, *, stream: object = None) -> None:
    """Send every structlog and stdlib record, as JSON lines, to stderr and the log file."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(ensure_ascii=False, sort_keys=False),
        ],
    )
    handlers: list[logging.Handler] = [logging.StreamHandler(stream or sys.stderr)]  # type: ignore[arg-type]
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(
            logging.handlers.RotatingFileHandler(
                log_dir / "processor.jsonl", maxBytes=LOG_FILE_BYTES,
                backupCount=LOG_FILE_BACKUPS, encoding="utf-8",
            )
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        handler.setFormatter(formatter)
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
