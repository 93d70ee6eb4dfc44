"""The credentials every client and child process uses against the moto server on loopback,
the environment that aims boto3 at it, and the buckets a test creates there."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

#: Dummy credentials and region: the emulator accepts any, and nothing must reach real AWS.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}


def with_buckets(s3: Any, *names: str) -> Any:
    """``s3`` (a boto3 client on the emulator) once the buckets ``names`` exist."""
    for name in names:
        s3.create_bucket(Bucket=name)
    return s3


def aim_at_emulator(monkeypatch: pytest.MonkeyPatch, endpoint: str, home: Path,
                    unset: tuple[str, ...] = ()) -> None:
    """The standard AWS environment pointing every client at ``endpoint``, in a fresh account
    (moto's state outlives tests and servers), with a developer's ~/.aws kept out of it (config
    files under ``home``); ``unset`` names more variables that must not leak in."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION", *unset):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(home / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "aws-credentials"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MOTO_ACCOUNT_ID", f"{uuid.uuid4().int % 10**12:012d}")
