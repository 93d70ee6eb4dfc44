"""Job identity: what makes two deliveries the same job, and the id derived from it.

A job is identified by ``(bucket, key, version)`` where *version* is the S3
version id when the bucket is versioned, else the object's ETag. The same
identity is processed once however often S3, Lambda or SSM deliver it; a new
version of the same key is a new job. The job id is derived from the identity
so every delivery of one object version maps to the same id.

Stdlib only and no ``dataclasses``: ``processorctl submit`` imports this.
"""

from __future__ import annotations

import hashlib
import json
from typing import NamedTuple


class Identity(NamedTuple):
    """What makes two deliveries the same job."""

    bucket: str
    key: str
    version_id: str | None = None
    etag: str | None = None

    @property
    def version(self) -> str:
        """The version part of the identity: version id, else ETag, else empty."""
        if self.version_id:
            return f"v:{self.version_id}"
        if self.etag:
            return f"e:{self.etag}"
        return ""

    def framed(self) -> str:
        """The identity as one string; JSON framing, so no field can shift into another.

        lambda_trigger.targeting.identity_of frames a request the same way, so
        the Lambda's rendezvous hashing and the ledger agree on "same job".
        """
        return json.dumps([self.bucket, self.key, self.version], ensure_ascii=True)

    def job_id(self) -> str:
        """A stable, path-safe id: the same identity always yields the same id."""
        digest = hashlib.sha256(self.framed().encode("ascii")).hexdigest()
        return f"j-{digest[:20]}"


def normalise_etag(etag: str | None) -> str | None:
    """ETags arrive quoted from S3 APIs and unquoted in events; store them bare."""
    if etag is None:
        return None
    bare = etag.strip().strip('"')
    return bare or None
