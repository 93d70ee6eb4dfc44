"""Scale-in protection against the moto server over HTTP, with IMDS stubbed on 127.0.0.1.

A real Auto Scaling group (one launch template, real instances in moto's EC2)
and the guard as the daemon gets it from guard_from_settings: the adapter
finds the emulator through boto3's own AWS_ENDPOINT_URL_AUTO_SCALING.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog

from tests.support.faultproxy import FaultProxy
from tests.support.servers import Imds, Recorder, dead_endpoint
from tests.support.waiting import wait_until
from worker.config.settings import settings_from_mapping
from worker.errors import ScalingError
from worker.fleet.autoscaling import AutoScaling
from worker.fleet.instance import GROUP_TAG_PATH, Guard, guard_from_settings

GROUP = "stack-processor"
#: Liveness bound of each wait: the guard polls every second and calls at once on a change.
PATIENCE_S = 30.0


def eventually(what: str, predicate: Callable[[], Any], timeout: float = PATIENCE_S) -> Any:
    # Each awaited change follows a poll within a second: nothing at all for this long is a hang.
    return wait_until(predicate, stall_s=max(timeout, 60.0), describe=f"no {what}")


@pytest.fixture
def group(aws: Callable[[str], Any]) -> list[str]:
    """An Auto Scaling group of two instances in moto; their ids."""
    ec2 = aws("ec2")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    ec2.create_launch_template(LaunchTemplateName="processor",
                               LaunchTemplateData={"ImageId": image, "InstanceType": "t3.micro"})
    aws("autoscaling").create_auto_scaling_group(
        AutoScalingGroupName=GROUP, LaunchTemplate={"LaunchTemplateName": "processor", "Version": "$Latest"},
        MinSize=0, MaxSize=2, DesiredCapacity=2, AvailabilityZones=["us-east-1a"])
    (described,) = aws("autoscaling").describe_auto_scaling_groups(
        AutoScalingGroupNames=[GROUP])["AutoScalingGroups"]
    return sorted(i["InstanceId"] for i in described["Instances"])


def protected(aws: Callable[[str], Any], instance_id: str) -> bool:
    (details,) = aws("autoscaling").describe_auto_scaling_instances(
        InstanceIds=[instance_id])["AutoScalingInstances"]
    return bool(details["ProtectedFromScaleIn"])


@pytest.fixture
def imds_for(group: list[str]) -> Iterator[Imds]:
    with Imds({"instance-id": group[0], "placement/region": "us-east-1", GROUP_TAG_PATH: GROUP}) as imds:
        yield imds


def start_guard(imds: Imds, endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Guard:
    monkeypatch.setenv("AWS_ENDPOINT_URL_AUTO_SCALING", endpoint)
    settings = settings_from_mapping({
        "s3": {"output_bucket": "out"},
        "instance": {"scale_in_protection": True, "imds_url": imds.endpoint, "poll_s": 1},
    }, {})
    guard = guard_from_settings(settings)
    assert isinstance(guard, Guard)
    return guard


def test_busy_instance_is_protected_and_kept_on_scale_in(
    aws: Callable[[str], Any], group: list[str], imds_for: Imds, moto_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    me, other = group
    autoscaling = aws("autoscaling")
    autoscaling.set_instance_protection(InstanceIds=[me], AutoScalingGroupName=GROUP,
                                        ProtectedFromScaleIn=True)  # left over from a crash
    guard = start_guard(imds_for, moto_endpoint, monkeypatch)
    try:
        eventually("the leftover protection cleared", lambda: not protected(aws, me))
        guard.set_busy(True)
        eventually("protection", lambda: protected(aws, me))
        assert not protected(aws, other)
        # Scale-in now takes the idle instance, never the busy one.
        autoscaling.set_desired_capacity(AutoScalingGroupName=GROUP, DesiredCapacity=1)
        (described,) = autoscaling.describe_auto_scaling_groups(
            AutoScalingGroupNames=[GROUP])["AutoScalingGroups"]
        assert [i["InstanceId"] for i in described["Instances"]] == [me]
        guard.set_busy(False)
        eventually("protection removed", lambda: not protected(aws, me))
        guard.set_busy(True)
        eventually("protection again", lambda: protected(aws, me))
    finally:
        guard.close()
    assert not protected(aws, me)  # close() clears it


def test_a_failing_endpoint_is_retried_and_never_raised(
    aws: Callable[[str], Any], group: list[str], imds_for: Imds, moto_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    me = group[0]
    with FaultProxy(moto_endpoint, rate=0.0) as proxy, structlog.testing.capture_logs() as logs:
        proxy.outage.set()
        guard = start_guard(imds_for, proxy.endpoint, monkeypatch)
        try:
            guard.set_busy(True)  # returns at once, whatever Auto Scaling does
            eventually("two failed attempts", lambda: sum(
                e["event"] == "scale_in_protection_failed" for e in list(logs)) >= 2)
            assert guard.interruption() is None
            proxy.outage.clear()
            eventually("protection once the endpoint is back", lambda: protected(aws, me))
        finally:
            guard.close()
    failed = [e for e in logs if e["event"] == "scale_in_protection_failed"]
    assert [e["attempt"] for e in failed] == list(range(1, len(failed) + 1))
    assert all(e["retry_in_s"] > 0 for e in failed)
    assert proxy.counts["outage"] >= 2


#: How Auto Scaling (a query-protocol service) answers a call it refuses.
REFUSED = (b'<ErrorResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/"><Error>'
           b"<Type>Sender</Type><Code>ValidationError</Code><Message>The instance is not part of "
           b"the Auto Scaling group</Message></Error><RequestId>r-1</RequestId></ErrorResponse>")


def test_adapter_translates_errors(aws: Callable[[str], Any], group: list[str], moto_endpoint: str) -> None:
    api = AutoScaling.connect("us-east-1", moto_endpoint)
    try:
        api.set_protection(group[0], GROUP, True)
        assert protected(aws, group[0])
        api.set_protection(group[0], GROUP, False)
        assert not protected(aws, group[0])
    finally:
        api.close()
    # moto answers no error for this call (a missing group is a 500 there), so a
    # loopback stub plays Auto Scaling refusing it, and a proxy's HTML error page.
    with Recorder(lambda _seen: (400, "text/xml", REFUSED)) as refusing:
        api = AutoScaling.connect("us-east-1", refusing.endpoint)
        with pytest.raises(ScalingError) as refused:
            api.set_protection(group[0], GROUP, True)
        api.close()
    assert (refused.value.code, refused.value.retryable) == ("ValidationError", False)
    assert "not part of the Auto Scaling group" in str(refused.value)
    assert b"Action=SetInstanceProtection" in refusing.seen[0].body
    with Recorder(lambda _seen: (502, "text/html", b"<!doctype html><h1>Bad Gateway")) as page:
        api = AutoScaling.connect("us-east-1", page.endpoint)
        with pytest.raises(ScalingError) as bad_gateway:
            api.set_protection(group[0], GROUP, True)
        api.close()
    assert bad_gateway.value.retryable
    dead = AutoScaling.connect("us-east-1", dead_endpoint())
    with pytest.raises(ScalingError) as unreachable:
        dead.set_protection(group[0], GROUP, True)
    dead.close()
    assert (unreachable.value.code, unreachable.value.retryable) == ("EndpointConnectionError", True)
