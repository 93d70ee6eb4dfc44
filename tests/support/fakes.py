"""In-memory fakes for pure-logic tests: object store, work queue, disk usage (adapters use the emulator)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from worker.errors import ObjectChanged, StorageError
from worker.fleet.record import FleetJob, FleetState, RecordConflict
from worker.fleet.workqueue import QueueError, Received
from worker.storage.base import ObjectInfo


@dataclass
class FakeStore:
    """Buckets as dicts; records every call so tests can check the order of writes."""

    objects: dict[tuple[str, str], bytes] = field(default_factory=dict)
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    fail_head: Exception | None = None
    size_override: int | None = None
    #: (size, etag) each download was told by the pipeline.
    download_hints: list[tuple[int | None, str | None]] = field(default_factory=list)
    #: S3 is down: every call but ``put`` (the test's own) fails retryably.
    down: bool = False

    def _outage(self, what: str, bucket: str, key: str) -> None:
        if self.down:
            raise StorageError(f"{what} s3://{bucket}/{key}: transport error: connection refused",
                               retryable=True, code="Transport")

    def put(self, bucket: str, key: str, body: bytes) -> str:
        self.objects[(bucket, key)] = body
        return hashlib.md5(body).hexdigest()

    def head(self, bucket: str, key: str, *, version_id: str | None = None,
             etag: str | None = None) -> ObjectInfo:
        self.calls.append(("head", bucket, key))
        self._outage("head", bucket, key)
        if self.fail_head is not None:
            raise self.fail_head
        if (bucket, key) not in self.objects:
            raise StorageError(f"head s3://{bucket}/{key}: object not found (NoSuchKey)",
                               retryable=False, code="NoSuchKey")
        body = self.objects[(bucket, key)]
        current = hashlib.md5(body).hexdigest()
        if etag and not version_id and etag != current:
            raise ObjectChanged(f"head s3://{bucket}/{key}: etag is {current}, not {etag}")
        size = self.size_override if self.size_override is not None else len(body)
        return ObjectInfo(size, current, version_id)

    def download(self, bucket: str, key: str, dest: Path, *, version_id: str | None = None,
                 size: int | None = None, etag: str | None = None,
                 progress: Callable[[int], None] | None = None) -> None:
        self.calls.append(("download", bucket, key))
        self._outage("download", bucket, key)
        self.download_hints.append((size, etag))
        body = self.objects[(bucket, key)]
        dest.write_bytes(body)
        if progress:
            progress(len(body))

    def upload_file(self, src: Path, bucket: str, key: str, *, content_type: str | None = None,
                    progress: Callable[[int], None] | None = None) -> None:
        self.calls.append(("upload", bucket, key))
        self._outage("upload", bucket, key)
        self.objects[(bucket, key)] = src.read_bytes()

    def put_json(self, bucket: str, key: str, document: Mapping[str, Any]) -> None:
        self.calls.append(("put_json", bucket, key))
        self._outage("put", bucket, key)
        self.objects[(bucket, key)] = json.dumps(document).encode()

    def delete(self, bucket: str, key: str) -> None:
        self.calls.append(("delete", bucket, key))
        self._outage("delete", bucket, key)
        self.objects.pop((bucket, key), None)

    def read_json(self, bucket: str, key: str) -> dict[str, Any] | None:
        self.calls.append(("read_json", bucket, key))
        self._outage("get", bucket, key)
        body = self.objects.get((bucket, key))
        if body is None:
            return None
        document = json.loads(body)
        return document if isinstance(document, dict) else None

    def json(self, bucket: str, key: str) -> Any:
        return json.loads(self.objects[(bucket, key)])


@dataclass
class _Message:
    id: str
    body: str
    receive_count: int = 0
    visible_at: float = 0.0
    receipt: str = ""


@dataclass
class FakeQueue:
    """An in-memory SQS queue: visibility, receive counts, receipt handles; records every call."""

    default_visibility_s: float = 30.0
    messages: list[_Message] = field(default_factory=list)
    calls: list[tuple[str, Any]] = field(default_factory=list)
    #: Raised (in order) by the next receives.
    fail_receive: list[Exception] = field(default_factory=list)
    #: What dead_letter() sent: (body, reason, job id).
    dead_letters: list[tuple[str, str, str | None]] = field(default_factory=list)
    #: Shared with a FakeStore's ``calls`` to check the order of writes and deletes.
    journal: list[tuple[str, str, str]] | None = None
    _next: int = 0

    def receive(self, max_messages: int, wait_s: int) -> list[Any]:
        self.calls.append(("receive", max_messages))
        if self.fail_receive:
            raise self.fail_receive.pop(0)
        now = time.monotonic()
        got = []
        for message in self.messages:
            if len(got) == max_messages:
                break
            if message.visible_at <= now:
                self._next += 1
                message.receive_count += 1
                message.visible_at = now + self.default_visibility_s
                message.receipt = f"r-{self._next}"
                got.append(Received(message.id, message.receipt, message.body, message.receive_count))
        if not got:
            time.sleep(min(wait_s, 0.02))  # a (very short) long poll
        return got

    def _find(self, receipt: str) -> _Message:
        for message in self.messages:
            if message.receipt == receipt:
                return message
        raise QueueError(f"receipt {receipt} is not current", retryable=False, code="ReceiptHandleIsInvalid")

    def set_visibility(self, receipt: str, visibility_s: int) -> None:
        message = self._find(receipt)
        self.calls.append(("set_visibility", (message.id, visibility_s)))
        message.visible_at = time.monotonic() + visibility_s

    def delete(self, receipt: str) -> None:
        message = self._find(receipt)
        self.calls.append(("delete", message.id))
        if self.journal is not None:
            self.journal.append(("queue_delete", message.id, ""))
        self.messages.remove(message)

    def send(self, body: str, delay_s: int = 0) -> str:
        self._next += 1
        message = _Message(f"m-{self._next}", body, visible_at=time.monotonic() + delay_s)
        self.messages.append(message)
        self.calls.append(("send", (message.id, delay_s)))
        return message.id

    def dead_letter(self, body: str, reason: str, job_id: str | None = None) -> bool:
        self.calls.append(("dead_letter", reason))
        self.dead_letters.append((body, reason, job_id))
        return True

    def close(self) -> None:
        self.calls.append(("close", None))


@dataclass
class FakeRecords:
    """The fleet's job records in memory, with the conditional writes of the real table."""

    items: dict[str, FleetJob] = field(default_factory=dict)
    #: Raised (in order) by the next calls of any kind.
    fail: list[Exception] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _check(self) -> None:
        if self.fail:
            raise self.fail.pop(0)

    def get(self, job_id: str) -> FleetJob | None:
        with self._lock:
            self._check()
            return self.items.get(job_id)

    def put(self, record: FleetJob, *, expected_rev: int | None) -> FleetJob:
        with self._lock:
            self._check()
            current = self.items.get(record.job_id)
            if (current.rev if current else None) != expected_rev:
                raise RecordConflict(f"{record.job_id}: rev {expected_rev} is not current")
            written = replace(record, rev=(expected_rev or 0) + 1)
            self.items[record.job_id] = written
            return written

    def renew(self, job_id: str, token: str, lease_until: float, now: float) -> bool:
        with self._lock:
            self._check()
            current = self.items.get(job_id)
            if current is None or current.token != token or current.state is not FleetState.RUNNING:
                return False
            self.items[job_id] = replace(current, lease_until=lease_until, updated_at=now)
            return True

    def newest_for_object(self, bucket: str, key: str, limit: int = 1) -> list[FleetJob]:
        with self._lock:
            found = [r for r in self.items.values() if (r.bucket, r.key) == (bucket, key)]
        return sorted(found, key=lambda r: r.created_at, reverse=True)[:limit]

    def in_state(self, state: FleetState, *, since: float | None = None, until: float | None = None,
                 limit: int | None = None) -> list[FleetJob]:
        with self._lock:
            found = [r for r in self.items.values() if r.state is state
                     and (since is None or r.updated_at >= since)
                     and (until is None or r.updated_at <= until)]
        found.sort(key=lambda r: r.updated_at, reverse=True)
        return found[:limit] if limit is not None else found

    def close(self) -> None:
        pass


class DiskUsage(NamedTuple):
    """What ``shutil.disk_usage`` returns."""

    total: int
    used: int
    free: int


@dataclass
class FakeDisk:
    """``shutil.disk_usage`` of a volume whose free space a test sets."""

    total: int
    free: int
    #: Every path asked about.
    asked: list[Path] = field(default_factory=list)

    def __call__(self, path: Path) -> DiskUsage:
        self.asked.append(path)
        return DiskUsage(self.total, self.total - self.free, self.free)
