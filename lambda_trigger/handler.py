"""Lambda entry point: S3 ObjectCreated records -> one SendCommand or one queue message each.

Glue only: configuration from the environment (config.py, read per call,
never at import), parsing in events.py, sending in ssm.py (one instance) or
sqs.py (a fleet's shared work queue). Every record gets exactly one JSON log
line (loglines.py). If any record could not be delivered the invocation raises
DeliveryError after trying all of them, so Lambda's retry and the on-failure
destination take over; re-sending the good records on that retry is harmless
because the daemon dedupes by object identity (the ledger for SendCommand,
the manifest check for queue messages).

An event ``{"processor": "reconcile", ...}`` (the fleet's EventBridge
schedule) runs the reconcile mode instead (reconciler.py).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, TypedDict

from lambda_trigger import s3, sqs
from lambda_trigger.config import ConfigError, TriggerConfig, load_config
from lambda_trigger.events import JobRequest, MalformedEvent, parse_event
from lambda_trigger.loglines import LOGGER, log_line
from lambda_trigger.reconciler import RECONCILE_MODE, ReconcileSummary, is_reconcile, reconcile
from lambda_trigger.ssm import (
    DeliveryError,
    FailedRecord,
    SendError,
    SsmClient,
    make_client,
    send_submit,
)

__all__ = ["RECONCILE_MODE", "ConfigError", "Summary", "TriggerConfig", "handle",
           "lambda_handler", "load_config"]

logger = LOGGER


class Summary(TypedDict):
    """The return value of a successful invocation (ids of one kind: the mode's)."""

    sent: int
    skipped: int
    command_ids: list[str]
    message_ids: list[str]


@functools.lru_cache(maxsize=1)
def cached_client() -> SsmClient:
    """One SSM client per warm Lambda container, built on first use.

    Building a client costs tens of milliseconds and its connection pool is
    worth keeping. Tests that change the endpoint call ``cache_clear()``.
    """
    return make_client()


@functools.lru_cache(maxsize=1)
def cached_queue_client() -> sqs.SqsClient:
    """One SQS client per warm container, as cached_client."""
    return sqs.make_client()


@functools.lru_cache(maxsize=1)
def cached_s3_client() -> Any:
    """One S3 client per warm container (the reconcile mode's listings)."""
    return s3.make_client()


def lambda_handler(event: object, context: object) -> Summary | ReconcileSummary:
    """The function's configured handler (``lambda_trigger.handler.lambda_handler``)."""
    if "AWS_LAMBDA_LOG_LEVEL" not in os.environ and logger.level == logging.NOTSET:
        # The Python runtime leaves the root logger at WARNING unless the
        # function's logging config sets a level; our per-record lines are INFO.
        logger.setLevel(logging.INFO)
    if is_reconcile(event):
        assert isinstance(event, Mapping)
        return reconcile(event, os.environ, cached_s3_client, cached_queue_client)
    return handle(event, os.environ, cached_client, queue_client_factory=cached_queue_client)


def handle(
    event: object,
    env: Mapping[str, str],
    client_factory: Callable[[], SsmClient],
    *,
    queue_client_factory: Callable[[], sqs.SqsClient] = cached_queue_client,
) -> Summary:
    """lambda_handler for S3 events, with its environment and AWS clients injected (the test seam)."""
    config = load_config(env)
    try:
        parsed = parse_event(event)
    except MalformedEvent as exc:
        log_line(logging.ERROR, "event_malformed", error=str(exc))
        raise
    if parsed.is_test_event:
        log_line(logging.INFO, "test_event_ignored", reason="s3:TestEvent")

    failures: list[FailedRecord] = []
    for malformed in parsed.errors:
        log_line(logging.ERROR, "record_malformed", error=str(malformed))
        failures.append(FailedRecord(None, None, "MalformedRecord", str(malformed)))
    for skipped in parsed.skipped:
        log_line(logging.INFO, "record_skipped", bucket=skipped.bucket, key=skipped.key,
                 reason=skipped.reason)

    command_ids: list[str] = []
    message_ids: list[str] = []
    # Clients are built only when there is something to send.
    if parsed.requests and config.queue_url is not None:
        message_ids, send_failures = _queue_all(parsed.requests, config.queue_url,
                                                queue_client_factory())
        failures.extend(send_failures)
    elif parsed.requests:
        command_ids, send_failures = _send_all(parsed.requests, config, client_factory())
        failures.extend(send_failures)

    if failures:
        raise DeliveryError(failures)
    return Summary(sent=len(command_ids) + len(message_ids), skipped=len(parsed.skipped),
                   command_ids=command_ids, message_ids=message_ids)


def _where(request: JobRequest) -> dict[str, Any]:
    return {"bucket": request.bucket, "key": request.key,
            "version_id": request.version_id, "etag": request.etag}


def _send_all(
    requests: list[JobRequest], config: TriggerConfig, client: SsmClient
) -> tuple[list[str], list[FailedRecord]]:
    """SendCommand for every request, even after a failure; return command ids and failures."""
    assert config.document_name is not None and config.instance_id is not None  # load_config
    command_ids: list[str] = []
    failures: list[FailedRecord] = []
    for request in requests:
        try:
            command_id = send_submit(client, document_name=config.document_name,
                                     instance_id=config.instance_id, request=request,
                                     document_version=config.document_version)
        except SendError as exc:
            log_line(logging.ERROR, "record_failed", error=f"{exc.code}: {exc.message}",
                     instance_id=exc.instance_id, **_where(request))
            failures.append(FailedRecord(request.bucket, request.key, exc.code, exc.message))
        else:
            log_line(logging.INFO, "record_sent", command_id=command_id,
                     instance_id=config.instance_id, **_where(request))
            command_ids.append(command_id)
    return command_ids, failures


def _queue_all(
    requests: list[JobRequest], queue_url: str, client: sqs.SqsClient
) -> tuple[list[str], list[FailedRecord]]:
    """One queue message per request (batched); return message ids and failures."""
    queued, failed = sqs.send_requests(client, queue_url, requests)
    for item in queued:
        log_line(logging.INFO, "record_sent", queue_url=queue_url, message_id=item.message_id,
                 **_where(item.request))
    failures = []
    for failure in failed:
        log_line(logging.ERROR, "record_failed", queue_url=queue_url,
                 error=f"{failure.code}: {failure.message}", **_where(failure.request))
        failures.append(FailedRecord(failure.request.bucket, failure.request.key, failure.code,
                                     failure.message))
    return [item.message_id for item in queued], failures
