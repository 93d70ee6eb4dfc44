"""Bucket listings for the Lambda's reconcile mode, and its S3 client.

The current version of every object, as worker/storage/s3.py ``S3Store.list_objects``
lists them (ListObjectVersions, latest only, delete markers skipped), so
the job ids computed from them are the daemon's. botocore's errors become
ListingError here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3  # type: ignore[import-untyped, unused-ignore]
from botocore.config import Config  # type: ignore[import-untyped, unused-ignore]
from botocore.exceptions import (  # type: ignore[import-untyped, unused-ignore]
    BotoCoreError,
    ClientError,
)

from processor_shared.aws_edge import LIST_CLIENT, error_reply

#: Listings are idempotent: the standard retries and bounded timeouts (aws_edge.LIST_CLIENT).
CLIENT_CONFIG = Config(**LIST_CLIENT.config())
#: Version ids that mean "no version" (unversioned buckets list "null").
_NO_VERSION = frozenset({"", "null"})


@dataclass(frozen=True)
class ListedObject:
    """One object version as a listing shows it; ``etag`` without quotes."""

    key: str
    version_id: str | None
    etag: str | None
    last_modified: float  # epoch seconds


class ListingError(Exception):
    """A bucket could not be listed; ``code`` is the AWS error code or botocore error name."""

    def __init__(self, bucket: str, prefix: str, code: str, message: str) -> None:
        super().__init__(f"listing s3://{bucket}/{prefix}: {code}: {message}")
        self.bucket = bucket
        self.code = code
        self.message = message


def make_client() -> Any:
    """A boto3 S3 client from the standard AWS environment (endpoint, region, credentials)."""
    return boto3.session.Session().client("s3", config=CLIENT_CONFIG)


def list_objects(client: Any, bucket: str, prefix: str = "") -> Iterator[ListedObject]:
    """The current version of every object under ``prefix``; raises ListingError."""
    try:
        paginator = client.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for version in page.get("Versions") or []:
                if not version.get("IsLatest", True):
                    continue
                version_id = version.get("VersionId")
                etag = str(version.get("ETag") or "").strip().strip('"')
                yield ListedObject(
                    key=version["Key"],
                    version_id=None if version_id in _NO_VERSION else version_id,
                    etag=etag or None,
                    last_modified=version["LastModified"].timestamp(),
                )
    except (ClientError, BotoCoreError) as exc:
        raise ListingError(bucket, prefix, *error_reply(exc)) from exc


def list_keys_between(client: Any, bucket: str, prefix: str, start_after: str, last: str) -> Iterator[str]:
    """The keys under ``prefix`` after ``start_after``, up to ``last`` (S3's order); raises ListingError.

    ListObjectsV2 lists in UTF-8 binary order (which is Python's order of str), from
    StartAfter on; the listing stops at the first key past ``last``, so a range of the
    bucket costs the pages of that range only.
    """
    try:
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix, StartAfter=start_after):
            for item in page.get("Contents") or []:
                key = str(item["Key"])
                if key > last:
                    return
                yield key
    except (ClientError, BotoCoreError) as exc:
        raise ListingError(bucket, prefix, *error_reply(exc)) from exc


def list_keys(client: Any, bucket: str, prefix: str = "") -> Iterator[str]:
    """Every current key under ``prefix`` (ListObjectsV2: only s3:ListBucket is needed)."""
    try:
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents") or []:
                yield str(item["Key"])
    except (ClientError, BotoCoreError) as exc:
        raise ListingError(bucket, prefix, *error_reply(exc)) from exc
