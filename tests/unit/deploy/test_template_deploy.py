"""What the first real deploy needed from the template (issue 13, item 6), checked offline.

No Lambda reservation by default, an alarm that stays quiet while the instance
is stopped, failed SendCommand invocations made visible (EventBridge -> the
failure queue, under a queue policy for that one rule), pinned dependencies at
boot, the stop timeout the drain document allows for agreeing with the unit,
and DEPLOY.md agreeing with the template (six documents) and the Lambda
(which SendCommand errors it fails over on).
cfn-lint and checkov cover the new resources through test_document.py and
test_template.py.
"""

from __future__ import annotations

import json
import re
from typing import Any

import botocore.session

from tests.support.paths import REPO
from tests.support.template import TEMPLATE, as_deployed, as_list, of_type
from worker.local import cfn

SERVICE = REPO / "deploy" / "systemd" / "processor.service"


def _template() -> dict[str, Any]:
    return cfn.load_template(TEMPLATE)


def test_no_lambda_reservation_by_default() -> None:
    template = _template()
    parameter = template["Parameters"]["TriggerReservedConcurrency"]
    assert parameter["Default"] == -1
    # With the default the property is absent, so a quota of 10 is enough to create the stack.
    function = as_deployed(template)["Resources"]["TriggerFunction"]["Properties"]
    assert "ReservedConcurrentExecutions" not in function
    reserved = as_deployed(template, TriggerReservedConcurrency=5)["Resources"]["TriggerFunction"]
    assert reserved["Properties"]["ReservedConcurrentExecutions"] == {"Ref": "TriggerReservedConcurrency"}


def test_instance_status_alarm_treats_no_data_as_not_failing() -> None:
    # No data: not launched yet, stopped for a UserData change, or a group at zero.
    alarm = _template()["Resources"]["InstanceStatusAlarm"]["Properties"]
    assert alarm["TreatMissingData"] in {"notBreaching", "missing"}


def test_failed_submit_invocations_go_to_the_failure_queue() -> None:
    resources = _template()["Resources"]
    props = resources["CommandFailureRule"]["Properties"]
    assert props["State"] == "ENABLED"
    assert props["EventPattern"] == {
        "source": ["aws.ssm"],
        "detail-type": ["EC2 Command Invocation Status-change Notification"],
        "detail": {"document-name": [{"Ref": "SubmitDocument"}], "status": [{"anything-but": [
            "Pending", "InProgress", "Delayed", "Success", "Cancelling"]}]},
    }
    # Every terminal status that is not Success matches; Undeliverable is a StatusDetails
    # value (the API's Status enum does not have it), so naming it matched nothing.
    (matcher,) = props["EventPattern"]["detail"]["status"]
    excluded = set(matcher["anything-but"])
    assert INVOCATION_STATUSES - excluded == {"Cancelled", "TimedOut", "Failed"}
    assert excluded <= INVOCATION_STATUSES and "Undeliverable" not in INVOCATION_STATUSES
    assert [t["Arn"] for t in props["Targets"]] == [{"Fn::GetAtt": ["FailureQueue", "Arn"]}]


#: CommandInvocationStatus of the SSM API (GetCommandInvocation's Status), from botocore's model.
INVOCATION_STATUSES = set(botocore.session.get_session().get_service_model("ssm").shape_for(
    "CommandInvocationStatus").enum)


def test_failure_queue_policy_admits_that_rule_only() -> None:
    resources = _template()["Resources"]
    name = "CommandFailureRule"
    (policy,) = of_type(resources, "AWS::SQS::QueuePolicy").values()
    props = policy["Properties"]
    assert props["Queues"] == [{"Ref": "FailureQueue"}]
    (statement,) = props["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Allow"
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert statement["Action"] == "sqs:SendMessage"
    assert statement["Resource"] == {"Fn::GetAtt": ["FailureQueue", "Arn"]}
    assert statement["Condition"] == {"ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": [name, "Arn"]}}}


def test_user_data_installs_the_wheel_with_the_shipped_constraints() -> None:
    template = _template()
    assert "ConstraintsKey" in template["Parameters"]
    assert "Default" not in template["Parameters"]["ConstraintsKey"]  # deploy.sh always passes it
    resources = template["Resources"]
    bodies = [
        resources["Instance"]["Properties"]["UserData"]["Fn::Base64"]["Fn::Sub"],
        resources["FleetLaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]["Fn::Sub"],
    ]
    for body in bodies:
        assert "CONSTRAINTS_URI='s3://${ArtifactBucket}/${ConstraintsKey}'" in body
        installs = [line.strip() for line in body.splitlines() if "-m pip install" in line]
        assert installs, "no pip install in the UserData"
        for line in installs:
            assert ' -c "$download/constraints.txt" ' in line, line


def test_drain_document_and_unit_agree_on_the_stop_timeout() -> None:
    unit = SERVICE.read_text(encoding="utf-8")
    (seconds,) = re.findall(r"^TimeoutStopSec=(\d+)$", unit, re.M)
    text = TEMPLATE.read_text(encoding="utf-8")
    said = re.findall(r"TimeoutStopSec is (\d+) s", text)
    assert said and set(said) == {seconds}, (said, seconds)
    # The drain document waits longer than systemd lets the stop take.
    drain = _template()["Resources"]["DrainDocument"]["Properties"]["Content"]
    assert drain["mainSteps"][0]["inputs"]["timeoutSeconds"] > int(seconds)


_NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
            "nine": 9, "ten": 10}


def test_deploy_doc_counts_and_names_every_ssm_document() -> None:
    documents = of_type(_template()["Resources"], "AWS::SSM::Document")
    doc = (REPO / "docs" / "DEPLOY.md").read_text(encoding="utf-8")
    said = [*re.findall(r"\b(\w+) document names\b", doc), *re.findall(r"\bThe (\w+) documents are\b", doc),
            *re.findall(r"\bthe (\w+) SSM documents\b", doc)]
    counts = {_NUMBERS[word.lower()] for word in said}
    assert counts == {len(documents)}, counts
    for name in documents:
        assert f"`<stack>-{name}`" in doc, name


def test_deploy_doc_claims_no_failover_the_lambda_does_not_do() -> None:
    # The Lambda sends to one instance (or to the fleet's queue) and never fails over to
    # another on any SendCommand error: no sentence may name a code it "fails over" on.
    doc = (REPO / "docs" / "DEPLOY.md").read_text(encoding="utf-8")
    sentences = re.findall(r"\bfail(?:s|ing)? over\b[^.]*\.", doc)
    named = {code for sentence in sentences for code in re.findall(r"`([A-Z]\w+)`", sentence)}
    assert named == set(), named


#: Actions the Service Authorization Reference lists with no resource type (only
#: aws:RequestTag / aws:TagKeys, or nothing): a statement naming a resource ARN never
#: matches them, so the deployer's policy must grant them on "*".
NO_RESOURCE_TYPE = ("dlm:CreateLifecyclePolicy", "dlm:GetLifecyclePolicies", "sns:Unsubscribe",
                    "service-quotas:GetServiceQuota", "lambda:GetAccountSettings",
                    "cloudformation:ValidateTemplate", "sts:GetCallerIdentity")


def test_deployer_policy_grants_actions_without_a_resource_type_on_every_resource() -> None:
    doc = (REPO / "docs" / "DEPLOY.md").read_text(encoding="utf-8")
    (policy,) = re.findall(r"```json\n(.*?)```", doc, re.S)
    statements = json.loads(policy)["Statement"]
    for action in NO_RESOURCE_TYPE:
        granting = [s for s in statements if action in as_list(s["Action"])]
        assert granting, f"{action} is not in the deployer's policy"
        for statement in granting:
            assert statement["Resource"] == "*", (action, statement["Sid"])
