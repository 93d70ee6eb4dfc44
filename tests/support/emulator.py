"""The credentials every client and child process uses against the moto server on loopback,
and the buckets a test creates there."""

from __future__ import annotations

from typing import Any

#: Dummy credentials and region: the emulator accepts any, and nothing must reach real AWS.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}


def with_buckets(s3: Any, *names: str) -> Any:
    """``s3`` (a boto3 client on the emulator) once the buckets ``names`` exist."""
    for name in names:
        s3.create_bucket(Bucket=name)
    return s3
