"""Fleet targeting: which instances can take a job, and which one gets it.

With ``TARGET_TAG=Key=Value`` the fleet is every *running* EC2 instance with
that tag whose SSM agent is *online*. Each job goes to exactly one of them,
chosen by rendezvous (highest-random-weight) hashing of the job identity:

- every instance gets a weight ``sha256(identity + "\\0" + instance_id)``;
  the job goes to the heaviest, and on failure to the next heaviest, ...;
- a duplicate delivery of the same object version (S3, Lambda and SSM are
  all at-least-once) lands on the same instance, whose ledger dedupes it;
- when an instance leaves, only the jobs it would have had move (spread over
  the others); when one joins it takes about 1/N from each.

A ``Targets`` tag query in SendCommand is deliberately not used: SSM would run
the submit on *every* matching instance, i.e. the same job once per instance.

``identity_of`` and ``rendezvous_order`` are pure. ``InstanceDirectory`` does
the discovery (clients injected) and keeps the list in memory for
``ttl_s`` seconds, so a warm Lambda container does not describe the fleet on
every invocation; an instance that fails delivery is dropped from that list
until the next discovery.

Exceptions::

    DiscoveryError   EC2 could not list the tagged instances (code, message)
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from botocore.exceptions import (  # type: ignore[import-untyped, unused-ignore]
    BotoCoreError,
    ClientError,
)

from lambda_trigger.events import JobRequest
from lambda_trigger.logs import log_line

#: How long a discovered instance list is reused (TARGET_CACHE_SECONDS).
DEFAULT_CACHE_SECONDS = 60.0
#: DescribeInstanceInformation takes at most 50 ids per InstanceIds filter
#: and returns at most 50 items per page (API reference, MaxResults 5..50).
ONLINE_CHECK_CHUNK = 50
#: The agent state that means SendCommand will be picked up now.
ONLINE = "Online"


@dataclass(frozen=True)
class TargetTag:
    """The fleet's EC2 tag, ``Key=Value``."""

    key: str
    value: str

    def __str__(self) -> str:
        return f"{self.key}={self.value}"


def parse_target_tag(text: str) -> TargetTag:
    """``Key=Value`` -> TargetTag; ValueError says what is wrong.

    Split at the first ``=``: tag values may contain ``=``, keys may not in
    practice. ``aws:autoscaling:groupName=my-asg`` targets an ASG directly.
    """
    key, sep, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not sep:
        raise ValueError(f"must be Key=Value (an EC2 tag), got {text!r}: no '='")
    if not key:
        raise ValueError(f"must be Key=Value (an EC2 tag), got {text!r}: the key is empty")
    if not value:
        raise ValueError(f"must be Key=Value (an EC2 tag), got {text!r}: the value is empty")
    return TargetTag(key, value)


def identity_of(request: JobRequest) -> str:
    """The job identity as the daemon frames it (worker/job.py ``Identity.job_id``).

    JSON of ``[bucket, key, version]`` where version is ``v:<version id>``,
    else ``e:<etag>``, else empty: the JSON framing means no field can bleed
    into the next, and using the daemon's notion means "same job" here and
    in the ledger are the same thing.
    """
    if request.version_id:
        version = f"v:{request.version_id}"
    elif request.etag:
        version = f"e:{request.etag}"
    else:
        version = ""
    return json.dumps([request.bucket, request.key, version], ensure_ascii=True)


def weight(identity: str, instance_id: str) -> int:
    """The rendezvous weight: the first 8 bytes of sha256(identity NUL instance) as an int."""
    digest = hashlib.sha256(f"{identity}\0{instance_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def rendezvous_order(identity: str, instances: Sequence[str]) -> list[str]:
    """``instances`` (deduplicated) by weight for ``identity``, heaviest first.

    The first is the job's instance; the rest are the failover order. Ties
    (a 2**-64 event) break by instance id, so the order is total.
    """
    unique = set(instances)
    return sorted(unique, key=lambda instance: (-weight(identity, instance), instance))


class Ec2Client(Protocol):
    """The EC2 call discovery makes; a boto3 EC2 client satisfies it."""

    def describe_instances(self, **kwargs: Any) -> Mapping[str, Any]: ...


class InstanceInformationClient(Protocol):
    """The SSM call the online check makes; a boto3 SSM client satisfies it."""

    def describe_instance_information(self, **kwargs: Any) -> Mapping[str, Any]: ...


class DiscoveryError(Exception):
    """EC2 DescribeInstances failed; ``code`` is the AWS error code or botocore error name."""

    def __init__(self, tag: TargetTag, code: str, message: str) -> None:
        super().__init__(f"listing instances tagged {tag}: {code}: {message}")
        self.tag = tag
        self.code = code
        self.message = message


class InstanceDirectory:
    """The online instances of one tagged fleet, discovered and cached.

    Discovery is EC2 ``DescribeInstances`` (tag + ``running``), narrowed to
    the instances SSM reports ``Online``. When the online check itself fails
    (no permission, an emulator without DescribeInstanceInformation, an
    outage) the running list is used as is: SendCommand answers
    InvalidInstanceId for an instance whose agent is not registered, and the
    failover moves on. That fallback is logged when it starts (and when the
    check works again), not on every discovery.

    Not thread-safe: one Lambda container runs one invocation at a time.
    """

    def __init__(
        self,
        ec2: Ec2Client,
        ssm: InstanceInformationClient,
        tag: TargetTag,
        *,
        ttl_s: float = DEFAULT_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ec2 = ec2
        self._ssm = ssm
        self.tag = tag
        self._ttl_s = ttl_s
        self._clock = clock
        self._instances: list[str] | None = None
        self._fetched_at = 0.0
        self._online_check_failing = False

    def instances(self) -> list[str]:
        """The current candidates (sorted), discovering them if the cache is stale.

        Raises DiscoveryError when EC2 cannot be asked and nothing is cached;
        with a previous list in hand, that list is kept for another ``ttl_s``
        instead (failover copes with instances that have gone since).
        """
        now = self._clock()
        if self._instances is None or now - self._fetched_at >= self._ttl_s:
            try:
                discovered = self._discover()
            except DiscoveryError as exc:
                if not self._instances:
                    raise
                log_line(logging.WARNING, "discovery_failed", error=f"{exc.code}: {exc.message}",
                         reason=f"keeping the {len(self._instances)} instance(s) discovered before")
            else:
                self._instances = discovered
            self._fetched_at = now
        return list(self._instances or [])

    def drop(self, instance_id: str, error: str) -> None:
        """Forget ``instance_id`` until the next discovery: it just failed delivery."""
        if self._instances is not None and instance_id in self._instances:
            self._instances.remove(instance_id)
            log_line(logging.WARNING, "instance_dropped", instance_id=instance_id, error=error,
                     reason=f"{len(self._instances)} instance(s) tagged {self.tag} left "
                            "until the next discovery")

    def _discover(self) -> list[str]:
        running = self._running()
        online = self._online(running)
        instances = sorted(running if online is None else online)
        checked = "not checked" if online is None else f"{len(instances)} online"
        log_line(logging.INFO, "instances_discovered",
                 reason=f"tag {self.tag}: {len(running)} running, {checked}: "
                        + (", ".join(instances) or "none"))
        return instances

    def _running(self) -> list[str]:
        filters = [{"Name": f"tag:{self.tag.key}", "Values": [self.tag.value]},
                   {"Name": "instance-state-name", "Values": ["running"]}]
        found: set[str] = set()
        try:
            for page in _pages(self._ec2.describe_instances, Filters=filters):
                for reservation in page.get("Reservations") or []:
                    for instance in reservation.get("Instances") or []:
                        instance_id = instance.get("InstanceId")
                        if isinstance(instance_id, str) and instance_id:
                            found.add(instance_id)
        except ClientError as exc:
            raise DiscoveryError(self.tag, _error_code(exc), _error_message(exc)) from exc
        except BotoCoreError as exc:
            raise DiscoveryError(self.tag, type(exc).__name__, str(exc)) from exc
        return sorted(found)

    def _online(self, running: Sequence[str]) -> set[str] | None:
        """The subset SSM reports Online, or None when the check could not be made."""
        online: set[str] = set()
        try:
            for start in range(0, len(running), ONLINE_CHECK_CHUNK):
                chunk = list(running[start:start + ONLINE_CHECK_CHUNK])
                for page in _pages(self._ssm.describe_instance_information,
                                   Filters=[{"Key": "InstanceIds", "Values": chunk}],
                                   MaxResults=ONLINE_CHECK_CHUNK):
                    for info in page.get("InstanceInformationList") or []:
                        if info.get("PingStatus") == ONLINE and info.get("InstanceId") in chunk:
                            online.add(info["InstanceId"])
        except (ClientError, BotoCoreError) as exc:
            if not self._online_check_failing:
                self._online_check_failing = True
                code = _error_code(exc) if isinstance(exc, ClientError) else type(exc).__name__
                log_line(logging.WARNING, "online_check_unavailable", error=f"{code}: {exc}",
                         reason="DescribeInstanceInformation failed; using every running "
                                f"instance tagged {self.tag}, SendCommand failover skips "
                                "offline agents")
            return None
        if self._online_check_failing:
            self._online_check_failing = False
            log_line(logging.INFO, "online_check_restored",
                     reason="DescribeInstanceInformation works again")
        return online


def _pages(call: Callable[..., Mapping[str, Any]], **kwargs: Any) -> Iterator[Mapping[str, Any]]:
    """Follow NextToken (fakes need only the method, not botocore paginators)."""
    token: str | None = None
    while True:
        page = call(**kwargs, **({"NextToken": token} if token else {}))
        yield page
        token = page.get("NextToken")
        if not token:
            return


def _error_code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code") or "ClientError")


def _error_message(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Message") or exc)
