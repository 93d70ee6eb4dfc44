"""CloudWatch Logs sink (watchtower): a stream per instance, EMF metrics beside it.

Like ``s3.py`` this is an AWS adapter, so it imports boto3; nothing else in
the logging path does. Two watchtower handlers share the log group: the
instance's stream (every JSON event) and ``<stream>-metrics`` (EMF documents
only), whose client adds ``x-amzn-logs-format: json/emf`` to PutLogEvents.

Never blocking a job: watchtower's ``emit`` only appends to a queue that a
background thread per stream sends in batches every ``SEND_INTERVAL_S``. Its
queue is unbounded, so ``CloudWatchHandler`` drops (and counts) events once
``MAX_QUEUED`` are waiting: an unreachable CloudWatch costs a bounded amount
of memory and never a stalled job. The clients have short timeouts and few
retries so a dead endpoint frees the sender quickly. The endpoint comes from
boto3's usual chain: ``AWS_ENDPOINT_URL_CLOUDWATCH_LOGS`` (botocore derives the
name from the service id "CloudWatch Logs"; ``AWS_ENDPOINT_URL_LOGS`` is
ignored), then ``AWS_ENDPOINT_URL``.
Bounded shutdown is ``worker.telemetry.logsetup.shutdown``'s job.

watchtower's public API has no queue bound, no queue length, no way to keep
records while it creates a stream, and no bounded close, so ``CloudWatchHandler``
relies on four of its internals: ``queues`` (a dict of ``queue.Queue`` per
formatted stream name, events as dicts, ``END``/``FLUSH`` as int markers),
``creating_log_stream`` (a bool attribute emit() checks), and ``FLUSH_TIMEOUT``
(the seconds close() waits per queue, set by logsetup). They are the same in
every release of the range setup.cfg pins (3.2, which added FLUSH_TIMEOUT, to
3.4); tests/unit/telemetry/test_watchtower_contract.py fails if any of them changes.
"""

from __future__ import annotations

import logging
import queue
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import boto3
import watchtower
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from worker.aws.imds import instance_id
from worker.aws.retry import LOGS_CLIENT
from worker.config.settings import Settings

#: Longest an event waits in the queue before its batch is sent.
SEND_INTERVAL_S = 5
#: Events queued per stream beyond which new ones are dropped (CloudWatch down).
MAX_QUEUED = 10_000
#: Suffix of the EMF metrics stream.
METRICS_SUFFIX = "-metrics"

#: The header CloudWatch Logs needs on PutLogEvents to extract EMF metrics.
EMF_HEADER = ("x-amzn-logs-format", "json/emf")
_EMF_EVENT = "before-sign.cloudwatch-logs.PutLogEvents"

# Short timeouts, two attempts: the sender thread retries each batch itself,
# and a slow endpoint must not hold the shutdown flush for minutes (the
# numbers, and what they add up to with watchtower's tries: worker.aws.retry).
_CLIENT_CONFIG = Config(**LOGS_CLIENT.config())

# Records of the AWS SDK stay out of CloudWatch: the sender thread's own
# warnings would otherwise feed the very queue it is failing to send (they
# still reach the file and the journal).
_SDK_LOGGERS = ("botocore", "boto3", "urllib3", "s3transfer")


def stream_name(configured: str, lookup: Callable[[], str | None] = instance_id) -> str:
    """The configured stream, else the instance id, else the host name."""
    return configured or lookup() or socket.gethostname()


@dataclass(frozen=True)
class Target:
    """Where CloudWatch events go."""

    group: str
    stream: str
    create_group: bool = False
    #: Used when boto3's chain names no region (AWS_REGION, the profile).
    region: str = ""
    send_interval_s: int = SEND_INTERVAL_S
    max_queued: int = MAX_QUEUED

    @property
    def metrics_stream(self) -> str:
        return self.stream + METRICS_SUFFIX

    @classmethod
    def from_settings(
        cls, settings: Settings, lookup: Callable[[], str | None] = instance_id
    ) -> Target | None:
        """The target of ``[logging]``, or None when CloudWatch is off."""
        lg = settings.logging
        if not lg.cloudwatch_log_group:
            return None
        return cls(
            group=lg.cloudwatch_log_group, stream=stream_name(lg.cloudwatch_stream, lookup),
            create_group=lg.cloudwatch_create_group, region=settings.s3.region,
        )


def _mark_emf(request: Any, **_: Any) -> None:
    request.headers[EMF_HEADER[0]] = EMF_HEADER[1]


def logs_client(region: str = "", *, emf: bool = False) -> Any:
    """A CloudWatch Logs client; with ``emf`` its PutLogEvents carry the EMF header."""
    session = boto3.session.Session()
    client = session.client(
        "logs", region_name=session.region_name or region or None, config=_CLIENT_CONFIG
    )
    if emf:
        client.meta.events.register(_EMF_EVENT, _mark_emf)
    return client


def ensure_group(client: Any, group: str) -> str | None:
    """Create the log group unless it exists; the problem as text if that failed."""
    try:
        client.create_log_group(logGroupName=group)
    except client.exceptions.ResourceAlreadyExistsException:
        pass
    except (BotoCoreError, ClientError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _not_from_sdk(record: logging.LogRecord) -> bool:
    return not record.name.startswith(_SDK_LOGGERS)


class CloudWatchHandler(watchtower.CloudWatchLogHandler):
    """watchtower with a bounded queue, a drop counter and no drops during stream creation."""

    def __init__(self, client: Any, group: str, stream: str, *,
                 send_interval_s: int = SEND_INTERVAL_S, max_queued: int = MAX_QUEUED) -> None:
        super().__init__(
            log_group_name=group,
            # watchtower str.format()s the stream name; braces are literal here.
            log_stream_name=stream.replace("{", "{{").replace("}", "}}"),
            boto3_client=client, create_log_group=False, create_log_stream=True,
            use_queues=True, send_interval=send_interval_s,
        )
        self.stream = stream
        self.max_queued = max_queued
        #: Events dropped because the queue was full.
        self.dropped = 0
        self.addFilter(_not_from_sdk)

    # watchtower sets this while its sender thread creates a missing stream,
    # and meanwhile emit() silently drops every record from every thread. It
    # guards against recursion in its unqueued mode; queued, with SDK records
    # filtered out, there is no recursion, so never drop for it.
    @property
    def creating_log_stream(self) -> bool:
        return False

    @creating_log_stream.setter
    def creating_log_stream(self, _value: bool) -> None:
        pass

    def _queue(self) -> queue.Queue[Any] | None:
        """watchtower's queue of our stream (its ``queues`` internal), made on the first emit."""
        queued: queue.Queue[Any] | None = self.queues.get(self.stream)
        return queued

    def pending(self) -> int:
        """Events queued and not yet sent (watchtower's FLUSH/END markers not counted)."""
        queued = self._queue()
        if queued is None:
            return 0
        with queued.mutex:
            return sum(1 for item in queued.queue if isinstance(item, dict))

    def emit(self, record: logging.LogRecord) -> None:
        queued = self._queue()
        if queued is not None and queued.qsize() >= self.max_queued:
            self.dropped += 1
            return
        super().emit(record)  # type: ignore[no-untyped-call]


def open_handlers(target: Target) -> tuple[CloudWatchHandler, CloudWatchHandler, str | None]:
    """The events and metrics handlers of ``target``, and a problem creating the group, if any.

    No network traffic unless the group is to be created; streams are created
    by watchtower on the first send.
    """
    try:
        client = logs_client(target.region)
        metrics_client = logs_client(target.region, emf=True)
    except BotoCoreError as exc:
        # Translated here, at the edge (e.g. no region anywhere): callers never see botocore.
        raise ValueError(f"{type(exc).__name__}: {exc}") from exc
    problem = ensure_group(client, target.group) if target.create_group else None
    events = CloudWatchHandler(client, target.group, target.stream,
                               send_interval_s=target.send_interval_s, max_queued=target.max_queued)
    metrics = CloudWatchHandler(metrics_client, target.group,
                                target.metrics_stream, send_interval_s=target.send_interval_s,
                                max_queued=target.max_queued)
    return events, metrics, problem
