"""Job identity: what makes two deliveries the same job, and the id derived from it.

A job is identified by ``(bucket, key, version)`` where *version* is the S3
version id when the bucket is versioned, else the object's ETag. The same
identity is processed once however often S3, Lambda or SSM deliver it; a new
version of the same key is a new job. The job id is derived from the identity
so every delivery of one object version maps to the same id; the rule itself
lives in processor_shared.layout (``job_id``), which the Lambda's reconcile mode
shares.

Stdlib only and no ``dataclasses``: ``processorctl submit`` imports this.
"""

from __future__ import annotations

import binascii
import re
from typing import NamedTuple

import processor_shared.layout


class Identity(NamedTuple):
    """What makes two deliveries the same job."""

    bucket: str
    key: str
    version_id: str | None = None
    etag: str | None = None

    @property
    def version(self) -> str:
        """The version part of the identity: version id, else ETag, else empty."""
        return processor_shared.layout.version_of(self.version_id, self.etag)

    def job_id(self) -> str:
        """A stable, path-safe id: the same identity always yields the same id.

        The rule is processor_shared.layout.job_id, which the Lambda shares.
        """
        return processor_shared.layout.job_id(self.bucket, self.key, self.version_id, self.etag)


#: base64url's alphabet; ``=`` padding is optional (the SSM document sends none).
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}\Z")


#: S3's rules for a bucket name (general purpose buckets): 3-63 characters of lowercase
#: letters, digits, dots and hyphens, starting and ending with a letter or digit.
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IPV4_LIKE = re.compile(r"^\d+\.\d+\.\d+\.\d+$")
_RESERVED_BUCKET_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_BUCKET_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


def bucket_name_problem(name: str) -> str | None:
    """Why S3 could never have a bucket called ``name``, or None when it could.

    The rules of https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html
    (general purpose buckets); a name failing them can only fail later, in botocore.
    """
    if not 3 <= len(name) <= 63:
        return f"must be 3 to 63 characters long, not {len(name)}"
    if not _BUCKET_NAME.match(name):
        return ("may hold only lowercase letters, digits, '.' and '-', and must begin "
                "and end with a letter or digit")
    if ".." in name:
        return "must not hold two adjacent periods"
    if _IPV4_LIKE.match(name):
        return "must not look like an IP address"
    for prefix in _RESERVED_BUCKET_PREFIXES:
        if name.startswith(prefix):
            return f"must not begin with {prefix!r} (reserved by S3)"
    for suffix in _RESERVED_BUCKET_SUFFIXES:
        if name.endswith(suffix):
            return f"must not end with {suffix!r} (reserved by S3)"
    return None


def encode_key_base64(key: str) -> str:
    """The key's UTF-8 bytes as unpadded base64url: what decode_key_base64 reads back."""
    return binascii.b2a_base64(key.encode("utf-8"), newline=False).decode("ascii").rstrip("=").replace(
        "+", "-").replace("/", "_")


def decode_key_base64(text: str) -> str:
    """The key carried as base64url of its UTF-8 bytes (the submit document's KeyBase64).

    Strict, so one key has one spelling: only the base64url alphabet, padding
    optional but correct, no stray bits in the last character, valid UTF-8.
    Raises ValueError saying what is wrong.
    """
    if not text:
        raise ValueError("is empty")
    if not _BASE64URL.match(text):
        raise ValueError("is not base64url (only A-Z a-z 0-9 - _ and '=' padding)")
    bare = text.rstrip("=")
    if len(bare) % 4 == 1:
        raise ValueError(f"is not base64url: {len(bare)} characters cannot encode whole bytes")
    if text != bare and len(text) % 4:
        raise ValueError("is not base64url: wrong '=' padding (give full padding or none)")
    try:
        raw = binascii.a2b_base64(bare.replace("-", "+").replace("_", "/") + "=" * (-len(bare) % 4),
                                  strict_mode=True)
    except binascii.Error as exc:
        raise ValueError(f"is not base64url: {exc}") from None
    if binascii.b2a_base64(raw, newline=False).decode().rstrip("=") != bare.replace("-", "+").replace(
            "_", "/"):
        raise ValueError("is not base64url in its canonical form (stray bits in the last character)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"decodes to bytes that are not UTF-8 ({exc.reason} at byte {exc.start})") from None


def normalise_etag(etag: str | None) -> str | None:
    """ETags arrive quoted from S3 APIs and unquoted in events; store them bare."""
    if etag is None:
        return None
    bare = etag.strip().strip('"')
    return bare or None
