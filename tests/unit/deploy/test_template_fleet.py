"""A fleet's work queue, scaling and Spot capacity in deploy/cloudformation/processor.yaml.

Checked offline on the template as CloudFormation resolves it with FleetSize above 1
(``as_deployed`` of tests/support/template.py). How the scaling rule behaves over time is
tests/unit/fleet/test_scaling.py, which drives bench/fleet.py's simulation with it.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.support.template import (
    DAEMON_MAX_ATTEMPTS,
    INPUT_BUCKET_NAME,
    MODES,
    as_deployed,
    condition_values,
)
from worker.config.settings import ProcessingSettings

FLEET_GROUP = {"Ref": "FleetGroup"}
WORK_QUEUE_NAME = {"Fn::GetAtt": ["WorkQueue", "QueueName"]}


@pytest.fixture(scope="module")
def params(template: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = template["Parameters"]
    return found


def _metrics_by_id(metrics: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["Id"]: m for m in metrics}


def test_work_queue_redrives_to_a_dead_letter_queue(fleet: dict[str, Any], params: dict[str, Any]) -> None:
    queue = fleet["WorkQueue"]["Properties"]
    dead = fleet["DeadLetterQueue"]["Properties"]
    assert queue["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]},
        "maxReceiveCount": {"Ref": "QueueMaxReceiveCount"},
    }
    # Above the daemons' attempts: each retry after exit 75 is a receive.
    assert params["QueueMaxReceiveCount"]["Default"] > DAEMON_MAX_ATTEMPTS
    assert params["QueueMaxReceiveCount"]["Default"] > params["MaxAttempts"]["Default"]
    assert ProcessingSettings().max_attempts == DAEMON_MAX_ATTEMPTS
    # The lease the daemons use (visibility_s); SQS takes 0-43200 s.
    assert queue["VisibilityTimeout"] == {"Ref": "QueueVisibilitySeconds"}
    visibility = params["QueueVisibilitySeconds"]
    assert (visibility["Default"], visibility["MaxValue"]) == (300, 43200)
    # The dead-letter queue keeps its messages 14 days, longer than the work queue.
    assert dead["MessageRetentionPeriod"] == 14 * 24 * 3600
    assert queue["MessageRetentionPeriod"] < dead["MessageRetentionPeriod"]
    for props in (queue, dead):
        assert props["SqsManagedSseEnabled"] is True


def test_backlog_per_instance_target_tracking(fleet: dict[str, Any], params: dict[str, Any]) -> None:
    policy = fleet["BacklogScalingPolicy"]["Properties"]
    assert policy["AutoScalingGroupName"] == FLEET_GROUP
    assert policy["PolicyType"] == "TargetTrackingScaling"
    config = policy["TargetTrackingConfiguration"]
    assert config["TargetValue"] == {"Ref": "BacklogPerInstanceTarget"}
    assert "DisableScaleIn" not in config
    metrics = _metrics_by_id(config["CustomizedMetricSpecification"]["Metrics"])
    (returned,) = [m for m in metrics.values() if m["ReturnData"]]
    # Visible messages of this work queue divided by the group's InService instances.
    numerator, denominator = (name.strip() for name in returned["Expression"].split("/"))
    visible = metrics[numerator]["MetricStat"]["Metric"]
    assert (visible["Namespace"], visible["MetricName"]) == ("AWS/SQS", "ApproximateNumberOfMessagesVisible")
    assert visible["Dimensions"] == [{"Name": "QueueName", "Value": WORK_QUEUE_NAME}]
    instances = metrics[denominator]["MetricStat"]["Metric"]
    assert (instances["Namespace"], instances["MetricName"]) == ("AWS/AutoScaling", "GroupInServiceInstances")
    assert instances["Dimensions"] == [{"Name": "AutoScalingGroupName", "Value": FLEET_GROUP}]
    # The group publishes the divisor (metrics collection).
    collected = fleet["FleetGroup"]["Properties"]["MetricsCollection"][0]["Metrics"]
    assert "GroupInServiceInstances" in collected
    # The target is derived from slots and an acceptable wait: the formula is in its
    # description, and the default is that formula for the default slots.
    target = params["BacklogPerInstanceTarget"]
    assert "Concurrency x acceptable_wait_s / average job duration" in " ".join(target["Description"].split())
    slots = params["Concurrency"]["Default"]
    wait_s, duration_s = (int(n) for n in re.findall(r"(\d+) s\b", target["Description"].split("Default")[1]))
    assert target["Default"] == slots * wait_s // duration_s


def test_scale_out_from_zero(fleet: dict[str, Any], params: dict[str, Any]) -> None:
    policy = fleet["ScaleOutFromZeroPolicy"]["Properties"]
    assert policy["AutoScalingGroupName"] == FLEET_GROUP
    # One more instance, never "exactly one": a late GroupDesiredCapacity point must not
    # cut a busy fleet to 1 (the alarm runs its action again every minute in ALARM).
    assert (policy["PolicyType"], policy["AdjustmentType"]) == ("StepScaling", "ChangeInCapacity")
    assert policy["StepAdjustments"] == [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}]
    alarm = fleet["ScaleOutFromZeroAlarm"]["Properties"]
    assert alarm["AlarmActions"] == [{"Ref": "ScaleOutFromZeroPolicy"}]
    metrics = _metrics_by_id(alarm["Metrics"])
    (returned,) = [m for m in metrics.values() if m["ReturnData"]]
    # Metric math reads a missing point as 0: the last known capacity carries over a gap.
    assert returned["Expression"] == "IF(FILL(desired, REPEAT) == 0 AND visible > 0, 1, 0)"
    assert metrics["visible"]["MetricStat"]["Metric"]["Dimensions"] == [
        {"Name": "QueueName", "Value": WORK_QUEUE_NAME}]
    desired = metrics["desired"]["MetricStat"]["Metric"]
    assert (desired["MetricName"], desired["Dimensions"]) == (
        "GroupDesiredCapacity", [{"Name": "AutoScalingGroupName", "Value": FLEET_GROUP}])
    assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (1, "GreaterThanOrEqualToThreshold")
    # An idle fleet may cost nothing.
    assert params["MinSize"]["Default"] == 0 and params["MinSize"]["MinValue"] == 0


def test_spot_turns_the_group_into_a_mixed_instances_policy(template: dict[str, Any]) -> None:
    on_demand = as_deployed(template, FleetSize=3)["Resources"]["FleetGroup"]["Properties"]
    assert "MixedInstancesPolicy" not in on_demand and "CapacityRebalance" not in on_demand
    spot = as_deployed(template, FleetSize=3, OnDemandPercentage=25, OnDemandBaseCapacity=1,
                  FleetInstanceType2="t3a.small", FleetInstanceType3="m5.large")["Resources"]
    group = spot["FleetGroup"]["Properties"]
    assert "LaunchTemplate" not in group
    assert group["CapacityRebalance"] is True
    mixed = group["MixedInstancesPolicy"]
    assert mixed["LaunchTemplate"]["LaunchTemplateSpecification"] == on_demand["LaunchTemplate"]
    assert mixed["LaunchTemplate"]["Overrides"] == [
        {"InstanceType": {"Ref": "InstanceType"}},
        {"InstanceType": {"Ref": "FleetInstanceType2"}},
        {"InstanceType": {"Ref": "FleetInstanceType3"}},
    ]
    assert mixed["InstancesDistribution"] == {
        "OnDemandBaseCapacity": {"Ref": "OnDemandBaseCapacity"},
        "OnDemandPercentageAboveBaseCapacity": {"Ref": "OnDemandPercentage"},
        "SpotAllocationStrategy": "capacity-optimized",
    }
    # One instance never uses Spot, whatever the parameter says.
    assert condition_values(template, {"FleetSize": 1, "OnDemandPercentage": 0})["UsesSpot"] is False


def test_reconcile_schedule_invokes_the_trigger_in_reconcile_mode(
    fleet: dict[str, Any], params: dict[str, Any], single: dict[str, Any],
) -> None:
    rule = fleet["ReconcileSchedule"]["Properties"]
    assert rule["ScheduleExpression"] == {"Ref": "ReconcileRate"}
    (target,) = rule["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": ["TriggerFunction", "Arn"]}
    assert json.loads(target["Input"]) == {"processor": "reconcile", "older_than_s": 900}
    permission = fleet["ReconcileSchedulePermission"]["Properties"]
    assert permission["Principal"] == "events.amazonaws.com"
    assert permission["SourceArn"] == {"Fn::GetAtt": ["ReconcileSchedule", "Arn"]}
    assert permission["FunctionName"] == {"Fn::GetAtt": ["TriggerFunction", "Arn"]}
    rate = params["ReconcileRate"]
    for ok in (rate["Default"], "rate(15 minutes)", "cron(0 * * * ? *)", "rate(1 minute)", "rate(1 day)",
               "rate(2 hours)", "rate(10 minutes)", "rate(99999 days)"):
        assert re.fullmatch(rate["AllowedPattern"], ok), ok
        assert _eventbridge_rate_ok(ok), ok
    # EventBridge's grammar: the singular unit for 1, the plural above it.
    for bad in ("rate(0 hours)", "hourly", "rate(1 hour); x", "rate(1 hours)", "rate(5 minute)",
                "rate(1 days)", "rate(2 day)", "rate(01 hour)", "rate(1 minutes)"):
        assert not re.fullmatch(rate["AllowedPattern"], bad), bad
    # The reconcile mode's reads: the input bucket's listing (by its computed name,
    # as everywhere, see the notification pattern) and the output's markers.
    env = fleet["TriggerFunction"]["Properties"]["Environment"]["Variables"]
    assert env["INPUT_BUCKET"] == {"Fn::Sub": INPUT_BUCKET_NAME}
    assert "ReconcileSchedule" not in single


def _eventbridge_rate_ok(expression: str) -> bool:
    """EventBridge's rule for rate(value unit), restated: 1 takes minute/hour/day, more the plural."""
    if not expression.startswith("rate("):
        return True  # cron(): not this check's
    match = re.fullmatch(r"rate\(([1-9][0-9]*) (minute|minutes|hour|hours|day|days)\)", expression)
    if match is None:
        return False
    value, unit = int(match.group(1)), match.group(2)
    return unit.endswith("s") is (value != 1)


def test_an_update_keeps_the_scaled_size(template: dict[str, Any], params: dict[str, Any]) -> None:
    # FleetSize at creation; the group's live capacity (deploy.sh passes it) on an update.
    group = as_deployed(template, FleetSize=3)["Resources"]["FleetGroup"]["Properties"]
    assert group["DesiredCapacity"] == {"Ref": "FleetSize"}
    kept = as_deployed(template, FleetSize=3, FleetDesiredCapacity="7")["Resources"]["FleetGroup"]
    assert kept["Properties"]["DesiredCapacity"] == {"Ref": "FleetDesiredCapacity"}
    parameter = params["FleetDesiredCapacity"]
    assert parameter["Default"] == ""
    for ok, value in ((True, ""), (True, "0"), (True, "20"), (False, "-1"), (False, "x")):
        assert (re.fullmatch(parameter["AllowedPattern"], value) is not None) is ok, value


def test_a_failed_bootstrap_marks_its_instance_unhealthy(fleet: dict[str, Any]) -> None:
    launch = fleet["FleetLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    body = launch["UserData"]["Fn::Base64"]["Fn::Sub"]
    on_exit = body[body.index("on_exit() {"):body.index("trap on_exit EXIT")]
    call = on_exit[on_exit.index("aws autoscaling set-instance-health"):]
    for flag in ('--instance-id "$INSTANCE_ID"', "--health-status Unhealthy",
                 "--no-should-respect-grace-period"):
        assert flag in call, flag
    assert on_exit.index("signal FAILURE") < on_exit.index("set-instance-health")
    # Allowed on this group only.
    statements = fleet["InstanceRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    (grant,) = [s for s in statements if "autoscaling:SetInstanceHealth" in str(s["Action"])]
    assert grant["Action"] == "autoscaling:SetInstanceHealth"
    assert grant["Resource"] == {"Fn::Sub": "arn:${AWS::Partition}:autoscaling:${AWS::Region}:"
                                            "${AWS::AccountId}:autoScalingGroup:*:autoScalingGroupName/"
                                            "${AWS::StackName}-processor"}
    assert "Condition" not in grant


def test_an_alarm_watches_the_age_of_the_oldest_work_message(
    fleet: dict[str, Any], single: dict[str, Any], params: dict[str, Any],
) -> None:
    alarm = fleet["WorkQueueAgeAlarm"]["Properties"]
    assert (alarm["Namespace"], alarm["MetricName"]) == ("AWS/SQS", "ApproximateAgeOfOldestMessage")
    assert alarm["Dimensions"] == [{"Name": "QueueName", "Value": WORK_QUEUE_NAME}]
    assert alarm["Threshold"] == {"Ref": "QueueAgeAlarmSeconds"}
    assert (alarm["Statistic"], alarm["ComparisonOperator"]) == ("Maximum", "GreaterThanOrEqualToThreshold")
    # Longer than a bootstrap plus a default job, within SQS's 14-day retention ceiling.
    assert 900 < params["QueueAgeAlarmSeconds"]["Default"] <= params["QueueAgeAlarmSeconds"]["MaxValue"]
    assert "WorkQueueAgeAlarm" not in single


def test_max_size_defaults_to_fleet_size_and_sizes_are_bounded(template: dict[str, Any]) -> None:
    for size in MODES.values():
        group = as_deployed(template, FleetSize=size)["Resources"].get("FleetGroup")
        if group is None:
            continue
        assert group["Properties"]["MaxSize"] == {"Ref": "FleetSize"}
    assert as_deployed(template, FleetSize=3, MaxSize=10)["Resources"]["FleetGroup"]["Properties"][
        "MaxSize"] == {"Ref": "MaxSize"}
