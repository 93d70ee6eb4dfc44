"""S3 event notification -> job requests. Pure: no I/O, no boto3.

S3 URL-encodes object keys in event notifications (form encoding: a space
arrives as ``+``, a literal ``+`` as ``%2B``). This module is the edge where
the key is decoded, with ``unquote_plus``, exactly once; everything past it
(the SSM parameters, the daemon, the ledger) sees the key as stored in S3.
Decoding twice turns ``a%2525b`` into ``a%b`` instead of ``a%25b`` -- the
raw-vs-decoded confusion that powertools' S3 event class invites.

Outcomes of a parse::

    ParsedEvent
      requests  JobRequest per ObjectCreated:* record
      skipped   Skipped per record we deliberately ignore (other events,
                other sources, folder markers) -- logged, not an error
      errors    MalformedRecord per record we cannot read -- the handler sends
                the good records, then fails the invocation
    MalformedEvent (raised)  the payload as a whole is not an S3 notification
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote_plus

#: Only these produce jobs. S3 sends event names without the ``s3:`` prefix
#: used in notification configurations; hand-written events often carry it.
CREATED_PREFIX = "ObjectCreated:"
#: The ``eventSource`` of records S3 writes (other services reuse the shape).
S3_EVENT_SOURCE = "aws:s3"
#: The payload S3 sends once when a notification configuration is saved.
TEST_EVENT = "s3:TestEvent"
#: Version ids that mean "no version": S3 omits the field for unversioned
#: buckets, but hand-built and re-driven events carry "" or "null".
_NO_VERSION = frozenset({"", "null"})


@dataclass(frozen=True)
class JobRequest:
    """One object to submit; ``key`` is decoded, ``etag`` has no quotes."""

    bucket: str
    key: str
    version_id: str | None
    etag: str | None
    event_name: str
    sequencer: str | None


@dataclass(frozen=True)
class Skipped:
    """A record deliberately not turned into a job, and why.

    ``bucket`` and ``key`` are filled in when the record carries them, so the
    log line says which object was ignored.
    """

    index: int
    reason: str
    bucket: str | None = None
    key: str | None = None


class MalformedEvent(ValueError):
    """The payload is not an S3 event notification at all; ``field`` names where."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class MalformedRecord(Exception):
    """One record cannot be read; ``field`` is its JSON path, e.g. ``Records[2].s3.object.key``."""

    def __init__(self, index: int, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.index = index
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class ParsedEvent:
    """Everything one invocation's event turned into."""

    requests: list[JobRequest] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    errors: list[MalformedRecord] = field(default_factory=list)
    #: True for the ``s3:TestEvent`` payload (no records, nothing to do).
    is_test_event: bool = False


def parse_event(event: object) -> ParsedEvent:
    """Split an S3 event notification into job requests, skips and bad records.

    Raises MalformedEvent only when the payload as a whole is unusable; a bad
    record is collected in ``errors`` so the other records still go through.
    """
    if not isinstance(event, Mapping):
        raise MalformedEvent("event", f"expected a JSON object, got {_type_name(event)}")
    if "Records" not in event and event.get("Event") == TEST_EVENT:
        return ParsedEvent(is_test_event=True)
    records = event.get("Records")
    if records is None:
        raise MalformedEvent("Records", "missing: not an S3 event notification")
    if not isinstance(records, list):
        raise MalformedEvent("Records", f"expected a list, got {_type_name(records)}")

    parsed = ParsedEvent()
    for index, record in enumerate(records):
        try:
            outcome = _parse_record(index, record)
        except MalformedRecord as exc:
            parsed.errors.append(exc)
        else:
            if isinstance(outcome, Skipped):
                parsed.skipped.append(outcome)
            else:
                parsed.requests.append(outcome)
    return parsed


def _parse_record(index: int, record: object) -> JobRequest | Skipped:
    path = f"Records[{index}]"
    if not isinstance(record, Mapping):
        raise MalformedRecord(index, path, f"expected a JSON object, got {_type_name(record)}")

    # S3 always sets eventSource; a record without one is not something we
    # understand, so it is an error rather than a silent skip.
    source = _required_str(index, record, "eventSource", path)
    if source != S3_EVENT_SOURCE:
        bucket, key = _location_if_readable(index, record, path)
        return Skipped(index, f"eventSource is {source!r}, not {S3_EVENT_SOURCE!r}", bucket, key)

    event_name = _required_str(index, record, "eventName", path).removeprefix("s3:")
    if not event_name.startswith(CREATED_PREFIX):
        # Not our business, so a garbled location must not fail the batch.
        bucket, key = _location_if_readable(index, record, path)
        return Skipped(index, f"event {event_name!r} is not {CREATED_PREFIX}*", bucket, key)

    bucket, key = _location(index, record, path)
    if key.endswith("/"):
        # Zero-byte "folder" objects the console creates; nothing to process.
        return Skipped(index, "folder marker (key ends with '/')", bucket, key)

    obj = _child(index, _child(index, record, "s3", path), "object", f"{path}.s3")
    obj_path = f"{path}.s3.object"
    version_id = _optional_str(index, obj, "versionId", obj_path)
    etag = _optional_str(index, obj, "eTag", obj_path)
    if etag is not None:
        # Some producers copy the quoted HTTP ETag header value into events.
        etag = etag.strip('"') or None
    return JobRequest(
        bucket=bucket,
        key=key,
        version_id=None if version_id in _NO_VERSION else version_id,
        etag=etag,
        event_name=event_name,
        sequencer=_optional_str(index, obj, "sequencer", obj_path),
    )


def _location(index: int, record: Mapping[str, object], path: str) -> tuple[str, str]:
    """(bucket, decoded key) of a record, or MalformedRecord naming the bad field."""
    s3 = _child(index, record, "s3", path)
    bucket = _required_str(index, _child(index, s3, "bucket", f"{path}.s3"), "name",
                           f"{path}.s3.bucket")
    key_path = f"{path}.s3.object"
    raw_key = _required_str(index, _child(index, s3, "object", f"{path}.s3"), "key", key_path)
    try:
        # errors="strict": the default "replace" would quietly turn a bad
        # escape into U+FFFD and send a key that does not exist.
        key = unquote_plus(raw_key, errors="strict")
    except UnicodeDecodeError as exc:
        raise MalformedRecord(index, f"{key_path}.key",
                              f"not valid percent-encoded UTF-8: {raw_key!r}") from exc
    return bucket, key


def _location_if_readable(
    index: int, record: Mapping[str, object], path: str
) -> tuple[str | None, str | None]:
    try:
        return _location(index, record, path)
    except MalformedRecord:
        return None, None


def _child(
    index: int, parent: Mapping[str, object], name: str, path: str
) -> Mapping[str, object]:
    value = parent.get(name)
    if not isinstance(value, Mapping):
        raise MalformedRecord(index, f"{path}.{name}", _problem(value, "a JSON object"))
    return value


def _required_str(index: int, parent: Mapping[str, object], name: str, path: str) -> str:
    value = parent.get(name)
    if not isinstance(value, str) or not value:
        raise MalformedRecord(index, f"{path}.{name}", _problem(value, "a non-empty string"))
    return value


def _optional_str(index: int, parent: Mapping[str, object], name: str, path: str) -> str | None:
    value = parent.get(name)
    if value is None or isinstance(value, str):
        return value
    raise MalformedRecord(index, f"{path}.{name}", _problem(value, "a string"))


def _problem(value: object, wanted: str) -> str:
    if value is None:
        return "missing"
    if value == "":
        return "empty"
    return f"expected {wanted}, got {_type_name(value)}"


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__
