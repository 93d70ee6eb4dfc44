"""The Lambda's reconcile mode: the fleet's one global pass that re-queues lost objects.

An EventBridge schedule invokes the trigger function with
``{"processor": "reconcile", "older_than_s": 900, "prefix": "", "dry_run": false}``
(every field but ``processor`` optional). The pass lists the input bucket,
judges every object with the shared planning rule (reconcile.plan, the same
one `processorctl reconcile` uses), and sends one queue message per lost
object. Sending an object twice -- this pass overlapping the Lambda's own
message, or a second pass -- is harmless: the daemon finds the manifest of
the same identity and does not run the command again.

It logs one ``reconcile_sent`` line per object queued, then one
``reconcile_finished`` summary line, and returns the summary. When any
message could not be sent it raises DeliveryError after the summary, so the
schedule's retry policy sees a failure.

Memory is bounded by CHUNK_OBJECTS, not by the buckets (the function has
128 MB; a whole-bucket index of results ran out around 10^6): the input
listing is judged CHUNK_OBJECTS objects at a time, each chunk against the one
range of the output listing that can hold its markers (``<prefix><key>/``
sorts between the chunk's first key and its last marker, S3 listing in
UTF-8 binary order), and a chunk's lost objects are sent before the next is
read. Only the ``_by-id/`` results (keys too long for the normal location:
rare) are indexed whole.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypedDict

from lambda_trigger import s3, sqs
from lambda_trigger.config import ReconcileConfig, load_reconcile_config
from lambda_trigger.events import JobRequest
from lambda_trigger.loglines import log_counts, log_line
from lambda_trigger.ssm import DeliveryError, FailedRecord
from processor_shared.layout import FALLBACK_DIR, marker_keys
from processor_shared.lost import Results, Verdict, index_results, plan

#: The event field and value that select this mode.
RECONCILE_MODE = ("processor", "reconcile")
#: What queued messages are marked with in the JobRequest (no S3 event name).
_EVENT_NAME = "Reconcile"
#: Input objects judged (and their lost ones sent) at a time: what bounds the pass's memory.
CHUNK_OBJECTS = 1000


class ReconcileSummary(TypedDict):
    """The result of one pass (and its ``reconcile_finished`` log line)."""

    input_bucket: str
    prefix: str
    older_than_s: float
    dry_run: bool
    listed: int
    sent: int
    failed: int
    has_result: int
    too_new: int
    folder: int


def is_reconcile(event: object) -> bool:
    """True for the schedule's reconcile event (never for an S3 notification)."""
    name, value = RECONCILE_MODE
    return isinstance(event, Mapping) and event.get(name) == value


def reconcile(
    event: Mapping[str, object],
    env: Mapping[str, str],
    s3_client_factory: Callable[[], Any],
    queue_client_factory: Callable[[], sqs.SqsClient],
    *,
    clock: Callable[[], float] = time.time,
) -> ReconcileSummary:
    """One pass; raises ConfigError, s3.ListingError, or DeliveryError (after logging)."""
    config = load_reconcile_config(env, event)
    client = s3_client_factory()
    counts = {verdict: 0 for verdict in Verdict}
    failures: list[FailedRecord] = []
    lost_count = sent = 0
    queue_client: sqs.SqsClient | None = None
    try:
        by_id = index_results(
            s3.list_keys(client, config.output_bucket, config.output_prefix + FALLBACK_DIR),
            config.output_prefix).job_ids
        for chunk in _chunks(s3.list_objects(client, config.input_bucket, config.prefix), CHUNK_OBJECTS):
            results = _chunk_results(client, config, chunk, by_id)
            lost: list[JobRequest] = []
            for decision in plan(chunk, bucket=config.input_bucket, results=results, now=clock(),
                                 older_than_s=config.older_than_s):
                counts[decision.verdict] += 1
                if decision.verdict is Verdict.SUBMIT:
                    listed = decision.listed
                    lost.append(JobRequest(config.input_bucket, listed.key, listed.version_id,
                                           listed.etag, _EVENT_NAME, None))
            lost_count += len(lost)
            if lost and not config.dry_run:
                if queue_client is None:
                    queue_client = queue_client_factory()
                sent += _send(queue_client, config.queue_url, lost, failures)
            else:
                for request in lost:
                    log_line(logging.INFO, "reconcile_would_send", bucket=request.bucket,
                             key=request.key, version_id=request.version_id, etag=request.etag,
                             reason="dry_run")
    except s3.ListingError as exc:
        log_line(logging.ERROR, "reconcile_failed", bucket=exc.bucket,
                 error=f"{exc.code}: {exc.message}")
        raise
    summary = ReconcileSummary(
        input_bucket=config.input_bucket, prefix=config.prefix,
        older_than_s=config.older_than_s, dry_run=config.dry_run, listed=sum(counts.values()),
        # In a dry run "sent" is what a real pass would send.
        sent=lost_count if config.dry_run else sent, failed=len(failures),
        has_result=counts[Verdict.HAS_RESULT], too_new=counts[Verdict.TOO_NEW],
        folder=counts[Verdict.FOLDER],
    )
    log_counts(logging.ERROR if failures else logging.INFO, "reconcile_finished", summary)
    if failures:
        raise DeliveryError(failures)
    return summary


def _chunks(objects: Iterable[s3.ListedObject], size: int) -> Iterator[list[s3.ListedObject]]:
    chunk: list[s3.ListedObject] = []
    for obj in objects:
        chunk.append(obj)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _chunk_results(client: Any, config: ReconcileConfig, chunk: list[s3.ListedObject],
                   by_id: frozenset[str]) -> Results:
    """Which of the chunk's objects have a marker: one ranged listing of the output bucket."""
    wanted = {marker for obj in chunk for marker in marker_keys(config.output_prefix, obj.key)}
    # Every marker sorts after <prefix><smallest key> (it extends it, or a larger key).
    start_after = config.output_prefix + min(obj.key for obj in chunk)
    found = (key for key in s3.list_keys_between(client, config.output_bucket, config.output_prefix,
                                                  start_after, max(wanted)) if key in wanted)
    return Results(index_results(found, config.output_prefix).keys, by_id)


def _send(client: sqs.SqsClient, queue_url: str, lost: list[JobRequest],
          failures: list[FailedRecord]) -> int:
    """Sends one chunk's lost objects, logs each; failures are appended; returns how many were sent."""
    queued, failed = sqs.send_requests(client, queue_url, lost)
    for item in queued:
        log_line(logging.INFO, "reconcile_sent", queue_url=queue_url,
                 message_id=item.message_id, bucket=item.request.bucket,
                 key=item.request.key, version_id=item.request.version_id,
                 etag=item.request.etag)
    for failure in failed:
        log_line(logging.ERROR, "reconcile_send_failed", queue_url=queue_url,
                 bucket=failure.request.bucket, key=failure.request.key,
                 version_id=failure.request.version_id, etag=failure.request.etag,
                 error=f"{failure.code}: {failure.message}")
        failures.append(FailedRecord(failure.request.bucket, failure.request.key,
                                     failure.code, failure.message))
    return len(queued)
