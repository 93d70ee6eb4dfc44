"""In-memory fakes for pure-logic tests: object store, work queue, disk usage (adapters use the emulator)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from worker.errors import ObjectChanged, StorageError
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

    def put(self, bucket: str, key: str, body: bytes) -> str:
        self.objects[(bucket, key)] = body
        return hashlib.md5(body).hexdigest()

    def head(self, bucket: str, key: str, *, version_id: str | None = None,
             etag: str | None = None) -> ObjectInfo:
        self.calls.append(("head", bucket, key))
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
        self.download_hints.append((size, etag))
        body = self.objects[(bucket, key)]
        dest.write_bytes(body)
        if progress:
            progress(len(body))

    def upload_file(self, src: Path, bucket: str, key: str, *, content_type: str | None = None,
                    progress: Callable[[int], None] | None = None) -> None:
        self.calls.append(("upload", bucket, key))
        self.objects[(bucket, key)] = src.read_bytes()

    def put_json(self, bucket: str, key: str, document: Mapping[str, Any]) -> None:
        self.calls.append(("put_json", bucket, key))
        self.objects[(bucket, key)] = json.dumps(document).encode()

    def delete(self, bucket: str, key: str) -> None:
        self.calls.append(("delete", bucket, key))
        self.objects.pop((bucket, key), None)

    def read_json(self, bucket: str, key: str) -> dict[str, Any] | None:
        self.calls.append(("read_json", bucket, key))
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
    #: Shared with a FakeStore's ``calls`` to check the order of writes and deletes.
    journal: list[tuple[str, str, str]] | None = None
    _next: int = 0

    def send(self, body: str) -> str:
        self._next += 1
        self.messages.append(_Message(f"m-{self._next}", body))
        return f"m-{self._next}"

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

    def close(self) -> None:
        self.calls.append(("close", None))


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
