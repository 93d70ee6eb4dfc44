"""The credentials every client and child process uses against the moto server on loopback."""

from __future__ import annotations

#: Dummy credentials and region: the emulator accepts any, and nothing must reach real AWS.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}
