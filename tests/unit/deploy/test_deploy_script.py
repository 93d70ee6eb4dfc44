"""deploy/deploy.sh against a fake ``aws`` first on PATH (there is no AWS account here).

The fake records every argv and answers from canned text per sub-command (the
script asks for ``--output text``, so canned answers are what the CLI would
print). ``s3 cp`` keeps a copy of what was uploaded, so the constraints file the
instances will install with can be read back. Each run works on a copy of the
repository's tracked files, so dist/ of the checkout is left alone.

What these runs pin down is what a first real deploy tripped over: a Lambda
reservation the account cannot give, bash 3.2's "unbound variable" on an empty
array, the AMI parameter's asynchronous validation, stacks left in
ROLLBACK_COMPLETE, lookups that came back empty, instance types the zone does
not offer or that are not Nitro, and dependencies left unpinned at boot; and
what day two needs (issue 20): a change set executed and waited for without a
ceiling, a busy stack waited for, a describe-stacks error that is not "no
stack", names SSM or S3 refuse, the vCPU quota, the artifact bucket's policy on
every run, a fleet's size kept across updates, and stopping a fleet's daemons
before it shrinks or is deleted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
DEPLOY_SH = REPO / "deploy" / "deploy.sh"

#: Liveness bound for one deploy.sh run (it builds a wheel: pip may be slow on a busy host).
RUN_TIMEOUT_S = 600

AMI = "ami-0123456789abcdef0"
AMI_SOURCE = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
AMI_PIN = "/processor/processor/ami-id"

#: A constraints file like `pip freeze` writes (the runs that are not about resolving use it).
PINNED = "boto3==1.35.0\nbotocore==1.35.0\nstructlog==24.4.0\ntenacity==9.0.0\nwatchtower==3.3.1\n"

FAKE_AWS = r'''#!{python}
"""A stand-in for the AWS CLI: records argv, answers from rules.json, copies s3 cp uploads."""
import json, os, shutil, sys
from pathlib import Path

here = Path({here!r})
args = sys.argv[1:]
with open(here / "calls.jsonl", "a") as log:
    log.write(json.dumps(args) + "\n")
command = " ".join(args[:2])
if command.startswith("s3 cp"):
    source, target = [a for a in args[2:] if not a.startswith("-") and a != os.environ.get("AWS_REGION")][-2:]
    key = target.split("/", 3)[3]
    (here / "uploads" / key).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, here / "uploads" / key)
    sys.exit(0)
rules = json.loads((here / "rules.json").read_text())
counters = json.loads((here / "counters.json").read_text()) if (here / "counters.json").exists() else {{}}
for index, rule in enumerate(rules):
    if rule["command"] == command and all(token in args for token in rule.get("args", [])):
        seen = counters.get(str(index), 0)
        counters[str(index)] = seen + 1
        (here / "counters.json").write_text(json.dumps(counters))
        answer = rule["responses"][min(seen, len(rule["responses"]) - 1)]
        sys.stdout.write(answer.get("stdout", ""))
        sys.stderr.write(answer.get("stderr", ""))
        sys.exit(answer.get("rc", 0))
sys.stderr.write("fake aws: no canned answer for " + command + "\n")
sys.exit(255)
'''


def _ok(stdout: str = "") -> dict[str, Any]:
    return {"stdout": stdout + ("\n" if stdout else ""), "rc": 0}


def _error(message: str) -> dict[str, Any]:
    return {"stderr": f"An error occurred: {message}\n", "rc": 254}


def _rule(command: str, *responses: dict[str, Any], args: Sequence[str] = ()) -> dict[str, Any]:
    return {"command": command, "args": list(args), "responses": list(responses)}


CHANGE_SET = ("arn:aws:cloudformation:eu-west-1:123456789012:changeSet/"
              "awscli-cloudformation-package-deploy-1700000000/0a1b2c3d")
#: What `aws cloudformation deploy --no-execute-changeset` prints (awscli's MSG_NO_EXECUTE_CHANGESET).
CHANGE_SET_CREATED = ("\nWaiting for changeset to be created..\n"
                      "Changeset created successfully. Run the following command to review changes:\n"
                      f"aws cloudformation describe-change-set --change-set-name {CHANGE_SET}")


def _account(first: Sequence[dict[str, Any]] = (), **overrides: Any) -> list[dict[str, Any]]:
    """A fresh account with a default VPC, no stack yet, and the AMI pin missing until put.

    ``first``: rules matched before all others (more specific answers).
    """
    rules = {
        "sts": _rule("sts get-caller-identity",
                     _ok("123456789012\tarn:aws:iam::123456789012:user/deployer")),
        # No stack; after the change set is executed, created.
        "stack": _rule("cloudformation describe-stacks",
                       _error("Stack with id processor does not exist"),
                       _ok("CREATE_IN_PROGRESS"), _ok("CREATE_COMPLETE"),
                       args=["Stacks[0].StackStatus"]),
        "bucket": _rule("s3api head-bucket", _ok()),
        "public_access": _rule("s3api put-public-access-block", _ok()),
        "bucket_policy": _rule("s3api put-bucket-policy", _ok()),
        "vpc": _rule("ec2 describe-vpcs", _ok("vpc-0aaa")),
        "default_subnet": _rule("ec2 describe-subnets", _ok("subnet-0bbb"), args=["--filters"]),
        "subnet": _rule("ec2 describe-subnets", _ok("vpc-0aaa\teu-west-1a"), args=["--subnet-ids"]),
        "offerings": _rule("ec2 describe-instance-type-offerings", _ok("t3.small")),
        "types": _rule("ec2 describe-instance-types", _ok("nitro\tFalse\t2")),
        "vcpu_quota": _rule("service-quotas get-service-quota", _ok("64.0")),
        # Missing when first checked, then (after put-parameter) validated once asked again.
        "pin": _rule("ssm get-parameter", _error("ParameterNotFound"), _error("ParameterNotFound"),
                     _ok(AMI), args=["--name", AMI_PIN]),
        "latest": _rule("ssm get-parameter", _ok(AMI), args=["--name", AMI_SOURCE]),
        "put": _rule("ssm put-parameter", _ok("{}")),
        "account": _rule("lambda get-account-settings", _ok("1000\t990")),
        "deploy": _rule("cloudformation deploy", _ok(CHANGE_SET_CREATED)),
        "execute": _rule("cloudformation execute-change-set", _ok()),
        "events": _rule("cloudformation describe-stack-events", _ok("")),
        "outputs": _rule("cloudformation describe-stacks", _ok("| Outputs |"), args=["--output", "table"]),
        "delete": _rule("cloudformation delete-stack", _ok()),
        "wait": _rule("cloudformation wait", _ok()),
        # Any other stack lookup (an output, a parameter): none.
        "other_lookups": _rule("cloudformation describe-stacks", _ok("None"), args=["--output", "text"]),
    }
    rules.update(overrides)
    # The fake takes the first rule that matches.
    return [*first, *rules.values()]


@dataclass
class Run:
    returncode: int
    stderr: str
    calls: list[list[str]]
    uploads: Path

    def commands(self) -> list[str]:
        return [" ".join(call[:2]) for call in self.calls]

    def deployed(self) -> list[str] | None:
        """The parameter overrides of `cloudformation deploy`, or None if it did not run."""
        for call in self.calls:
            if call[:2] == ["cloudformation", "deploy"]:
                return call[call.index("--parameter-overrides") + 1:]
        return None


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository's tracked files (as they are in the work tree), copied."""
    git = shutil.which("git")
    if git is None or not (REPO / ".git").exists():
        pytest.skip("git is needed to list the repository's files")
    target = tmp_path_factory.mktemp("repo")
    listed = subprocess.run([git, "ls-files", "-z"], cwd=REPO, capture_output=True, check=True,
                            timeout=60).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    # One wheel for the module: every run but the one about building deploys it (--wheel).
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w",
                    str(target.parent / "wheel"), "."], cwd=target, check=True, timeout=RUN_TIMEOUT_S,
                   env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    return target


def _wheel(checkout: Path) -> Path:
    (wheel,) = (checkout.parent / "wheel").glob("processor-*.whl")
    return wheel


def _deploy(checkout: Path, tmp_path: Path, rules: list[dict[str, Any]], *args: str,
            constraints: str | None = PINNED, env: Mapping[str, str] | None = None,
            build: bool = False) -> Run:
    fake = tmp_path / "fake"
    (fake / "bin").mkdir(parents=True)
    (fake / "uploads").mkdir()
    (fake / "rules.json").write_text(json.dumps(rules))
    aws = fake / "bin" / "aws"
    aws.write_text(FAKE_AWS.format(python=sys.executable, here=str(fake)))
    aws.chmod(0o755)
    argv = ["bash", str(checkout / "deploy" / "deploy.sh"), *args]
    if not build:
        argv += ["--wheel", str(_wheel(checkout))]
    if constraints is not None:
        pinned = tmp_path / "constraints.txt"
        pinned.write_text(constraints)
        argv += ["--constraints", str(pinned)]
    environment = {
        # python3 is the test's own interpreter (it has pip); the fake aws comes first.
        "PATH": f"{fake / 'bin'}:{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "AWS_REGION": "eu-west-1",
        "PROCESSOR_DEPLOY_AMI_WAIT_SECONDS": "3",
        "PROCESSOR_DEPLOY_POLL_SECONDS": "1",
        "PROCESSOR_DEPLOY_STACK_POLL_SECONDS": "0",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        **(env or {}),
    }
    done = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=environment)
    calls_log = fake / "calls.jsonl"
    calls = [json.loads(line) for line in calls_log.read_text().splitlines()] if calls_log.exists() else []
    return Run(done.returncode, done.stderr, calls, fake / "uploads")


# --- static -----------------------------------------------------------------------------------


#: "${name[@]}" (or [*]) that is not the guarded form ${name[@]+"${name[@]}"}.
_ARRAY_EXPANSION = re.compile(r'(\$\{(\w+)\[[@*]\]\+)?"\$\{(\w+)\[[@*]\]\}"')


def _unguarded_array_expansions(text: str) -> list[str]:
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for match in _ARRAY_EXPANSION.finditer(line):
            if match.group(1) is None or match.group(2) != match.group(3):
                found.append(f"{number}: {line.strip()}")
    return found


def test_array_guard_scan_tells_guarded_from_unguarded() -> None:
    assert _unguarded_array_expansions('x=("${A[@]}")\ncmd "${B[*]}"') == [
        '1: x=("${A[@]}")', '2: cmd "${B[*]}"']
    assert _unguarded_array_expansions('x=(${A[@]+"${A[@]}"})') == []
    assert _unguarded_array_expansions('x=(${B[@]+"${A[@]}"})') != []


def test_every_array_expansion_survives_bash_3_2_set_u() -> None:
    # bash before 4.4 (macOS' /bin/bash is 3.2) treats "${a[@]}" of an empty array as
    # an unbound variable under set -u and exits.
    assert _unguarded_array_expansions(DEPLOY_SH.read_text(encoding="utf-8")) == []


# --- runs under the fake aws ------------------------------------------------------------------


def test_a_first_deploy_without_extra_parameters_creates_the_stack(checkout: Path, tmp_path: Path) -> None:
    run = _deploy(checkout, tmp_path, _account(), build=True)  # builds the wheel itself
    assert run.returncode == 0, run.stderr
    parameters = run.deployed()
    assert parameters is not None
    values = dict(p.split("=", 1) for p in parameters)
    assert values["SubnetId"] == "subnet-0bbb" and values["AvailabilityZone"] == "eu-west-1a"
    assert values["VpcId"] == "vpc-0aaa"
    # No reservation asked for: none passed, and the account's concurrency is not even read.
    assert "TriggerReservedConcurrency" not in values
    assert "lambda get-account-settings" not in run.commands()
    # The constraints file went up next to the wheel, under the key the stack is given.
    assert values["ConstraintsKey"].rsplit("/", 1)[0] == values["WheelKey"].rsplit("/", 1)[0]
    assert (run.uploads / values["ConstraintsKey"]).read_text() == PINNED
    assert (run.uploads / values["WheelKey"]).is_file()
    assert values["WheelKey"].endswith("/processor-0.1.0-py3-none-any.whl")


def test_a_given_wheel_is_deployed_as_it_is(checkout: Path, tmp_path: Path) -> None:
    run = _deploy(checkout, tmp_path, _account())
    assert run.returncode == 0, run.stderr
    values = dict(p.split("=", 1) for p in run.deployed() or [])
    assert (run.uploads / values["WheelKey"]).read_bytes() == _wheel(checkout).read_bytes()
    bad = _deploy(checkout, tmp_path / "bad", _account(), "--wheel", str(tmp_path / "nothing.whl"))
    assert bad.returncode == 2 and "--wheel: no such file" in bad.stderr and bad.deployed() is None


def test_the_lambda_package_holds_the_trigger_and_the_shared_layout_and_imports_alone(
    checkout: Path, tmp_path: Path,
) -> None:
    """The zip is lambda_trigger/ plus processor_shared/layout.py (the job id and result layout the
    reconcile mode shares with the worker), and its modules import with no worker/ at hand."""
    run = _deploy(checkout, tmp_path, _account())
    assert run.returncode == 0, run.stderr
    values = dict(p.split("=", 1) for p in run.deployed() or [])
    package = run.uploads / values["LambdaCodeKey"]
    with zipfile.ZipFile(package) as archive:
        names = set(archive.namelist())
    assert {"lambda_trigger/handler.py", "lambda_trigger/reconciler.py",
            "processor_shared/layout.py"} <= names
    assert {name.split("/")[0] for name in names} == {"lambda_trigger", "processor_shared"}
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); sys.modules['worker'] = None\n"
             "import lambda_trigger.handler, lambda_trigger.reconciler, processor_shared.layout\n"
             "for module in (lambda_trigger.handler, lambda_trigger.reconciler, processor_shared.layout):\n"
             "    assert module.__file__.startswith(sys.argv[1]), module.__file__\n")
    done = subprocess.run([sys.executable, "-I", "-c", probe, str(package)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_reservation_the_account_cannot_give_stops_before_deploying(
    checkout: Path, tmp_path: Path,
) -> None:
    rules = _account(account=_rule("lambda get-account-settings", _ok("10\t10")))
    run = _deploy(checkout, tmp_path, rules, "--parameter", "TriggerReservedConcurrency=5")
    assert run.returncode == 1, run.stderr
    assert "TriggerReservedConcurrency=5 cannot be reserved" in run.stderr
    assert "keeps 10 unreserved" in run.stderr
    assert run.deployed() is None


def test_lambda_keeps_100_executions_unreserved(checkout: Path, tmp_path: Path) -> None:
    # "You can reserve up to the Unreserved account concurrency value ... minus 100".
    rules = _account(account=_rule("lambda get-account-settings", _ok("1000\t150")))
    run = _deploy(checkout, tmp_path, rules, "--parameter", "TriggerReservedConcurrency=60")
    assert run.returncode == 1, run.stderr
    assert "TriggerReservedConcurrency=60 cannot be reserved" in run.stderr
    assert "keeps 100 unreserved" in run.stderr
    assert run.deployed() is None
    fits = _deploy(checkout, tmp_path / "fits", rules, "--parameter", "TriggerReservedConcurrency=50")
    assert fits.returncode == 0, fits.stderr
    assert "TriggerReservedConcurrency=50" in (fits.deployed() or [])


def test_a_reservation_within_the_account_is_deployed(checkout: Path, tmp_path: Path) -> None:
    rules = _account(account=_rule("lambda get-account-settings", _ok("1000\t125")))
    run = _deploy(checkout, tmp_path, rules, "--parameter", "TriggerReservedConcurrency=15")
    assert run.returncode == 0, run.stderr
    assert "lambda get-account-settings" in run.commands()
    assert "TriggerReservedConcurrency=15" in (run.deployed() or [])


def test_the_ami_pin_is_read_back_before_deploying(checkout: Path, tmp_path: Path) -> None:
    run = _deploy(checkout, tmp_path, _account())
    assert run.returncode == 0, run.stderr
    commands = run.commands()
    put = commands.index("ssm put-parameter")
    deploy = commands.index("cloudformation deploy")
    reads = [i for i, call in enumerate(run.calls)
             if call[:2] == ["ssm", "get-parameter"] and AMI_PIN in call and put < i < deploy]
    # The first read after the put still misses (validation pending), the second sees it.
    assert len(reads) == 2


def test_an_ami_pin_that_never_validates_fails_clearly(checkout: Path, tmp_path: Path) -> None:
    rules = _account(pin=_rule("ssm get-parameter", _error("ParameterNotFound"), args=["--name", AMI_PIN]))
    run = _deploy(checkout, tmp_path, rules)
    assert run.returncode == 1
    assert f"SSM has not accepted {AMI} in {AMI_PIN} after 3s" in run.stderr
    assert run.deployed() is None


@pytest.mark.parametrize("status", ["ROLLBACK_COMPLETE", "ROLLBACK_FAILED"])
def test_a_failed_stack_is_not_updated(checkout: Path, tmp_path: Path, status: str) -> None:
    rules = _account(stack=_rule("cloudformation describe-stacks", _ok(status),
                                 args=["Stacks[0].StackStatus"]))
    run = _deploy(checkout, tmp_path, rules)
    assert run.returncode == 1
    assert f"stack processor is in {status}" in run.stderr and "--delete-failed" in run.stderr
    assert run.deployed() is None and "cloudformation delete-stack" not in run.commands()


def test_delete_failed_deletes_waits_then_creates(checkout: Path, tmp_path: Path) -> None:
    rules = _account(stack=_rule("cloudformation describe-stacks", _ok("ROLLBACK_COMPLETE"),
                                 _ok("CREATE_COMPLETE"), args=["Stacks[0].StackStatus"]))
    run = _deploy(checkout, tmp_path, rules, "--delete-failed")
    assert run.returncode == 0, run.stderr
    commands = run.commands()
    assert commands.index("cloudformation delete-stack") < commands.index("cloudformation wait")
    wait = run.calls[commands.index("cloudformation wait")]
    assert "stack-delete-complete" in wait
    assert commands.index("cloudformation wait") < commands.index("cloudformation deploy")
    # Created afresh: the network is looked up as for a new stack.
    assert any(p.startswith("SubnetId=") for p in run.deployed() or [])


def test_a_stack_in_review_is_created_like_a_new_one(checkout: Path, tmp_path: Path) -> None:
    rules = _account(stack=_rule("cloudformation describe-stacks", _ok("REVIEW_IN_PROGRESS"),
                                 _ok("REVIEW_IN_PROGRESS"), _ok("CREATE_IN_PROGRESS"), _ok("CREATE_COMPLETE"),
                                 args=["Stacks[0].StackStatus"]))
    run = _deploy(checkout, tmp_path, rules)
    assert run.returncode == 0, run.stderr
    assert any(p.startswith("SubnetId=") for p in run.deployed() or [])


@pytest.mark.parametrize(("override", "message"), [
    ({"sts": _rule("sts get-caller-identity", _error("ExpiredToken"))},
     "could not identify the AWS account"),
    ({"vpc": _rule("ec2 describe-vpcs", _ok("None"))}, "has no default VPC: pass --subnet-id"),
    ({"default_subnet": _rule("ec2 describe-subnets", _ok("None"), args=["--filters"])},
     "has no default subnet"),
    ({"subnet": _rule("ec2 describe-subnets", _error("InvalidSubnetID.NotFound"), args=["--subnet-ids"])},
     "could not look up subnet subnet-0bbb"),
    ({"offerings": _rule("ec2 describe-instance-type-offerings", _ok(""))},
     "instance type t3.small is not offered in eu-west-1a"),
    ({"types": _rule("ec2 describe-instance-types", _ok("xen\tFalse"))},
     "instance type t3.small is not Nitro-based"),
])
def test_empty_lookups_and_unsuitable_instance_types_fail_clearly(
    checkout: Path, tmp_path: Path, override: dict[str, Any], message: str,
) -> None:
    run = _deploy(checkout, tmp_path, _account(**override))
    assert run.returncode == 1, run.stderr
    assert message in run.stderr
    assert run.deployed() is None


def test_the_instance_type_asked_for_is_the_one_checked(checkout: Path, tmp_path: Path) -> None:
    run = _deploy(checkout, tmp_path, _account(), "--instance-type", "m6i.large")
    assert run.returncode == 0, run.stderr
    (offerings,) = [c for c in run.calls if c[:2] == ["ec2", "describe-instance-type-offerings"]]
    assert "Name=instance-type,Values=m6i.large" in offerings
    assert "Name=location,Values=eu-west-1a" in offerings
    (types,) = [c for c in run.calls if c[:2] == ["ec2", "describe-instance-types"]]
    assert "m6i.large" in types


#: A fleet over two subnets of the instance's VPC, in two zones.
_FLEET_SUBNETS = [
    _rule("ec2 describe-subnets", _ok("vpc-0aaa\tvpc-0aaa"), args=["Subnets[].VpcId"]),
    _rule("ec2 describe-subnets", _ok("eu-west-1b\teu-west-1c"), args=["Subnets[].AvailabilityZone"]),
]


def test_every_zone_of_a_fleet_is_checked_for_the_instance_type(checkout: Path, tmp_path: Path) -> None:
    missing = _rule("ec2 describe-instance-type-offerings", _ok(""),
                    args=["Name=location,Values=eu-west-1c"])
    run = _deploy(checkout, tmp_path, _account(first=[*_FLEET_SUBNETS, missing]),
                  "--fleet-size", "2", "--fleet-subnet-ids", "subnet-0ccc,subnet-0ddd")
    assert run.returncode == 1, run.stderr
    assert "instance type t3.small is not offered in eu-west-1c" in run.stderr
    zones = [a for c in run.calls if c[:2] == ["ec2", "describe-instance-type-offerings"]
             for a in c if a.startswith("Name=location,")]
    assert zones == [f"Name=location,Values=eu-west-1{z}" for z in "abc"]
    assert run.deployed() is None


def test_an_update_checks_the_stacks_own_instance_type(checkout: Path, tmp_path: Path) -> None:
    current = _rule("cloudformation describe-stacks", _ok("m5.large"),
                    args=["Stacks[0].Parameters[?ParameterKey=='InstanceType'].ParameterValue | [0]"])
    rules = _account(first=[current], stack=_rule("cloudformation describe-stacks", _ok("UPDATE_COMPLETE"),
                                                  args=["Stacks[0].StackStatus"]))
    run = _deploy(checkout, tmp_path, rules, "--subnet-id", "subnet-0bbb")
    assert run.returncode == 0, run.stderr
    (types,) = [c for c in run.calls if c[:2] == ["ec2", "describe-instance-types"]]
    assert "m5.large" in types


def test_constraints_that_leave_a_dependency_unpinned_are_refused(checkout: Path, tmp_path: Path) -> None:
    run = _deploy(checkout, tmp_path, _account(), constraints="boto3==1.35.0\nstructlog>=24\n")
    assert run.returncode == 1
    assert "does not pin structlog with ==" in run.stderr
    assert run.calls == []  # nothing was uploaded or asked


@pytest.mark.timeout(RUN_TIMEOUT_S)
def test_deploy_resolves_and_ships_exact_pins_of_the_dependencies(checkout: Path, tmp_path: Path) -> None:
    # The real resolution: the wheel installed in a throw-away virtualenv, then pip freeze
    # (pip reaches its configured index, as `make` does).
    run = _deploy(checkout, tmp_path, _account(), constraints=None)
    assert run.returncode == 0, run.stderr
    values = dict(p.split("=", 1) for p in run.deployed() or [])
    pins = (run.uploads / values["ConstraintsKey"]).read_text()
    for dependency in ("boto3", "structlog", "tenacity", "watchtower"):
        assert re.search(rf"(?im)^{dependency}==\d[^\s;]*$", pins), (dependency, pins)
    assert not re.search(r"(?im)^processor[=@ ]", pins)



# --- day two: change sets, busy stacks, lookups that fail, quotas, a fleet's size ------------


def _status(*statuses: str) -> dict[str, Any]:
    """The stack's status, one answer per describe-stacks (the last repeats)."""
    return _rule("cloudformation describe-stacks", *(_ok(s) for s in statuses),
                 args=["Stacks[0].StackStatus"])


def _indexes(run: Run, command: str, *tokens: str) -> list[int]:
    return [i for i, call in enumerate(run.calls)
            if " ".join(call[:2]) == command and all(t in call for t in tokens)]


def test_the_change_set_is_executed_and_the_stack_waited_for(checkout: Path, tmp_path: Path) -> None:
    run = _deploy(checkout, tmp_path, _account())
    assert run.returncode == 0, run.stderr
    (create,) = _indexes(run, "cloudformation deploy")
    assert "--no-execute-changeset" in run.calls[create]
    (execute,) = _indexes(run, "cloudformation execute-change-set", CHANGE_SET)
    # Polled by the script itself until the stack left CREATE_IN_PROGRESS.
    polls = [i for i in _indexes(run, "cloudformation describe-stacks", "Stacks[0].StackStatus")
             if i > execute]
    assert len(polls) == 2
    assert create < execute
    assert "stack processor: CREATE_COMPLETE" in run.stderr


def test_an_empty_change_set_is_nothing_to_do(checkout: Path, tmp_path: Path) -> None:
    rules = _account(stack=_status("UPDATE_COMPLETE"), deploy=_rule(
        "cloudformation deploy", _ok("\nNo changes to deploy. Stack processor is up to date")))
    run = _deploy(checkout, tmp_path, rules)
    assert run.returncode == 0, run.stderr
    assert "nothing to change" in run.stderr
    assert "cloudformation execute-change-set" not in run.commands()


def test_a_failed_update_says_why_and_exits_non_zero(checkout: Path, tmp_path: Path) -> None:
    rules = _account(
        stack=_status("UPDATE_COMPLETE", "UPDATE_IN_PROGRESS", "UPDATE_ROLLBACK_IN_PROGRESS",
                      "UPDATE_ROLLBACK_COMPLETE"),
        events=_rule("cloudformation describe-stack-events",
                     _ok("2026-01-01T00:00:00Z\tFleetGroup\tReceived 0 SUCCESS signal(s) out of 1")))
    run = _deploy(checkout, tmp_path, rules)
    assert run.returncode == 1
    assert "did not deploy (UPDATE_ROLLBACK_COMPLETE)" in run.stderr
    assert "Received 0 SUCCESS signal(s)" in run.stderr


def test_a_rerun_waits_for_an_update_in_progress(checkout: Path, tmp_path: Path) -> None:
    # An earlier run's rolling update is still going: wait for it, then update.
    rules = _account(stack=_status("UPDATE_IN_PROGRESS", "UPDATE_IN_PROGRESS", "UPDATE_IN_PROGRESS",
                                   "UPDATE_COMPLETE", "UPDATE_IN_PROGRESS", "UPDATE_COMPLETE"))
    run = _deploy(checkout, tmp_path, rules)
    assert run.returncode == 0, run.stderr
    assert "is busy (UPDATE_IN_PROGRESS): waiting" in run.stderr
    assert len(_indexes(run, "cloudformation describe-stacks", "Stacks[0].StackStatus")) == 6
    # An update: the stack keeps its network (no default-VPC lookup).
    assert "ec2 describe-vpcs" not in run.commands()
    assert run.deployed() is not None


def test_a_describe_stacks_error_is_not_taken_for_no_stack(checkout: Path, tmp_path: Path) -> None:
    denied = _rule("cloudformation describe-stacks", _error(
        "(AccessDenied) when calling the DescribeStacks operation: User is not authorized to perform: "
        "cloudformation:DescribeStacks"), args=["Stacks[0].StackStatus"])
    run = _deploy(checkout, tmp_path, _account(stack=denied))
    assert run.returncode == 1
    assert "could not read the state of stack processor" in run.stderr and "AccessDenied" in run.stderr
    # Not a create: no default VPC looked up, nothing written.
    assert "ec2 describe-vpcs" not in run.commands() and run.deployed() is None
    assert "ssm put-parameter" not in run.commands()


@pytest.mark.parametrize(("name", "service"), [
    ("aws-proc", "SSM"), ("amazonia", "SSM"), ("amzn1", "SSM"), ("xn--abc", "S3"), ("sthree-x", "S3"),
])
def test_stack_names_ssm_or_s3_refuse_are_refused_first(
    checkout: Path, tmp_path: Path, name: str, service: str,
) -> None:
    run = _deploy(checkout, tmp_path, _account(), "--stack-name", name)
    assert run.returncode == 2
    assert f"stack name '{name}' may not start with" in run.stderr and f"{service} refuses" in run.stderr
    assert run.calls == []


def test_a_vcpu_quota_too_low_for_the_fleet_stops_before_anything_is_written(
    checkout: Path, tmp_path: Path,
) -> None:
    rules = _account(vcpu_quota=_rule("service-quotas get-service-quota", _ok("4.0")))
    run = _deploy(checkout, tmp_path, rules, "--fleet-size", "3")
    assert run.returncode == 1, run.stderr
    assert "3 x t3.small need 6 vCPUs" in run.stderr and "may run 4 On-Demand standard vCPUs" in run.stderr
    (quota,) = [c for c in run.calls if c[:2] == ["service-quotas", "get-service-quota"]]
    assert "L-1216C47A" in quota
    assert run.deployed() is None and "ssm put-parameter" not in run.commands()
    # Enough for three: deployed.
    ok = _deploy(checkout, tmp_path / "ok", _account(vcpu_quota=_rule("service-quotas get-service-quota",
                                                                      _ok("6.0"))), "--fleet-size", "3")
    assert ok.returncode == 0, ok.stderr


def test_the_artifact_bucket_gets_its_policy_on_every_run(checkout: Path, tmp_path: Path) -> None:
    run = _deploy(checkout, tmp_path, _account())  # the bucket exists (head-bucket succeeds)
    assert run.returncode == 0, run.stderr
    assert "s3api create-bucket" not in run.commands()
    (block,) = _indexes(run, "s3api put-public-access-block")
    assert "BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true" \
        in run.calls[block]
    (policy,) = _indexes(run, "s3api put-bucket-policy")
    document = json.loads(run.calls[policy][run.calls[policy].index("--policy") + 1])
    assert document["Statement"][0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


#: A fleet stack: its group, its drain document, its sizes (FleetSize 3, MinSize 0, MaxSize 10).
_GROUP = "processor-processor"
_FLEET = [
    _rule("cloudformation describe-stacks", _ok(_GROUP),
          args=["Stacks[0].Outputs[?OutputKey=='FleetGroupName'].OutputValue | [0]"]),
    _rule("cloudformation describe-stacks", _ok("processor-DrainDocument"),
          args=["Stacks[0].Outputs[?OutputKey=='DrainDocumentName'].OutputValue | [0]"]),
    _rule("cloudformation describe-stacks", _ok("3\t0\t10"), args=["--stack-name", "processor", "--query",
          "Stacks[0].[Parameters[?ParameterKey=='FleetSize'].ParameterValue | [0], "
          "Parameters[?ParameterKey=='MinSize'].ParameterValue | [0], "
          "Parameters[?ParameterKey=='MaxSize'].ParameterValue | [0]]"]),
    _rule("autoscaling describe-auto-scaling-groups", _ok("7"),
          args=["AutoScalingGroups[0].DesiredCapacity"]),
    _rule("autoscaling describe-auto-scaling-groups", _ok("i-0aaa\ti-0bbb"),
          args=["AutoScalingGroups[0].Instances[?ProtectedFromScaleIn].InstanceId"]),
    _rule("autoscaling suspend-processes", _ok()),
    _rule("autoscaling resume-processes", _ok()),
    _rule("autoscaling set-instance-protection", _ok()),
    _rule("ssm send-command", _ok("cmd-0123")),
    _rule("ssm list-commands", _ok("InProgress"), _ok("Success")),
]


def test_an_update_keeps_the_size_the_fleet_has_scaled_to(checkout: Path, tmp_path: Path) -> None:
    rules = _account(first=_FLEET, stack=_status("UPDATE_COMPLETE"))
    run = _deploy(checkout, tmp_path, rules)
    assert run.returncode == 0, run.stderr
    assert "FleetDesiredCapacity=7" in (run.deployed() or [])
    # Not a shrink: the daemons are left alone.
    assert "ssm send-command" not in run.commands() and "autoscaling suspend-processes" not in run.commands()
    # --fleet-size asks for that size (empty: the template's FleetSize); a first deploy too.
    asked = _deploy(checkout, tmp_path / "asked", rules, "--fleet-size", "9")
    assert asked.returncode == 0, asked.stderr
    assert {"FleetDesiredCapacity=", "FleetSize=9"} <= set(asked.deployed() or [])
    first = _deploy(checkout, tmp_path / "first", _account())
    assert "FleetDesiredCapacity=" in (first.deployed() or [])


def test_a_shrink_stops_the_daemons_first_then_starts_them_again(checkout: Path, tmp_path: Path) -> None:
    rules = _account(first=_FLEET, stack=_status("UPDATE_COMPLETE"))
    run = _deploy(checkout, tmp_path, rules, "--parameter", "MaxSize=4")
    assert run.returncode == 0, run.stderr
    assert "FleetDesiredCapacity=4" in (run.deployed() or [])
    (suspend,) = _indexes(run, "autoscaling suspend-processes", _GROUP, "AlarmNotification")
    (drain,) = _indexes(run, "ssm send-command", "processor-DrainDocument",
                        "Key=tag:processor:fleet,Values=processor")
    (protection,) = _indexes(run, "autoscaling set-instance-protection", "--no-protected-from-scale-in",
                             "i-0aaa", "i-0bbb")
    (execute,) = _indexes(run, "cloudformation execute-change-set")
    (resume,) = _indexes(run, "autoscaling resume-processes", _GROUP)
    (start,) = _indexes(run, "ssm send-command", "AWS-RunShellScript")
    assert suspend < drain < protection < execute < resume < start
    # The drain is waited for (its command polled until it ended) before the change set runs.
    waits = _indexes(run, "ssm list-commands", "cmd-0123")
    assert len(waits) >= 2 and drain < waits[1] < protection


def test_delete_stops_a_fleets_daemons_then_deletes_and_waits(checkout: Path, tmp_path: Path) -> None:
    rules = _account(first=_FLEET, stack=_rule(
        "cloudformation describe-stacks", _ok("UPDATE_COMPLETE"), _ok("DELETE_IN_PROGRESS"),
        _error("Stack with id processor does not exist"), args=["Stacks[0].StackStatus"]))
    run = _deploy(checkout, tmp_path, rules, "--delete")
    assert run.returncode == 0, run.stderr
    (drain,) = _indexes(run, "ssm send-command", "processor-DrainDocument")
    (protection,) = _indexes(run, "autoscaling set-instance-protection", "i-0aaa", "i-0bbb")
    (delete,) = _indexes(run, "cloudformation delete-stack", "processor")
    assert drain < protection < delete
    assert "stack processor is deleted" in run.stderr
    # Nothing built or uploaded, nothing deployed.
    assert run.deployed() is None and not any(c[:2] == ["s3", "cp"] for c in run.calls)


def test_delete_of_one_instance_just_deletes(checkout: Path, tmp_path: Path) -> None:
    rules = _account(stack=_rule("cloudformation describe-stacks", _ok("CREATE_COMPLETE"),
                                 _error("Stack with id processor does not exist"),
                                 args=["Stacks[0].StackStatus"]))
    run = _deploy(checkout, tmp_path, rules, "--delete")
    assert run.returncode == 0, run.stderr
    assert "ssm send-command" not in run.commands()
    assert "cloudformation delete-stack" in run.commands()
    nothing = _deploy(checkout, tmp_path / "none", _account(), "--delete")
    assert nothing.returncode == 0 and "nothing to delete" in nothing.stderr
    assert "cloudformation delete-stack" not in nothing.commands()
