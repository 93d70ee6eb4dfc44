"""The Lambda's log lines: one JSON object per line, always with the same keys.

Lambda ships each line to CloudWatch Logs as is, so Logs Insights can query
the fields (``filter event = "record_failed"``) without a parser. Every
per-record line carries every key in ``FIELDS`` (null when it does not
apply) so queries can rely on them; a run's counts (the reconcile mode's
summary) go out as one ``log_counts`` line.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

#: The one logger of the package; handler.lambda_handler sets it to INFO.
LOGGER = logging.getLogger("processor.trigger")

#: The keys of every line, in this order.
FIELDS = ("event", "bucket", "key", "version_id", "etag", "instance_id", "command_id",
          "queue_url", "message_id", "error", "reason")


def log_line(
    level: int,
    event: str,
    *,
    bucket: str | None = None,
    key: str | None = None,
    version_id: str | None = None,
    etag: str | None = None,
    instance_id: str | None = None,
    command_id: str | None = None,
    queue_url: str | None = None,
    message_id: str | None = None,
    error: str | None = None,
    reason: str | None = None,
) -> None:
    """Write one line; ``event`` is a snake_case fact (``record_sent``)."""
    line = {
        "event": event,
        "bucket": bucket,
        "key": key,
        "version_id": version_id,
        "etag": etag,
        "instance_id": instance_id,
        "command_id": command_id,
        "queue_url": queue_url,
        "message_id": message_id,
        "error": error,
        "reason": reason,
    }
    # json.dumps escapes control characters, so a key holding a newline
    # cannot forge a second log line.
    LOGGER.log(level, json.dumps(line, ensure_ascii=False))


def log_counts(level: int, event: str, counts: Mapping[str, object]) -> None:
    """Write one line ``{"event": event, **counts}`` (a run's summary)."""
    LOGGER.log(level, json.dumps({"event": event, **counts}, ensure_ascii=False))
