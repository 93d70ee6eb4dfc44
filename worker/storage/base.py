"""What the pipeline needs from an object store, and how a download is verified.

``worker.storage.s3.S3Store`` implements ``ObjectStore`` on boto3; tests use an
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
    """The calls the pipeline makes; implementations raise StorageError only, and let an
    ``Interrupted`` raised by a ``progress`` callback (a stop request) out as it is."""

    def head(
        self, bucket: str, key: str, *, version_id: str | None = None, etag: str | None = None
    ) -> ObjectInfo: ...

    def download(
        self, bucket: str, key: str, dest: Path, *, version_id: str | None = None,
        size: int | None = None, etag: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """``size``/``etag``: what a HEAD just returned, so the store need not ask again."""

    def upload_file(
        self, src: Path, bucket: str, key: str, *, content_type: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None: ...

    def put_json(self, bucket: str, key: str, document: Mapping[str, Any]) -> None: ...

    def delete(self, bucket: str, key: str) -> None: ...

    def read_json(self, bucket: str, key: str) -> dict[str, Any] | None:
        """A small JSON object (a manifest); None when there is none, or it is not a JSON object."""


@dataclass(frozen=True)
class Digests:
    sha256: str
    #: Only when asked for (``digest_file(md5=True)``): hex, as a plain ETag.
    md5: str | None = None
    #: Only when asked for: base64 of the big-endian CRC32, as S3 reports it.
    crc32: str | None = None


def digest_file(path: Path, *, md5: bool = False, crc32: bool = False) -> Digests:
    """SHA-256 of a file, plus MD5 and/or CRC32 when asked, in one streaming pass."""
    sha = hashlib.sha256()
    md5_hash = hashlib.md5(usedforsecurity=False) if md5 else None
    crc = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            sha.update(chunk)
            if md5_hash is not None:
                md5_hash.update(chunk)
            if crc32:
                crc = zlib.crc32(chunk, crc)
    return Digests(
        sha.hexdigest(),
        md5_hash.hexdigest() if md5_hash is not None else None,
        base64.b64encode(crc.to_bytes(4, "big")).decode() if crc32 else None,
    )


def verify_download(path: Path, info: ObjectInfo, what: str) -> tuple[Digests, str]:
    """Check the file against the strongest checksum S3 gave; return digests and the method.

    Order: S3's full-object SHA-256, then its CRC32, then an MD5 ETag; a
    multipart or SSE-KMS object without checksums is checked by size only.
    Only the SHA-256 (for the manifest) and the one checksum the method needs
    are computed, in a single pass over the file.
    A mismatch is a retryable StorageError (the bytes were damaged in transit).
    """
    got = path.stat().st_size
    if got != info.size:
        raise StorageError(f"{what}: downloaded {got} bytes, expected {info.size}",
                           retryable=True, code="SizeMismatch")
    method = _method(info)
    digests = digest_file(path, md5=method == "md5-etag", crc32=method == "crc32")
    if method == "sha256":
        expected = info.checksums["sha256"]
        actual = base64.b64encode(bytes.fromhex(digests.sha256)).decode()
    elif method == "crc32":
        expected, actual = info.checksums["crc32"], str(digests.crc32)
    elif method == "md5-etag":
        expected, actual = str(info.etag), str(digests.md5)
    else:
        return digests, method
    if expected != actual:
        raise StorageError(f"{what}: {method} mismatch (S3 says {expected}, got {actual})",
                           retryable=True, code="ChecksumMismatch")
    return digests, method


def _method(info: ObjectInfo) -> str:
    if info.checksums.get("sha256"):
        return "sha256"
    if info.checksums.get("crc32"):
        return "crc32"
    if info.etag and _MD5_ETAG.match(info.etag) and info.sse not in _OPAQUE_ETAG_SSE \
            and not info.sse_customer:
        return "md5-etag"
    return "size"
