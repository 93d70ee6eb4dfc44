"""The Lambda's configuration: its environment, read per invocation and validated up front.

Two modes, by environment (a typo fails every invocation loudly, not per record):

- one instance: ``DOCUMENT_NAME`` + ``TARGET_INSTANCE_ID`` (+ optional
  ``DOCUMENT_VERSION``): one SendCommand of the submit document per record;
- a fleet: ``QUEUE_URL``: one message on the fleet's shared SQS work queue
  per record (``DOCUMENT_NAME`` is then not used).

The reconcile mode (an event ``{"processor": "reconcile", ...}`` from a
schedule) reads ``INPUT_BUCKET``, ``OUTPUT_BUCKET``, ``OUTPUT_PREFIX`` and
``QUEUE_URL``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

#: EC2 ids (i- and 8 or 17 hex digits) and SSM hybrid-activated nodes (mi-).
_INSTANCE_ID = re.compile(r"i-(?:[0-9a-f]{8}|[0-9a-f]{17})|mi-[0-9a-f]{17}")
#: An SQS queue URL: https://sqs.<region>.amazonaws.com/<account>/<name>, or
#: any http(s) endpoint's (the emulator's) ``.../<account>/<name>``. Not a
#: ``.fifo`` queue: the fleet's is a standard queue (FIFO sends need a group id).
_QUEUE_URL = re.compile(r"https?://[^/\s]+/[^/\s]+/[A-Za-z0-9_-]{1,80}")
#: Environment variables of the removed rendezvous targeting, and what replaced them.
_REMOVED = {
    "TARGET_TAG": "was removed and replaced by QUEUE_URL: a fleet is fed through its SQS work "
                  "queue; set QUEUE_URL instead",
    "TARGET_CACHE_SECONDS": "was removed with TARGET_TAG (a fleet is fed through QUEUE_URL); "
                            "unset it",
}

#: The reconcile event's defaults.
DEFAULT_OLDER_THAN_S = 900.0


class ConfigError(Exception):
    """An environment variable (or reconcile event field) is missing or wrong; ``variable`` names it."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable} {problem}")
        self.variable = variable
        self.problem = problem


@dataclass(frozen=True)
class TriggerConfig:
    """Where records go: exactly one of ``instance_id`` (with a document) and ``queue_url``."""

    document_name: str | None
    instance_id: str | None
    document_version: str | None = None
    queue_url: str | None = None


@dataclass(frozen=True)
class ReconcileConfig:
    """One reconcile pass: the environment's buckets and queue, the event's options."""

    input_bucket: str
    output_bucket: str
    output_prefix: str
    queue_url: str
    older_than_s: float = DEFAULT_OLDER_THAN_S
    prefix: str = ""
    dry_run: bool = False


def load_config(env: Mapping[str, str]) -> TriggerConfig:
    """Validate QUEUE_URL, or DOCUMENT_NAME + TARGET_INSTANCE_ID (+ DOCUMENT_VERSION)."""
    _refuse_removed(env)
    queue_url = _setting(env, "QUEUE_URL")
    instance_id = _setting(env, "TARGET_INSTANCE_ID")
    if queue_url is not None:
        if instance_id is not None:
            raise ConfigError("QUEUE_URL", "must not be set together with TARGET_INSTANCE_ID: "
                                           "set QUEUE_URL for a fleet, TARGET_INSTANCE_ID for one "
                                           "instance")
        return TriggerConfig(None, None, queue_url=_queue_url(queue_url))
    document_name = _setting(env, "DOCUMENT_NAME")
    if document_name is None:
        raise ConfigError("DOCUMENT_NAME", "is required: the name or ARN of the submit document "
                                           "(or set QUEUE_URL for a fleet)")
    if instance_id is None:
        raise ConfigError("TARGET_INSTANCE_ID", "is required: the EC2 instance id to submit to "
                                                "(or set QUEUE_URL for a fleet)")
    if not _INSTANCE_ID.fullmatch(instance_id):
        raise ConfigError("TARGET_INSTANCE_ID", f"is not an instance id (i-... or mi-...): "
                                                f"{instance_id!r}")
    return TriggerConfig(document_name, instance_id, _setting(env, "DOCUMENT_VERSION"))


def load_reconcile_config(env: Mapping[str, str], event: Mapping[str, object]) -> ReconcileConfig:
    """Validate the reconcile mode's environment and event; ConfigError names the bad one."""
    _refuse_removed(env)
    values: dict[str, str] = {}
    for name in ("INPUT_BUCKET", "OUTPUT_BUCKET", "QUEUE_URL"):
        value = _setting(env, name)
        if value is None:
            raise ConfigError(name, "is required in reconcile mode")
        values[name] = value
    older = event.get("older_than_s", DEFAULT_OLDER_THAN_S)
    if (isinstance(older, bool) or not isinstance(older, int | float)
            or not math.isfinite(older) or older < 0):
        raise ConfigError("older_than_s", f"must be a number of seconds >= 0, got {older!r}")
    prefix = event.get("prefix", "")
    if not isinstance(prefix, str):
        raise ConfigError("prefix", f"must be a string, got {prefix!r}")
    dry_run = event.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise ConfigError("dry_run", f"must be true or false, got {dry_run!r}")
    return ReconcileConfig(
        input_bucket=values["INPUT_BUCKET"], output_bucket=values["OUTPUT_BUCKET"],
        # Not stripped like the others: a prefix is data, and may be empty.
        output_prefix=env.get("OUTPUT_PREFIX", ""),
        queue_url=_queue_url(values["QUEUE_URL"]),
        older_than_s=float(older), prefix=prefix, dry_run=dry_run,
    )


def _refuse_removed(env: Mapping[str, str]) -> None:
    for name, problem in _REMOVED.items():
        if _setting(env, name) is not None:
            raise ConfigError(name, problem)


def _queue_url(value: str) -> str:
    if not _QUEUE_URL.fullmatch(value):
        raise ConfigError("QUEUE_URL", f"is not the URL of an SQS standard queue "
                                       f"(https://sqs.<region>.amazonaws.com/<account>/<name>): "
                                       f"{value!r}")
    return value


def _setting(env: Mapping[str, str], name: str) -> str | None:
    # Templates often pass "" for an unset optional parameter: treat as unset.
    value = env.get(name, "").strip()
    return value or None
