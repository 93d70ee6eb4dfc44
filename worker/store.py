"""What the pipeline needs from an object store, and how a download is verified.

``worker.s3.S3Store`` implements ``ObjectStore`` on boto3; tests use an
in-memory fake. Nothing here imports boto3.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from worker.errors import StorageError

#: An ETag that is the MD5 of the object: single-part upload, not SSE-KMS/SSE-C.
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")

#: Encryption modes under which S3's ETag is not the MD5 of the content.
_OPAQUE_ETAG_SSE = frozenset({"aws:kms", "aws:kms:dsse"})

#: Read size when hashing a file: large enough to be fast, small enough to be flat.
_HASH_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    etag: str | None
    version_id: str | None
    #: Full-object checksums S3 reported, base64 as S3 sends them: {"sha256": …, "crc32": …}.
    checksums: Mapping[str, str] = field(default_factory=dict)
    #: Server-side encryption ("AES256", "aws:kms", …), or None.
    sse: str | None = None
    #: True when the object was encrypted with a customer-provided key (SSE-C).
    sse_customer: bool = False


@dataclass(frozen=True)
class Listed:
    """One object as a bucket listing shows it."""

    key: str
    version_id: str | None
    etag: str | None
    size: int
    last_modified: float  # epoch seconds


class ObjectStore(Protocol):
    """The calls the pipeline makes; implementations raise StorageError only."""

    def head(
        self, bucket: str, key: str, *, version_id: str | None = None, etag: str | None = None
    ) -> ObjectInfo: ...

    def download(
        self, bucket: str, key: str, dest: Path, *, version_id: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None: ...

    def upload_file(
        self, src: Path, bucket: str, key: str, *, content_type: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None: ...

    def put_json(self, bucket: str, key: str, document: Mapping[str, Any]) -> None: ...

    def delete(self, bucket: str, key: str) -> None: ...


@dataclass(frozen=True)
class Digests:
    sha256: str
    md5: str
    crc32: str  # base64 of the big-endian CRC32, as S3 reports it


def digest_file(path: Path) -> Digests:
    """SHA-256, MD5 and CRC32 of a file in one streaming pass."""
    sha256, md5, crc = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            sha256.update(chunk)
            md5.update(chunk)
            crc = zlib.crc32(chunk, crc)
    return Digests(sha256.hexdigest(), md5.hexdigest(),
                   base64.b64encode(crc.to_bytes(4, "big")).decode())


def verify_download(path: Path, info: ObjectInfo, what: str) -> tuple[Digests, str]:
    """Check the file against the strongest checksum S3 gave; return digests and the method.

    Order: S3's full-object SHA-256, then its CRC32, then an MD5 ETag; a
    multipart or SSE-KMS object without checksums is checked by size only.
    A mismatch is a retryable StorageError (the bytes were damaged in transit).
    """
    got = path.stat().st_size
    if got != info.size:
        raise StorageError(f"{what}: downloaded {got} bytes, expected {info.size}",
                           retryable=True, code="SizeMismatch")
    digests = digest_file(path)
    sha256 = info.checksums.get("sha256")
    crc32 = info.checksums.get("crc32")
    if sha256:
        expected, actual, method = sha256, base64.b64encode(bytes.fromhex(digests.sha256)).decode(), "sha256"
    elif crc32:
        expected, actual, method = crc32, digests.crc32, "crc32"
    elif info.etag and _MD5_ETAG.match(info.etag) and info.sse not in _OPAQUE_ETAG_SSE \
            and not info.sse_customer:
        expected, actual, method = info.etag, digests.md5, "md5-etag"
    else:
        return digests, "size"
    if expected != actual:
        raise StorageError(f"{what}: {method} mismatch (S3 says {expected}, got {actual})",
                           retryable=True, code="ChecksumMismatch")
    return digests, method
