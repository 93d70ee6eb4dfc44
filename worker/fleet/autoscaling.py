"""Auto Scaling for the instance guard: the only module in worker/ that calls it with boto3.

One call, SetInstanceProtection on this instance. botocore's errors are turned
into ScalingError here, once, so ``worker.fleet.instance`` never sees botocore. The
client has short timeouts and few attempts of its own: the guard's watcher
thread retries with backoff itself, and while it waits on a slow endpoint it
does not poll for Spot notices.

The endpoint comes from boto3's usual chain: ``AWS_ENDPOINT_URL_AUTO_SCALING``
(botocore derives the name from the service id "Auto Scaling"), then
``AWS_ENDPOINT_URL``; on EC2 neither is set and the regional endpoint is used.
"""

from __future__ import annotations

from typing import Any

import boto3
import botocore.exceptions
import botocore.parsers
from botocore.config import Config

from worker.aws.errors import error_reply
from worker.aws.retry import AUTOSCALING_CLIENT
from worker.errors import ScalingError

#: Error codes worth another try: throttling, service faults, and the group
#: being updated by another call at the same moment (ResourceContention).
_RETRYABLE_CODES = frozenset(
    {
        "Throttling", "ThrottlingException", "RequestLimitExceeded", "ResourceContention",
        "ServiceUnavailable", "InternalFailure", "InternalError", "RequestTimeout",
        "500", "502", "503", "504",
    }
)

# A call must end within the guard's bounded close (one last clear of the
# protection): few attempts, short timeouts (the numbers: worker.aws.retry).
_CLIENT_CONFIG = Config(**AUTOSCALING_CLIENT.config())


class AutoScaling:
    """Scale-in protection of one instance, over a boto3 Auto Scaling client."""

    def __init__(self, client: Any) -> None:
        self._client = client

    @classmethod
    def connect(cls, region: str, endpoint_url: str = "") -> AutoScaling:
        """A client in ``region`` (the instance's own); ``endpoint_url`` empty: boto3's chain."""
        try:
            client = boto3.session.Session().client(
                "autoscaling", region_name=region or None, endpoint_url=endpoint_url or None,
                config=_CLIENT_CONFIG,
            )
        except botocore.exceptions.BotoCoreError as exc:  # no region, a bad endpoint URL
            raise ScalingError(f"cannot create an Auto Scaling client: {exc}", retryable=False) from exc
        return cls(client)

    def set_protection(self, instance_id: str, group: str, protected: bool) -> None:
        """SetInstanceProtection(ProtectedFromScaleIn=protected) for this instance in ``group``."""
        what = f"SetInstanceProtection({instance_id} in {group}, {protected})"
        try:
            self._client.set_instance_protection(
                InstanceIds=[instance_id], AutoScalingGroupName=group, ProtectedFromScaleIn=protected
            )
        except botocore.exceptions.ClientError as exc:
            code, message = error_reply(exc)
            raise ScalingError(f"{what}: {code}: {message}", retryable=code in _RETRYABLE_CODES,
                               code=code) from exc
        except (botocore.exceptions.BotoCoreError, botocore.parsers.ResponseParserError) as exc:
            # Transport errors (endpoint unreachable, timeouts), a reply that is not the
            # service's (a proxy's error page), credentials not found yet: all may clear up.
            raise ScalingError(f"{what}: {exc}", retryable=True, code=type(exc).__name__) from exc

    def close(self) -> None:
        self._client.close()
