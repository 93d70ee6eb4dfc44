"""Lambda entry point: S3 ObjectCreated records -> one SendCommand each.

Glue only: configuration from the environment (read per call, never at
import), parsing in events.py, sending in ssm.py. Every record gets exactly
one JSON log line. If any record could not be delivered the invocation
raises DeliveryError after trying all of them, so Lambda's retry and the
on-failure destination take over; re-sending the good records on that retry
is harmless because the daemon's ledger dedupes by object identity.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypedDict

from lambda_trigger.events import JobRequest, MalformedEvent, parse_event
from lambda_trigger.ssm import (
    DeliveryError,
    FailedRecord,
    SendError,
    SsmClient,
    make_client,
    send_submit,
)

logger = logging.getLogger("processor.trigger")

#: EC2 ids (i- and 8 or 17 hex digits) and SSM hybrid-activated nodes (mi-).
#: Checked up front so a typo fails every invocation loudly, not per record.
_INSTANCE_ID = re.compile(r"i-(?:[0-9a-f]{8}|[0-9a-f]{17})|mi-[0-9a-f]{17}")


class ConfigError(Exception):
    """An environment variable is missing or wrong; ``variable`` names it."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable} {problem}")
        self.variable = variable
        self.problem = problem


@dataclass(frozen=True)
class TriggerConfig:
    """What the Lambda's environment says to do."""

    document_name: str
    instance_id: str
    document_version: str | None = None


class Summary(TypedDict):
    """The return value of a successful invocation."""

    sent: int
    skipped: int
    command_ids: list[str]


def load_config(env: Mapping[str, str]) -> TriggerConfig:
    """Validate DOCUMENT_NAME, TARGET_INSTANCE_ID / TARGET_TAG and DOCUMENT_VERSION."""
    document_name = _setting(env, "DOCUMENT_NAME")
    if document_name is None:
        raise ConfigError("DOCUMENT_NAME", "is required: the name or ARN of the submit document")
    instance_id = _setting(env, "TARGET_INSTANCE_ID")
    tag = _setting(env, "TARGET_TAG")
    if instance_id is None:
        if tag is not None:
            # Not faked with a Targets tag query: that would run the job on
            # every tagged instance. Rendezvous-hashed fleet targeting comes later.
            raise ConfigError(
                "TARGET_TAG",
                "is set, but fleet tag targeting is not implemented yet; "
                "set TARGET_INSTANCE_ID to one instance id instead",
            )
        raise ConfigError("TARGET_INSTANCE_ID", "is required: the EC2 instance id to submit to")
    if tag is not None:
        raise ConfigError("TARGET_TAG", "must not be set together with TARGET_INSTANCE_ID")
    if not _INSTANCE_ID.fullmatch(instance_id):
        raise ConfigError("TARGET_INSTANCE_ID", f"is not an instance id (i-... or mi-...): "
                                                f"{instance_id!r}")
    return TriggerConfig(document_name, instance_id, _setting(env, "DOCUMENT_VERSION"))


@functools.lru_cache(maxsize=1)
def cached_client() -> SsmClient:
    """One SSM client per warm Lambda container, built on first use.

    Building a client costs tens of milliseconds and its connection pool is
    worth keeping. Tests that change the endpoint call ``cache_clear()``.
    """
    return make_client()


def lambda_handler(event: object, context: object) -> Summary:
    """The function's configured handler (``lambda_trigger.handler.lambda_handler``)."""
    if "AWS_LAMBDA_LOG_LEVEL" not in os.environ and logger.level == logging.NOTSET:
        # The Python runtime leaves the root logger at WARNING unless the
        # function's logging config sets a level; our per-record lines are INFO.
        logger.setLevel(logging.INFO)
    return handle(event, os.environ, cached_client)


def handle(
    event: object, env: Mapping[str, str], client_factory: Callable[[], SsmClient]
) -> Summary:
    """lambda_handler with its environment and SSM client injected (the test seam)."""
    config = load_config(env)
    try:
        parsed = parse_event(event)
    except MalformedEvent as exc:
        _log_record(logging.ERROR, "event_malformed", error=str(exc))
        raise
    if parsed.is_test_event:
        _log_record(logging.INFO, "test_event_ignored", reason="s3:TestEvent")

    failures: list[FailedRecord] = []
    for malformed in parsed.errors:
        _log_record(logging.ERROR, "record_malformed", error=str(malformed))
        failures.append(FailedRecord(None, None, "MalformedRecord", str(malformed)))
    for skipped in parsed.skipped:
        _log_record(logging.INFO, "record_skipped", bucket=skipped.bucket, key=skipped.key,
                    reason=skipped.reason)

    command_ids: list[str] = []
    if parsed.requests:
        # Built only now: an invocation with nothing to send needs no client.
        command_ids, send_failures = _send_all(parsed.requests, config, client_factory())
        failures.extend(send_failures)

    if failures:
        raise DeliveryError(failures)
    return Summary(sent=len(command_ids), skipped=len(parsed.skipped), command_ids=command_ids)


def _send_all(
    requests: list[JobRequest], config: TriggerConfig, client: SsmClient
) -> tuple[list[str], list[FailedRecord]]:
    """Send every request, even after a failure; return command ids and failures."""
    command_ids: list[str] = []
    failures: list[FailedRecord] = []
    for request in requests:
        where = {"bucket": request.bucket, "key": request.key,
                 "version_id": request.version_id, "etag": request.etag,
                 "instance_id": config.instance_id}
        try:
            command_id = send_submit(
                client,
                document_name=config.document_name,
                instance_id=config.instance_id,
                request=request,
                document_version=config.document_version,
            )
        except SendError as exc:
            _log_record(logging.ERROR, "record_failed", error=f"{exc.code}: {exc.message}",
                        **where)
            failures.append(FailedRecord(request.bucket, request.key, exc.code, exc.message))
        else:
            _log_record(logging.INFO, "record_sent", command_id=command_id, **where)
            command_ids.append(command_id)
    return command_ids, failures


def _setting(env: Mapping[str, str], name: str) -> str | None:
    # Templates often pass "" for an unset optional parameter: treat as unset.
    value = env.get(name, "").strip()
    return value or None


def _log_record(
    level: int,
    event: str,
    *,
    bucket: str | None = None,
    key: str | None = None,
    version_id: str | None = None,
    etag: str | None = None,
    instance_id: str | None = None,
    command_id: str | None = None,
    error: str | None = None,
    reason: str | None = None,
) -> None:
    # Fixed keys on every line (null when not applicable) so log queries can
    # rely on them. json.dumps escapes control characters, so a key holding a
    # newline cannot forge a second log line.
    line = {
        "event": event,
        "bucket": bucket,
        "key": key,
        "version_id": version_id,
        "etag": etag,
        "instance_id": instance_id,
        "command_id": command_id,
        "error": error,
        "reason": reason,
    }
    logger.log(level, json.dumps(line, ensure_ascii=False))
