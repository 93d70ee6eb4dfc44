"""The EC2 instance metadata service (IMDSv2): the one client of it in worker/.

Two users: the CloudWatch sink names its stream after the instance id
(``instance_id()``, once at start), and the instance guard polls Spot and
lifecycle notices and reads its group tag (``MetadataClient``, every few
seconds). Both speak IMDSv2 only: a session token from PUT /latest/api/token,
then GETs that carry it. Instances launched from the stack's template require
it (``HttpTokens: required``), so IMDSv1's token-less GET would get 401.

Stdlib ``http.client``, not urllib and not botocore: no HTTP(S)_PROXY from the
environment may see metadata traffic (IMDS hands out credentials; a proxy would
also answer off EC2 where nothing should).
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from worker.errors import MetadataError

#: The link-local address of IMDS on every EC2 instance.
IMDS_URL = "http://169.254.169.254"
#: IMDSv2 session token lifetime asked for (the maximum IMDS grants is 6 h).
TOKEN_TTL_S = 21600
#: A token is renewed this long before it expires, so no GET carries a stale one.
TOKEN_MARGIN_S = 60
#: Per IMDS request: the service is link-local and answers in milliseconds.
IMDS_TIMEOUT_S = 2.0
#: Per request of the start-up lookup: off EC2 the address does not answer, and
#: the daemon's start must not wait for it.
LOOKUP_TIMEOUT_S = 1.0
#: Token lifetime of the start-up lookup: it makes two requests and is done.
LOOKUP_TOKEN_TTL_S = 60

#: The item holding this instance's id, under /latest/meta-data/.
INSTANCE_ID_PATH = "instance-id"


class MetadataClient:
    """IMDSv2: a session token from PUT /latest/api/token, then GETs that carry it.

    One connection per request (IMDS is link-local; a kept-alive connection
    would only add a stale-socket case). Used from one thread.
    """

    def __init__(self, base_url: str = IMDS_URL, *, timeout: float = IMDS_TIMEOUT_S,
                 token_ttl_s: int = TOKEN_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        parts = urlsplit(base_url)
        self._host = parts.hostname or ""
        self._port = parts.port or 80
        self._timeout = timeout
        self._ttl = token_ttl_s
        # Short TTLs (tests) renew at half-life rather than a minute ahead.
        self._margin = min(TOKEN_MARGIN_S, token_ttl_s / 2)
        self._clock = clock
        self._token = ""
        self._renew_at = 0.0

    def get(self, path: str) -> str | None:
        """The item under /latest/meta-data/, None when IMDS says 404; MetadataError else."""
        status, body = self._get(path)
        if status == 401:
            # The token was revoked early (IMDS restarted, the instance stopped and
            # started): one fresh token, one more try.
            self._token = ""
            status, body = self._get(path)
        if status == 404:
            return None
        if status != 200:
            raise MetadataError(f"IMDS GET {path}: HTTP {status}", status=status)
        return body.decode("utf-8", "replace").strip()

    def _get(self, path: str) -> tuple[int, bytes]:
        token = self._session_token()
        return self._request("GET", "/latest/meta-data/" + path, {"X-aws-ec2-metadata-token": token})

    def _session_token(self) -> str:
        if not self._token or self._clock() >= self._renew_at:
            asked = self._clock()
            status, body = self._request(
                "PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": str(self._ttl)})
            if status != 200 or not body.strip():
                # 403: IMDS is turned off for this instance; 400: a header it refused.
                raise MetadataError(f"IMDS token: HTTP {status}", status=status)
            self._token = body.decode("ascii", "replace").strip()
            self._renew_at = asked + self._ttl - self._margin
        return self._token

    def _request(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        try:
            conn.request(method, path, headers=headers)
            reply = conn.getresponse()
            return reply.status, reply.read()
        except (OSError, http.client.HTTPException) as exc:
            raise MetadataError(f"IMDS {method} {path}: {exc or type(exc).__name__}") from exc
        finally:
            conn.close()


def instance_id(base_url: str = IMDS_URL, timeout: float = LOOKUP_TIMEOUT_S) -> str | None:
    """This EC2 instance's id, or None when there is no metadata service (off EC2)."""
    client = MetadataClient(base_url, timeout=timeout, token_ttl_s=LOOKUP_TOKEN_TTL_S)
    try:
        return client.get(INSTANCE_ID_PATH) or None
    except MetadataError:
        return None
