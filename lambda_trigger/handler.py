"""Lambda entry point: S3 ObjectCreated records -> one SendCommand each.

Glue only: configuration from the environment (read per call, never at
import), parsing in events.py, choosing the instance in targeting.py,
sending in ssm.py. Every record gets exactly one JSON log line (logs.py).
If any record could not be delivered the invocation raises DeliveryError
after trying all of them, so Lambda's retry and the on-failure destination
take over; re-sending the good records on that retry is harmless because
the daemon's ledger dedupes by object identity -- and with a fleet, the
rendezvous order sends a re-delivered object to the same instance.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypedDict

from lambda_trigger.events import JobRequest, MalformedEvent, parse_event
from lambda_trigger.logs import LOGGER, log_line
from lambda_trigger.ssm import (
    DeliveryError,
    FailedRecord,
    SendError,
    SsmClient,
    deliver,
    make_client,
    make_discovery_clients,
)
from lambda_trigger.targeting import (
    DEFAULT_CACHE_SECONDS,
    DiscoveryError,
    InstanceDirectory,
    TargetTag,
    identity_of,
    parse_target_tag,
    rendezvous_order,
)

logger = LOGGER

#: EC2 ids (i- and 8 or 17 hex digits) and SSM hybrid-activated nodes (mi-).
#: Checked up front so a typo fails every invocation loudly, not per record.
_INSTANCE_ID = re.compile(r"i-(?:[0-9a-f]{8}|[0-9a-f]{17})|mi-[0-9a-f]{17}")

#: Builds the (cached) InstanceDirectory for a tag and cache lifetime.
DirectoryFactory = Callable[[TargetTag, float], InstanceDirectory]


class ConfigError(Exception):
    """An environment variable is missing or wrong; ``variable`` names it."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable} {problem}")
        self.variable = variable
        self.problem = problem


@dataclass(frozen=True)
class TriggerConfig:
    """What the Lambda's environment says to do: exactly one of instance_id, target_tag."""

    document_name: str
    instance_id: str | None
    document_version: str | None = None
    target_tag: TargetTag | None = None
    #: TARGET_CACHE_SECONDS: how long a discovered fleet is reused.
    cache_seconds: float = DEFAULT_CACHE_SECONDS


class Summary(TypedDict):
    """The return value of a successful invocation."""

    sent: int
    skipped: int
    command_ids: list[str]


def load_config(env: Mapping[str, str]) -> TriggerConfig:
    """Validate DOCUMENT_NAME, TARGET_INSTANCE_ID / TARGET_TAG, TARGET_CACHE_SECONDS, DOCUMENT_VERSION."""
    document_name = _setting(env, "DOCUMENT_NAME")
    if document_name is None:
        raise ConfigError("DOCUMENT_NAME", "is required: the name or ARN of the submit document")
    instance_id = _setting(env, "TARGET_INSTANCE_ID")
    tag_text = _setting(env, "TARGET_TAG")
    document_version = _setting(env, "DOCUMENT_VERSION")
    cache_seconds = _cache_seconds(env)  # checked even when unused: a typo should not wait
    if instance_id is not None and tag_text is not None:
        raise ConfigError("TARGET_TAG", "must not be set together with TARGET_INSTANCE_ID: "
                                        "set exactly one of them")
    if instance_id is not None:
        if not _INSTANCE_ID.fullmatch(instance_id):
            raise ConfigError("TARGET_INSTANCE_ID", f"is not an instance id (i-... or mi-...): "
                                                    f"{instance_id!r}")
        return TriggerConfig(document_name, instance_id, document_version,
                             cache_seconds=cache_seconds)
    if tag_text is None:
        raise ConfigError("TARGET_INSTANCE_ID", "is required: the EC2 instance id to submit to "
                                                "(or set TARGET_TAG=Key=Value for a fleet)")
    try:
        tag = parse_target_tag(tag_text)
    except ValueError as exc:
        raise ConfigError("TARGET_TAG", str(exc)) from exc
    return TriggerConfig(document_name, None, document_version, target_tag=tag,
                         cache_seconds=cache_seconds)


def _cache_seconds(env: Mapping[str, str]) -> float:
    text = _setting(env, "TARGET_CACHE_SECONDS")
    if text is None:
        return DEFAULT_CACHE_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError("TARGET_CACHE_SECONDS",
                          f"must be a number of seconds >= 0 (0: no cache), got {text!r}")
    return seconds


@functools.lru_cache(maxsize=1)
def cached_client() -> SsmClient:
    """One SSM client per warm Lambda container, built on first use.

    Building a client costs tens of milliseconds and its connection pool is
    worth keeping. Tests that change the endpoint call ``cache_clear()``.
    """
    return make_client()


@functools.lru_cache(maxsize=1)
def cached_directory(tag: TargetTag, cache_seconds: float) -> InstanceDirectory:
    """One InstanceDirectory per warm container (and tag): its cache spans invocations.

    Tests that change the endpoint or account call ``cache_clear()``.
    """
    ec2, ssm = make_discovery_clients()
    return InstanceDirectory(ec2, ssm, tag, ttl_s=cache_seconds)


def lambda_handler(event: object, context: object) -> Summary:
    """The function's configured handler (``lambda_trigger.handler.lambda_handler``)."""
    if "AWS_LAMBDA_LOG_LEVEL" not in os.environ and logger.level == logging.NOTSET:
        # The Python runtime leaves the root logger at WARNING unless the
        # function's logging config sets a level; our per-record lines are INFO.
        logger.setLevel(logging.INFO)
    return handle(event, os.environ, cached_client)


def handle(
    event: object,
    env: Mapping[str, str],
    client_factory: Callable[[], SsmClient],
    directory_factory: DirectoryFactory = cached_directory,
) -> Summary:
    """lambda_handler with its environment and AWS clients injected (the test seam)."""
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
    if parsed.requests:
        # Built only now: an invocation with nothing to send needs no client.
        directory = (directory_factory(config.target_tag, config.cache_seconds)
                     if config.target_tag is not None else None)
        command_ids, send_failures = _send_all(parsed.requests, config, client_factory(),
                                               directory)
        failures.extend(send_failures)

    if failures:
        raise DeliveryError(failures)
    return Summary(sent=len(command_ids), skipped=len(parsed.skipped), command_ids=command_ids)


def _send_all(
    requests: list[JobRequest],
    config: TriggerConfig,
    client: SsmClient,
    directory: InstanceDirectory | None,
) -> tuple[list[str], list[FailedRecord]]:
    """Send every request, even after a failure; return command ids and failures."""
    command_ids: list[str] = []
    failures: list[FailedRecord] = []
    for request in requests:
        where = {"bucket": request.bucket, "key": request.key,
                 "version_id": request.version_id, "etag": request.etag}
        try:
            instances = _instances_for(request, config, directory)
            delivery = deliver(
                client,
                document_name=config.document_name,
                instances=instances,
                request=request,
                document_version=config.document_version,
                on_failover=_dropper(directory),
            )
        except _NoTarget as exc:
            log_line(logging.ERROR, "record_failed", error=f"{exc.code}: {exc.message}",
                     failed_over_from=[], **where)
            failures.append(FailedRecord(request.bucket, request.key, exc.code, exc.message))
        except SendError as exc:
            log_line(logging.ERROR, "record_failed", error=f"{exc.code}: {exc.message}",
                     instance_id=exc.instance_id, failed_over_from=list(exc.failed_over_from),
                     **where)
            detail = exc.message
            if exc.failed_over_from:
                detail += f" (on {exc.instance_id}, after {', '.join(exc.failed_over_from)})"
            failures.append(FailedRecord(request.bucket, request.key, exc.code, detail))
        else:
            log_line(logging.INFO, "record_sent", command_id=delivery.command_id,
                     instance_id=delivery.instance_id,
                     failed_over_from=list(delivery.failed_over_from), **where)
            command_ids.append(delivery.command_id)
    return command_ids, failures


class _NoTarget(Exception):
    """No instance to try for a record: discovery failed, or the fleet is empty."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _instances_for(
    request: JobRequest, config: TriggerConfig, directory: InstanceDirectory | None
) -> list[str]:
    """The instances to try for ``request``, in order."""
    if directory is None:
        assert config.instance_id is not None  # load_config: exactly one target
        return [config.instance_id]
    try:
        fleet = directory.instances()
    except DiscoveryError as exc:
        raise _NoTarget(exc.code, f"listing instances tagged {exc.tag}: {exc.message}") from exc
    if not fleet:
        raise _NoTarget("NoOnlineInstances",
                        f"no running, online instance is tagged {directory.tag} "
                        "(or all of them failed delivery since the last discovery)")
    return rendezvous_order(identity_of(request), fleet)


def _dropper(directory: InstanceDirectory | None) -> Callable[[str, SendError], None]:
    """The failover callback: forget an instance that cannot take commands."""
    if directory is None:
        return lambda instance_id, error: None
    return lambda instance_id, error: directory.drop(instance_id, f"{error.code}: {error.message}")


def _setting(env: Mapping[str, str], name: str) -> str | None:
    # Templates often pass "" for an unset optional parameter: treat as unset.
    value = env.get(name, "").strip()
    return value or None
