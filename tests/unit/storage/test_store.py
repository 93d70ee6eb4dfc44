"""Download verification: the strongest checksum S3 reported, else the MD5 ETag, else size."""

from __future__ import annotations

import base64
import hashlib
import zlib
from pathlib import Path
from typing import Any

import pytest

from worker.errors import StorageError
from worker.storage.base import ObjectInfo, digest_file, verify_download

BODY = b"the quick brown fox\n" * 1000
SHA256 = base64.b64encode(hashlib.sha256(BODY).digest()).decode()
CRC32 = base64.b64encode(zlib.crc32(BODY).to_bytes(4, "big")).decode()
MD5 = hashlib.md5(BODY).hexdigest()


@pytest.fixture
def downloaded(tmp_path: Path) -> Path:
    path = tmp_path / "input"
    path.write_bytes(BODY)
    return path


def info(**kw: Any) -> ObjectInfo:
    return ObjectInfo(size=kw.pop("size", len(BODY)), etag=kw.pop("etag", None), version_id=None, **kw)


def test_digests_in_one_pass(downloaded: Path) -> None:
    d = digest_file(downloaded, md5=True, crc32=True)
    assert d.sha256 == hashlib.sha256(BODY).hexdigest() and d.md5 == MD5 and d.crc32 == CRC32


def test_only_the_asked_digests_are_computed(downloaded: Path) -> None:
    d = digest_file(downloaded)
    assert d.sha256 == hashlib.sha256(BODY).hexdigest() and d.md5 is None and d.crc32 is None


@pytest.mark.parametrize("meta,method", [
    ({"checksums": {"sha256": SHA256, "crc32": CRC32}, "etag": MD5}, "sha256"),
    ({"checksums": {"crc32": CRC32}, "etag": MD5}, "crc32"),
    ({"etag": MD5}, "md5-etag"),
    ({"etag": MD5, "sse": "AES256"}, "md5-etag"),
    ({"etag": "0" * 32, "sse": "aws:kms"}, "size"),  # KMS ETags are not MD5s
    ({"etag": "0" * 32, "sse_customer": True}, "size"),
    ({"etag": MD5[:32] + "-3"}, "size"),  # multipart ETag
    ({}, "size"),
])
def test_verification_method(downloaded: Path, meta: dict[str, object], method: str) -> None:
    digests, used = verify_download(downloaded, info(**meta), "download of s3://b/k")
    assert used == method and digests.sha256 == hashlib.sha256(BODY).hexdigest()
    # Only the checksum the method compares is computed besides the manifest's SHA-256.
    assert (digests.md5 is not None, digests.crc32 is not None) == (method == "md5-etag", method == "crc32")


@pytest.mark.parametrize("meta,fragment", [
    ({"checksums": {"sha256": base64.b64encode(b"x" * 32).decode()}}, "sha256 mismatch"),
    ({"checksums": {"crc32": "AAAAAA=="}}, "crc32 mismatch"),
    ({"etag": "f" * 32}, "md5-etag mismatch"),
    ({"size": len(BODY) + 1}, "expected"),
])
def test_damaged_download_is_a_retryable_error(
    downloaded: Path, meta: dict[str, object], fragment: str
) -> None:
    with pytest.raises(StorageError) as caught:
        verify_download(downloaded, info(**meta), "download of s3://b/k")
    assert caught.value.retryable and fragment in str(caught.value) and "s3://b/k" in str(caught.value)
