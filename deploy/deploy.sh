#!/usr/bin/env bash
# Build the processor wheel and the Lambda package, upload them to an artifact
# bucket, and create or update the CloudFormation stack
# (deploy/cloudformation/processor.yaml). Needs python3 (with pip) and the AWS
# CLI v2 with credentials; docs/DEPLOY.md lists the IAM rights it uses.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: deploy/deploy.sh [options]

Builds dist/processor-*.whl and dist/lambda_trigger-*.zip, uploads them to the
artifact bucket, creates a change set (`aws cloudformation deploy
--no-execute-changeset`), executes it and waits for the stack, however long
a fleet's rolling update takes. A stack that is busy already is waited for.
With --delete: stops a fleet's daemons (so their scale-in protection clears)
and deletes the stack.

Options:
  --stack-name NAME        stack name, also the prefix of the bucket names
                           (default: processor; lowercase letters, digits and
                           hyphens, 2-28 characters, starting with a letter, not
                           with aws, amazon, amzn, xn-- or sthree-)
  --region REGION          AWS region (default: AWS_REGION, else the CLI's configured region)
  --subnet-id SUBNET       subnet of the instance (default on create: a default subnet of
                           the default VPC; on update: the stack's current one). Its VPC
                           and Availability Zone are looked up.
  --artifact-bucket NAME   bucket for the wheel, the Lambda package and the template
                           (default: <stack>-deploy-<account>-<region>, created if missing)
  --alarm-email ADDRESS    send alarm notifications to this address (SNS e-mail subscription)
  --instance-type TYPE     EC2 instance type (default: the template's, t3.small)
  --fleet-size N           number of instances, 1-20 (default on create: 1, one instance;
                           on update: the stack's current value). Above 1: an Auto Scaling
                           group (docs/DEPLOY.md, "A fleet"); changing between 1 and more
                           replaces the instance(s)
  --fleet-subnet-ids LIST  comma-separated subnets of the instance's VPC to spread a fleet
                           over (default: the subnet of --subnet-id)
  --parameter KEY=VALUE    any other template parameter (repeatable), e.g.
                           --parameter 'ProcessingCommand=["/opt/tool", "{input}", "{output_dir}"]'
  --refresh-ami            pin the latest Amazon Linux 2023 AMI again (this REPLACES the
                           instance on update: read docs/DEPLOY.md first)
  --constraints FILE       pip constraints file shipped with the wheel (the versions every
                           instance installs); default: resolved now in a throw-away
                           virtualenv (pip freeze). It must pin boto3, structlog, tenacity
                           and watchtower with ==
  --wheel FILE             deploy this processor wheel (e.g. the one CI built and tested)
                           instead of building one from this checkout
  --delete-failed          a stack left in ROLLBACK_COMPLETE or ROLLBACK_FAILED by a failed
                           first deploy is deleted (and waited for) before deploying again;
                           without it, the script stops and says so
  --delete                 delete the stack instead (a fleet's daemons are stopped first so
                           that no instance keeps its scale-in protection), and wait for it
  --dry-run                build the artifacts and print the AWS commands instead of running them
  -h, --help               show this help

Exit status: 0 deployed (or nothing to change), 1 a build or AWS step failed, 2 usage error.
EOF
}

die_usage() {
  echo "deploy.sh: $*" >&2
  echo "Try 'deploy/deploy.sh --help'." >&2
  exit 2
}

STACK_NAME=processor
REGION=${AWS_REGION:-${AWS_DEFAULT_REGION:-}}
SUBNET_ID=
ARTIFACT_BUCKET=
ALARM_EMAIL=
INSTANCE_TYPE=
FLEET_SIZE=
FLEET_SUBNET_IDS=
REFRESH_AMI=false
DRY_RUN=false
DELETE_FAILED=false
DELETE_STACK=false
CONSTRAINTS_FILE=
WHEEL_FILE=
EXTRA_PARAMETERS=()
# Bounded waits (seconds); the environment may shorten them (the tests do).
AMI_WAIT_SECONDS=${PROCESSOR_DEPLOY_AMI_WAIT_SECONDS:-120}
POLL_SECONDS=${PROCESSOR_DEPLOY_POLL_SECONDS:-3}
# Stack operations and fleet commands are polled at this interval with no ceiling: a
# fleet's rolling update (one instance at a time: a drain, then a bootstrap) can take
# hours, and `aws cloudformation deploy` gives up after 60 minutes (5 s x 720).
STACK_POLL_SECONDS=${PROCESSOR_DEPLOY_STACK_POLL_SECONDS:-15}
#: Lambda keeps 100 concurrent executions unreserved, or the whole quota where it is
#: smaller ("You can reserve up to the Unreserved account concurrency value that is
#: shown, minus 100": Lambda developer guide, "Configuring reserved concurrency").
LAMBDA_UNRESERVED_FLOOR=100
#: The Service Quotas code of "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z)
#: instances", counted in vCPUs (EC2 user guide, "On-Demand Instance quotas").
EC2_STANDARD_VCPU_QUOTA=L-1216C47A

need_value() {
  if [ "$2" -lt 2 ]; then
    die_usage "$1 needs a value"
  fi
}

while [ "$#" -gt 0 ]; do
  case "$1" in
    --stack-name) need_value "$1" "$#"; STACK_NAME=$2; shift 2 ;;
    --region) need_value "$1" "$#"; REGION=$2; shift 2 ;;
    --subnet-id) need_value "$1" "$#"; SUBNET_ID=$2; shift 2 ;;
    --artifact-bucket) need_value "$1" "$#"; ARTIFACT_BUCKET=$2; shift 2 ;;
    --alarm-email) need_value "$1" "$#"; ALARM_EMAIL=$2; shift 2 ;;
    --instance-type) need_value "$1" "$#"; INSTANCE_TYPE=$2; shift 2 ;;
    --fleet-size)
      need_value "$1" "$#"
      if ! [[ $2 =~ ^[0-9]+$ ]] || [ "$2" -lt 1 ] || [ "$2" -gt 20 ]; then
        die_usage "--fleet-size must be a number of instances from 1 to 20, got '$2'"
      fi
      FLEET_SIZE=$2; shift 2 ;;
    --fleet-subnet-ids)
      need_value "$1" "$#"
      if ! [[ $2 =~ ^subnet-[0-9a-f]+(,subnet-[0-9a-f]+)*$ ]]; then
        die_usage "--fleet-subnet-ids must be subnet ids separated by commas, got '$2'"
      fi
      FLEET_SUBNET_IDS=$2; shift 2 ;;
    --parameter)
      need_value "$1" "$#"
      case "$2" in
        [A-Za-z]*=*) EXTRA_PARAMETERS+=("$2") ;;
        *) die_usage "--parameter needs KEY=VALUE, got '$2'" ;;
      esac
      shift 2 ;;
    --refresh-ami) REFRESH_AMI=true; shift ;;
    --wheel)
      need_value "$1" "$#"
      case "$2" in *.whl) ;; *) die_usage "--wheel: '$2' is not a .whl file" ;; esac
      [ -f "$2" ] || die_usage "--wheel: no such file '$2'"
      WHEEL_FILE=$2; shift 2 ;;
    --constraints)
      need_value "$1" "$#"
      [ -f "$2" ] || die_usage "--constraints: no such file '$2'"
      CONSTRAINTS_FILE=$2; shift 2 ;;
    --delete-failed) DELETE_FAILED=true; shift ;;
    --delete) DELETE_STACK=true; shift ;;
    --dry-run) DRY_RUN=true; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die_usage "unknown option '$1'" ;;
  esac
done

# The stack name is also BucketNamePrefix: bucket names are lowercase and at most
# 63 characters (<stack>-output-<12-digit account>-<region of up to 14>).
if ! [[ $STACK_NAME =~ ^[a-z][a-z0-9-]{0,26}[a-z0-9]$ ]]; then
  die_usage "stack name '$STACK_NAME' must be 2-28 lowercase letters, digits and hyphens, starting with a letter"
fi
# The stack name also starts the SSM document names (<stack>-SubmitDocument ...), which
# may not start with aws, amazon or amzn (SSM API reference, CreateDocument: Name), and
# the bucket names, which may not start with xn-- or sthree- (S3 user guide, "General
# purpose bucket naming rules"). Either would fail deep into the stack and roll back.
case "$STACK_NAME" in
  aws*|amazon*|amzn*)
    die_usage "stack name '$STACK_NAME' may not start with aws, amazon or amzn: SSM refuses such document names ($STACK_NAME-SubmitDocument)" ;;
  xn--*|sthree-*)
    die_usage "stack name '$STACK_NAME' may not start with xn-- or sthree-: S3 refuses such bucket names ($STACK_NAME-input-...)" ;;
esac

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TEMPLATE=$REPO/deploy/cloudformation/processor.yaml
DIST=$REPO/dist
AMI_SOURCE=/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64
AMI_PIN=/processor/$STACK_NAME/ami-id

say() {
  echo "deploy.sh: $*" >&2
}

# Runs an AWS CLI command, or prints it (to stderr) under --dry-run.
aws_cli() {
  if [ "$DRY_RUN" = true ]; then
    {
      printf '+ aws'
      printf ' %q' "$@"
      printf '\n'
    } >&2
    return 0
  fi
  aws "$@"
}

# An AWS CLI query whose output the script needs; under --dry-run, $1 stands in.
aws_query() {
  local placeholder=$1
  shift
  if [ "$DRY_RUN" = true ]; then
    aws_cli "$@"
    printf '%s\n' "$placeholder"
    return 0
  fi
  aws "$@"
}

command -v python3 >/dev/null || { say "python3 is required"; exit 1; }
if [ "$DRY_RUN" = false ]; then
  command -v aws >/dev/null || { say "the AWS CLI (v2) is required"; exit 1; }
fi

# `read … < <(aws …)` does not stop on a failed command under set -e: every value
# read from a lookup is checked before it is used.
require() {
  local name=$1 value=$2 what=$3
  if [ -z "$value" ] || [ "$value" = None ]; then
    say "$what ($name came back empty)"
    exit 1
  fi
}

# --- the stack and the fleet -------------------------------------------------------------

# The stack's status, NONE when it does not exist. Any other error (throttling,
# AccessDenied, no network) stops the script: taken for "no stack", it would turn an
# update into a create (the default VPC's subnet, replacements asked for).
stack_status() {
  local out err
  err=$(mktemp)
  if out=$(aws cloudformation describe-stacks --stack-name "$STACK_NAME" --region "$REGION" \
             --query 'Stacks[0].StackStatus' --output text 2>"$err"); then
    rm -f "$err"
    printf '%s\n' "${out:-NONE}"
    return 0
  fi
  if grep -q "does not exist" "$err"; then
    rm -f "$err"
    echo NONE
    return 0
  fi
  say "could not read the state of stack $STACK_NAME in $REGION: $(tr '\n' ' ' <"$err")"
  rm -f "$err"
  return 1
}

# Polls the stack until it is in no *_IN_PROGRESS state, with no ceiling (a fleet's
# rolling update takes as long as it takes), saying each new status; prints the last.
# With "executing", REVIEW_IN_PROGRESS (a change set not yet running) is waited out too.
wait_for_stack() {
  local executing=${1:-} status last='' polls=0
  while :; do
    status=$(stack_status) || return 1
    polls=$((polls + 1))
    # Each new status, and every 40 polls (10 minutes at 15 s) a sign of life.
    if [ "$status" != "$last" ] || [ $((polls % 40)) -eq 0 ]; then
      say "stack $STACK_NAME: $status $(date -u +%H:%M:%S)"
      last=$status
    fi
    case "$status" in
      REVIEW_IN_PROGRESS) [ -n "$executing" ] || break ;;
      *_IN_PROGRESS) ;;
      *) break ;;
    esac
    sleep "$STACK_POLL_SECONDS"
  done
  printf '%s\n' "$status"
}

# The latest failures among the stack's events, to say why an operation failed.
failure_events() {
  aws cloudformation describe-stack-events --stack-name "$STACK_NAME" --region "$REGION" \
    --query "StackEvents[?ends_with(ResourceStatus, 'FAILED')].[Timestamp,LogicalResourceId,ResourceStatusReason]" \
    --output text 2>/dev/null | head -n 10 >&2 || true
}

stack_output() {
  aws_query None cloudformation describe-stacks --region "$REGION" --stack-name "$STACK_NAME" \
    --query "Stacks[0].Outputs[?OutputKey=='$1'].OutputValue | [0]" --output text
}

# Runs an SSM document on every instance of the fleet (its tag) and waits for the
# command to end (the document's own timeout bounds it).
run_on_fleet() {
  local document=$1 what=$2 command_id status
  shift 2
  command_id=$(aws_query cmd-dry-run ssm send-command --region "$REGION" --document-name "$document" \
    --targets "Key=tag:processor:fleet,Values=$STACK_NAME" --max-concurrency 100% --max-errors 100% \
    --comment "deploy.sh: $what" "$@" --query Command.CommandId --output text) || return 1
  require CommandId "$command_id" "SSM did not start the command to $what"
  [ "$DRY_RUN" = false ] || return 0
  while :; do
    status=$(aws ssm list-commands --region "$REGION" --command-id "$command_id" \
      --query 'Commands[0].Status' --output text) || return 1
    case "$status" in Pending|InProgress|Cancelling) sleep "$STACK_POLL_SECONDS" ;; *) break ;; esac
  done
  say "$what: $status (SSM command $command_id)"
}

# The group's instances that still carry scale-in protection, cleared (50 per call,
# SetInstanceProtection's limit).
clear_protection() {
  local group=$1 ids i
  local -a protected=()
  ids=$(aws_query "" autoscaling describe-auto-scaling-groups --region "$REGION" \
    --auto-scaling-group-names "$group" \
    --query 'AutoScalingGroups[0].Instances[?ProtectedFromScaleIn].InstanceId' --output text) || return 1
  [ "$ids" != None ] || ids=''
  read -r -a protected <<<"$ids" || true
  for ((i = 0; i < ${#protected[@]}; i += 50)); do
    say "clearing the scale-in protection of ${protected[*]:i:50}"
    aws_cli autoscaling set-instance-protection --region "$REGION" --auto-scaling-group-name "$group" \
      --no-protected-from-scale-in --instance-ids "${protected[@]:i:50}" || return 1
  done
}

# Before a fleet shrinks or goes: stop it taking new work, then let protection clear.
# Busy daemons keep receiving from the backlog and keep their scale-in protection, so
# the group (and CloudFormation with it) would wait for as long as there is work. The
# scaling policies are suspended (nothing scales out meanwhile), every daemon drains
# (the DrainDocument, systemctl stop: it receives no more, hands its unfinished messages
# back to the queue and clears its own protection on the way out), and whatever
# protection is left (a daemon that had died) is cleared. (EC2 Auto Scaling user guide,
# "Use instance scale-in protection": protected instances are not terminated on scale-in.)
quiesce_fleet() {
  local group=$1 drain
  drain=$(stack_output DrainDocumentName)
  require DrainDocumentName "$drain" "stack $STACK_NAME has no DrainDocumentName output"
  say "stopping the daemons of $group before it shrinks (their messages go back to the queue)"
  aws_cli autoscaling suspend-processes --region "$REGION" --auto-scaling-group-name "$group" \
    --scaling-processes AlarmNotification || return 1
  run_on_fleet "$drain" "drain every daemon of the fleet" || return 1
  clear_protection "$group"
}

# After a shrink: the scaling policies again, and the remaining daemons started.
resume_fleet() {
  local group=$1
  aws_cli autoscaling resume-processes --region "$REGION" --auto-scaling-group-name "$group" \
    --scaling-processes AlarmNotification || return 1
  run_on_fleet AWS-RunShellScript "start the daemons again" \
    --parameters 'commands=["systemctl start processor"]'
}

resolve_region() {
  if [ -z "$REGION" ] && [ "$DRY_RUN" = false ]; then
    REGION=$(aws configure get region || true)
  fi
  [ -n "$REGION" ] || REGION=us-east-1
}

# --- delete ------------------------------------------------------------------------------

if [ "$DELETE_STACK" = true ]; then
  resolve_region
  STATUS=NONE
  if [ "$DRY_RUN" = false ]; then
    STATUS=$(stack_status) || exit 1
    case "$STATUS" in
      *_IN_PROGRESS)
        say "stack $STACK_NAME is busy ($STATUS): waiting for it first"
        STATUS=$(wait_for_stack) || exit 1 ;;
    esac
    if [ "$STATUS" = NONE ]; then
      say "stack $STACK_NAME does not exist in $REGION: nothing to delete"
      exit 0
    fi
  fi
  GROUP=$(stack_output FleetGroupName)
  if [ -n "$GROUP" ] && [ "$GROUP" != None ]; then
    quiesce_fleet "$GROUP" || { say "could not stop the fleet's daemons: the stack is left as it is"; exit 1; }
  fi
  say "deleting stack $STACK_NAME in $REGION"
  aws_cli cloudformation delete-stack --region "$REGION" --stack-name "$STACK_NAME"
  [ "$DRY_RUN" = false ] || exit 0
  STATUS=$(wait_for_stack executing) || exit 1
  if [ "$STATUS" != NONE ] && [ "$STATUS" != DELETE_COMPLETE ]; then
    say "stack $STACK_NAME was not deleted ($STATUS):"
    failure_events
    exit 1
  fi
  say "stack $STACK_NAME is deleted; what it leaves behind is in docs/DEPLOY.md, \"Tear down\""
  exit 0
fi

# --- build ------------------------------------------------------------------------------

say "building the wheel and the Lambda package"
BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT
if [ -n "$WHEEL_FILE" ]; then
  cp "$WHEEL_FILE" "$BUILD/"
else
  (cd "$REPO" && python3 -m pip wheel --no-deps -w "$BUILD" --quiet . >&2)
fi
WHEEL_PATH=$(find "$BUILD" -maxdepth 1 -name 'processor-*.whl' -print -quit)
[ -n "$WHEEL_PATH" ] || { say "pip wheel produced no processor wheel"; exit 1; }

# The Lambda package holds lambda_trigger/ and processor_shared/ (the job id and result
# layout it shares with the worker; boto3 comes with the runtime), with fixed
# timestamps so that the same sources give the same zip and the same key.
LAMBDA_ZIP=$BUILD/lambda_trigger.zip
python3 - "$REPO" "$LAMBDA_ZIP" <<'PY'
import sys
import zipfile
from pathlib import Path

repo, target = Path(sys.argv[1]), Path(sys.argv[2])
with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
    for package in ("lambda_trigger", "processor_shared"):
        for path in sorted((repo / package).glob("*.py")):
            info = zipfile.ZipInfo(f"{package}/{path.name}", date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            archive.writestr(info, path.read_bytes(), zipfile.ZIP_DEFLATED)
PY

# A hash of what a zip holds (names and bytes), not of the zip file: pip stamps
# build times into the wheel, and an unchanged build must keep its key (a new
# WheelKey changes the UserData, which stops and starts the instance). The copy
# of the template the wheel carries (for `processor local`) and the RECORD that
# lists its hash are left out: editing an alarm must not restart the instance.
digest() {
  python3 - "$1" <<'PY'
import hashlib
import sys
import zipfile

hashed = hashlib.sha256()
with zipfile.ZipFile(sys.argv[1]) as archive:
    for name in sorted(archive.namelist()):
        if name.endswith(("/share/processor/cloudformation/processor.yaml", ".dist-info/RECORD")):
            continue
        hashed.update(name.encode() + b"\0" + archive.read(name) + b"\0")
print(hashed.hexdigest()[:16])
PY
}
# The wheel's dependencies, pinned: without a constraints file every boot would
# install whatever boto3/structlog/watchtower is newest that day. Resolved by
# installing the wheel into a throw-away virtualenv, as the instance will.
CONSTRAINTS=$BUILD/constraints.txt
if [ -n "$CONSTRAINTS_FILE" ]; then
  cp "$CONSTRAINTS_FILE" "$CONSTRAINTS"
else
  say "resolving the wheel's dependencies for the constraints file"
  python3 -m venv "$BUILD/resolve"
  "$BUILD/resolve/bin/python" -m pip install --quiet --disable-pip-version-check "$WHEEL_PATH" >&2
  "$BUILD/resolve/bin/python" -m pip freeze --disable-pip-version-check --exclude processor >"$CONSTRAINTS"
fi
for dependency in boto3 structlog tenacity watchtower; do
  if ! grep -Eiq "^$dependency==[0-9][^ ;]*\$" "$CONSTRAINTS"; then
    say "the constraints file ${CONSTRAINTS_FILE:-(pip freeze)} does not pin $dependency with ==: the instances would install an unpinned $dependency"
    exit 1
  fi
done

WHEEL_NAME=$(basename "$WHEEL_PATH")
mkdir -p "$DIST"
cp "$WHEEL_PATH" "$DIST/$WHEEL_NAME"
LAMBDA_NAME=lambda_trigger-$(digest "$LAMBDA_ZIP").zip
cp "$LAMBDA_ZIP" "$DIST/$LAMBDA_NAME"
# Content-addressed keys: a new build is a new key, so the stack update sees a change.
WHEEL_KEY=processor/$STACK_NAME/$(digest "$WHEEL_PATH")/$WHEEL_NAME
# Next to the wheel, named by its content: new pins are a new key (and UserData).
CONSTRAINTS_NAME=constraints-$(python3 -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest()[:16])' "$CONSTRAINTS").txt
CONSTRAINTS_KEY=${WHEEL_KEY%/*}/$CONSTRAINTS_NAME
cp "$CONSTRAINTS" "$DIST/$CONSTRAINTS_NAME"
LAMBDA_KEY=processor/$STACK_NAME/$LAMBDA_NAME
say "built dist/$WHEEL_NAME, dist/$CONSTRAINTS_NAME and dist/$LAMBDA_NAME"

# --- account, region, stack state -------------------------------------------------------------

resolve_region
ACCOUNT='' CALLER_ARN=''
read -r ACCOUNT CALLER_ARN < <(aws_query "123456789012 arn:aws:iam::123456789012:user/dry-run" \
  sts get-caller-identity --query '[Account,Arn]' --output text) || true
require ACCOUNT "$ACCOUNT" "could not identify the AWS account: check the CLI's credentials (aws sts get-caller-identity)"
require CALLER_ARN "${CALLER_ARN:-}" "could not identify the AWS caller: check the CLI's credentials (aws sts get-caller-identity)"
PARTITION=$(printf '%s' "$CALLER_ARN" | cut -d: -f2)
ARTIFACT_BUCKET=${ARTIFACT_BUCKET:-$STACK_NAME-deploy-$ACCOUNT-$REGION}

# What state the stack is in decides create or update. A failed first deploy leaves
# ROLLBACK_COMPLETE (or ROLLBACK_FAILED): such a stack cannot be updated, only
# deleted. REVIEW_IN_PROGRESS is a stack that has never been created (a change set
# was made but not run): `cloudformation deploy` creates it, so it is new here too.
# A stack busy with another operation (an earlier run's long rolling update) is
# waited for, then looked at again.
STACK_STATUS=NONE
if [ "$DRY_RUN" = false ]; then
  STACK_STATUS=$(stack_status) || exit 1
  case "$STACK_STATUS" in
    REVIEW_IN_PROGRESS) ;;
    *_IN_PROGRESS)
      say "stack $STACK_NAME is busy ($STACK_STATUS): waiting for that operation to end first"
      STACK_STATUS=$(wait_for_stack) || exit 1 ;;
  esac
fi
case "$STACK_STATUS" in
  UPDATE_ROLLBACK_FAILED)
    say "stack $STACK_NAME is in UPDATE_ROLLBACK_FAILED: it cannot be updated until its rollback is continued"
    say "(aws cloudformation continue-update-rollback --stack-name $STACK_NAME --region $REGION, see its events first)"
    exit 1 ;;
  DELETE_FAILED)
    say "stack $STACK_NAME is in DELETE_FAILED: delete it again (deploy/deploy.sh --delete), see its events first"
    exit 1 ;;
  ROLLBACK_COMPLETE|ROLLBACK_FAILED)
    if [ "$DELETE_FAILED" = false ]; then
      say "stack $STACK_NAME is in $STACK_STATUS: its first deploy failed and it cannot be updated."
      say "Read why in the stack's events (aws cloudformation describe-stack-events --stack-name $STACK_NAME --region $REGION),"
      say "then run deploy/deploy.sh again with --delete-failed to delete it and deploy afresh."
      exit 1
    fi
    say "deleting the failed stack $STACK_NAME ($STACK_STATUS) before deploying again"
    aws cloudformation delete-stack --stack-name "$STACK_NAME" --region "$REGION"
    if ! aws cloudformation wait stack-delete-complete --stack-name "$STACK_NAME" --region "$REGION"; then
      say "stack $STACK_NAME could not be deleted: see its events, delete what is left, then deploy again"
      exit 1
    fi
    STACK_STATUS=NONE ;;
esac
STACK_EXISTS=true
case "$STACK_STATUS" in NONE|REVIEW_IN_PROGRESS) STACK_EXISTS=false ;; esac

# --- artifact bucket and upload ------------------------------------------------------------

if [ "$DRY_RUN" = true ] || ! aws s3api head-bucket --bucket "$ARTIFACT_BUCKET" --region "$REGION" 2>/dev/null; then
  say "creating the artifact bucket $ARTIFACT_BUCKET"
  if [ "$REGION" = us-east-1 ]; then
    aws_cli s3api create-bucket --bucket "$ARTIFACT_BUCKET" --region "$REGION" >/dev/null
  else
    aws_cli s3api create-bucket --bucket "$ARTIFACT_BUCKET" --region "$REGION" \
      --create-bucket-configuration "LocationConstraint=$REGION" >/dev/null
  fi
  aws_cli s3api wait bucket-exists --bucket "$ARTIFACT_BUCKET" --region "$REGION"
fi
# On every run, not only when the bucket is created: a run that died between the
# creation and these would otherwise leave the bucket without them for good.
aws_cli s3api put-public-access-block --bucket "$ARTIFACT_BUCKET" --region "$REGION" \
  --public-access-block-configuration \
  BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true
aws_cli s3api put-bucket-policy --bucket "$ARTIFACT_BUCKET" --region "$REGION" --policy "$(cat <<EOF
{"Version": "2012-10-17", "Statement": [{"Sid": "DenyInsecureTransport", "Effect": "Deny",
 "Principal": "*", "Action": "s3:*",
 "Resource": ["arn:$PARTITION:s3:::$ARTIFACT_BUCKET", "arn:$PARTITION:s3:::$ARTIFACT_BUCKET/*"],
 "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]}
EOF
)"

say "uploading to s3://$ARTIFACT_BUCKET/"
aws_cli s3 cp --region "$REGION" --only-show-errors "$WHEEL_PATH" "s3://$ARTIFACT_BUCKET/$WHEEL_KEY"
aws_cli s3 cp --region "$REGION" --only-show-errors "$CONSTRAINTS" "s3://$ARTIFACT_BUCKET/$CONSTRAINTS_KEY"
aws_cli s3 cp --region "$REGION" --only-show-errors "$LAMBDA_ZIP" "s3://$ARTIFACT_BUCKET/$LAMBDA_KEY"

# --- parameters ------------------------------------------------------------------------------

PARAMETERS=(
  "ArtifactBucket=$ARTIFACT_BUCKET"
  "WheelKey=$WHEEL_KEY"
  "ConstraintsKey=$CONSTRAINTS_KEY"
  "LambdaCodeKey=$LAMBDA_KEY"
  "BucketNamePrefix=$STACK_NAME"
  "ImageId=$AMI_PIN"
)

# Network: on create (or with --subnet-id) the subnet, its VPC and its zone; on an
# update without --subnet-id the stack keeps its values (a new subnet replaces the
# instance).
ZONE=
if [ -z "$SUBNET_ID" ] && [ "$STACK_EXISTS" = false ]; then
  VPC_ID=$(aws_query vpc-0123456789abcdef0 ec2 describe-vpcs --region "$REGION" \
    --filters Name=is-default,Values=true --query 'Vpcs[0].VpcId' --output text)
  require VPC_ID "$VPC_ID" "this region ($REGION) has no default VPC: pass --subnet-id"
  SUBNET_ID=$(aws_query subnet-0123456789abcdef0 ec2 describe-subnets --region "$REGION" \
    --filters "Name=vpc-id,Values=$VPC_ID" Name=default-for-az,Values=true \
    --query 'sort_by(Subnets, &AvailabilityZone)[0].SubnetId' --output text)
  require SUBNET_ID "$SUBNET_ID" "the default VPC $VPC_ID has no default subnet: pass --subnet-id"
fi
if [ -n "$SUBNET_ID" ]; then
  VPC_ID='' ZONE=''
  read -r VPC_ID ZONE < <(aws_query "vpc-0123456789abcdef0 ${REGION}a" ec2 describe-subnets \
    --region "$REGION" --subnet-ids "$SUBNET_ID" \
    --query 'Subnets[0].[VpcId,AvailabilityZone]' --output text) || true
  require VPC_ID "$VPC_ID" "could not look up subnet $SUBNET_ID in $REGION (does it exist in this region?)"
  require ZONE "${ZONE:-}" "could not look up the Availability Zone of subnet $SUBNET_ID"
  PARAMETERS+=("VpcId=$VPC_ID" "SubnetId=$SUBNET_ID" "AvailabilityZone=$ZONE")
fi

# A fleet's subnets must share one VPC, the security group's (VpcId; known here on
# create or with --subnet-id).
if [ -n "$FLEET_SUBNET_IDS" ]; then
  IFS=, read -r -a FLEET_SUBNETS <<<"$FLEET_SUBNET_IDS"
  FLEET_VPCS=$(aws_query "${VPC_ID:-vpc-0123456789abcdef0}" ec2 describe-subnets --region "$REGION" \
    --subnet-ids ${FLEET_SUBNETS[@]+"${FLEET_SUBNETS[@]}"} --query 'Subnets[].VpcId' --output text | tr -s '\t ' '\n' | sort -u)
  if [ "$(printf '%s\n' "$FLEET_VPCS" | wc -l)" -ne 1 ] \
     || { [ -n "${VPC_ID:-}" ] && [ "$FLEET_VPCS" != "$VPC_ID" ]; }; then
    say "--fleet-subnet-ids must all be in one VPC, the one of the instance ${VPC_ID:-} (they are in: $(printf '%s ' "$FLEET_VPCS"))"
    exit 1
  fi
fi

# The instance type: offered in every zone it may launch in (else EC2 refuses the
# launch deep into the deploy) and Nitro (the bootstrap finds the data volume by its
# NVMe device link). Checked whenever the type or a zone may change: on create,
# --instance-type, --subnet-id or --fleet-subnet-ids. The type is the one asked for,
# else the stack's current one, else the template's default.
# Extra parameters given as --parameter KEY=VALUE, by name (the last one wins).
extra_parameter() {
  local parameter value=''
  for parameter in ${EXTRA_PARAMETERS[@]+"${EXTRA_PARAMETERS[@]}"}; do
    case "$parameter" in "$1"=*) value=${parameter#*=} ;; esac
  done
  printf '%s' "$value"
}
if [ -n "$INSTANCE_TYPE" ] || [ -n "$ZONE" ] || [ -n "$FLEET_SUBNET_IDS" ] || [ -n "$FLEET_SIZE" ] \
   || [ -n "$(extra_parameter MaxSize)" ]; then
  TYPE=$INSTANCE_TYPE
  if [ -z "$TYPE" ] && [ "$STACK_EXISTS" = true ]; then
    TYPE=$(aws_query None cloudformation describe-stacks --region "$REGION" --stack-name "$STACK_NAME" \
      --query "Stacks[0].Parameters[?ParameterKey=='InstanceType'].ParameterValue | [0]" --output text)
  fi
  if [ -z "$TYPE" ] || [ "$TYPE" = None ]; then
    TYPE=$(awk '/^  InstanceType:$/ {found = 1} found && /^    Default:/ {print $2; exit}' "$TEMPLATE")
  fi
  ZONES=$ZONE
  if [ -n "$FLEET_SUBNET_IDS" ]; then
    FLEET_ZONES=$(aws_query "${REGION}a" ec2 describe-subnets --region "$REGION" \
      --subnet-ids ${FLEET_SUBNETS[@]+"${FLEET_SUBNETS[@]}"} --query 'Subnets[].AvailabilityZone' \
      --output text | tr -s '\t ' '\n' | sort -u)
    require FLEET_ZONES "$FLEET_ZONES" "could not look up the Availability Zones of --fleet-subnet-ids $FLEET_SUBNET_IDS"
    ZONES="$ZONES $FLEET_ZONES"
  fi
  for zone in $ZONES; do
    OFFERED=$(aws_query "$TYPE" ec2 describe-instance-type-offerings --region "$REGION" \
      --location-type availability-zone \
      --filters "Name=location,Values=$zone" "Name=instance-type,Values=$TYPE" \
      --query 'InstanceTypeOfferings[].InstanceType' --output text)
    if [ -z "$OFFERED" ] || [ "$OFFERED" = None ]; then
      say "instance type $TYPE is not offered in $zone (a zone of the instance's or the fleet's subnets): pick another --instance-type or subnet"
      exit 1
    fi
  done
  HYPERVISOR='' BARE_METAL='' VCPUS=''
  read -r HYPERVISOR BARE_METAL VCPUS < <(aws_query "nitro False 2" ec2 describe-instance-types --region "$REGION" \
    --instance-types "$TYPE" --query 'InstanceTypes[0].[Hypervisor,BareMetal,VCpuInfo.DefaultVCpus]' \
    --output text) || true
  require HYPERVISOR "$HYPERVISOR" "could not look up instance type $TYPE in $REGION"
  if [ "$HYPERVISOR" != nitro ] && [ "${BARE_METAL:-}" != True ]; then
    say "instance type $TYPE is not Nitro-based (hypervisor: $HYPERVISOR): the bootstrap finds the data volume by its NVMe device; pick a Nitro type such as t3, m5, m6i, c6i"
    exit 1
  fi
  # The account's On-Demand vCPU quota against what the stack may run: one instance, or
  # the fleet's FleetSize (MaxSize where larger). A fresh account's quota is often a few
  # vCPUs; EC2 then refuses the launches and the group's CreationPolicy times out after
  # 30 minutes. Standard families only (A, C, D, H, I, M, R, T, Z: one quota); instances
  # already running in the account count against it too.
  COUNT=${FLEET_SIZE:-1}
  if [ -z "$FLEET_SIZE" ] && [ "$STACK_EXISTS" = true ]; then
    COUNT=$(aws_query 1 cloudformation describe-stacks --region "$REGION" --stack-name "$STACK_NAME" \
      --query "Stacks[0].Parameters[?ParameterKey=='FleetSize'].ParameterValue | [0]" --output text)
    [[ $COUNT =~ ^[0-9]+$ ]] || COUNT=1
  fi
  MAX_PARAMETER=$(extra_parameter MaxSize)
  if [ "$COUNT" -gt 1 ] && [[ $MAX_PARAMETER =~ ^[0-9]+$ ]] && [ "$MAX_PARAMETER" -gt "$COUNT" ]; then
    COUNT=$MAX_PARAMETER
  fi
  case "$TYPE" in
    [acdhimrtz]*)
      if [[ ${VCPUS:-} =~ ^[0-9]+$ ]]; then
        QUOTA=$(aws_query 1000.0 service-quotas get-service-quota --region "$REGION" --service-code ec2 \
          --quota-code "$EC2_STANDARD_VCPU_QUOTA" --query Quota.Value --output text 2>/dev/null || true)
        QUOTA=${QUOTA%%.*}
        if ! [[ $QUOTA =~ ^[0-9]+$ ]]; then
          say "note: could not read the EC2 vCPU quota ($EC2_STANDARD_VCPU_QUOTA, service-quotas:GetServiceQuota); not checked"
        elif [ $((COUNT * VCPUS)) -gt "$QUOTA" ]; then
          say "$COUNT x $TYPE need $((COUNT * VCPUS)) vCPUs, and this account may run $QUOTA On-Demand standard vCPUs in $REGION:"
          say "ask for more (Service Quotas, EC2, 'Running On-Demand Standard instances', $EC2_STANDARD_VCPU_QUOTA) or deploy fewer or smaller instances"
          exit 1
        fi
      fi ;;
  esac
fi

# A reserved concurrency comes out of the account's unreserved pool, which Lambda
# keeps at 100 or more (at the whole quota where that is below 100): a new account
# whose quota is 10 cannot reserve anything, and CloudFormation would only say so
# when it creates the function, after the bootstrap, and roll back.
RESERVED=$(extra_parameter TriggerReservedConcurrency)
if [ -n "$RESERVED" ]; then
  if ! [[ $RESERVED =~ ^(-1|[0-9]+)$ ]]; then
    die_usage "TriggerReservedConcurrency must be -1 (none) or a number of executions, got '$RESERVED'"
  fi
  if [ "$RESERVED" -gt 0 ]; then
    QUOTA='' UNRESERVED=''
    read -r QUOTA UNRESERVED < <(aws_query "1000 1000" lambda get-account-settings --region "$REGION" \
      --query 'AccountLimit.[ConcurrentExecutions,UnreservedConcurrentExecutions]' --output text) || true
    require UnreservedConcurrentExecutions "${UNRESERVED:-}" "could not read the account's Lambda concurrency (aws lambda get-account-settings)"
    [[ $QUOTA =~ ^[0-9]+$ ]] && [[ $UNRESERVED =~ ^[0-9]+$ ]] \
      || { say "aws lambda get-account-settings gave '$QUOTA $UNRESERVED', not two numbers"; exit 1; }
    FLOOR=$LAMBDA_UNRESERVED_FLOOR
    [ "$QUOTA" -ge "$FLOOR" ] || FLOOR=$QUOTA
    # On an update the function's own reservation is already out of the pool.
    CURRENT=0
    if [ "$STACK_EXISTS" = true ]; then
      FUNCTION=$(aws_query None cloudformation describe-stacks --region "$REGION" --stack-name "$STACK_NAME" \
        --query "Stacks[0].Outputs[?OutputKey=='TriggerFunctionName'].OutputValue | [0]" --output text)
      if [ -n "$FUNCTION" ] && [ "$FUNCTION" != None ]; then
        CURRENT=$(aws_query None lambda get-function-concurrency --region "$REGION" --function-name "$FUNCTION" \
          --query ReservedConcurrentExecutions --output text)
        [[ $CURRENT =~ ^[0-9]+$ ]] || CURRENT=0
      fi
    fi
    if [ $((UNRESERVED + CURRENT - RESERVED)) -lt "$FLOOR" ]; then
      say "TriggerReservedConcurrency=$RESERVED cannot be reserved: this account has $((UNRESERVED + CURRENT)) unreserved concurrent executions in $REGION (quota $QUOTA) and Lambda keeps $FLOOR unreserved."
      say "Deploy without it (the default, -1: no reservation), or ask for a higher Lambda concurrency quota (Service Quotas, 'Concurrent executions') first."
      exit 1
    fi
  fi
fi

# The AMI (after the checks above: this step writes), pinned in an SSM parameter of
# our own: CloudFormation resolves an SSM parameter at every update, and the public
# "latest" one moves with each release, which would replace the instance on an
# unrelated update.
if [ "$REFRESH_AMI" = true ] || [ "$DRY_RUN" = true ] \
   || ! aws ssm get-parameter --name "$AMI_PIN" --region "$REGION" >/dev/null 2>&1; then
  AMI=$(aws_query ami-0123456789abcdef0 ssm get-parameter --region "$REGION" --name "$AMI_SOURCE" \
    --query Parameter.Value --output text)
  require AMI "$AMI" "could not read the latest Amazon Linux 2023 AMI from $AMI_SOURCE"
  say "pinning $AMI ($AMI_SOURCE) in $AMI_PIN"
  aws_cli ssm put-parameter --region "$REGION" --name "$AMI_PIN" --type String \
    --data-type aws:ec2:image --value "$AMI" --overwrite >/dev/null
  # SSM validates an aws:ec2:image value asynchronously: until it has, get-parameter
  # does not return it and a deploy that resolves the parameter fails.
  if [ "$DRY_RUN" = false ]; then
    waited=0
    until [ "$(aws ssm get-parameter --region "$REGION" --name "$AMI_PIN" \
               --query Parameter.Value --output text 2>/dev/null || true)" = "$AMI" ]; do
      if [ "$waited" -ge "$AMI_WAIT_SECONDS" ]; then
        say "SSM has not accepted $AMI in $AMI_PIN after ${AMI_WAIT_SECONDS}s (the aws:ec2:image check failed or is slow):"
        say "see aws ssm get-parameter-history --name $AMI_PIN --region $REGION, then deploy again"
        exit 1
      fi
      sleep "$POLL_SECONDS"
      waited=$((waited + POLL_SECONDS))
    done
  fi
fi

# --- a fleet's size -------------------------------------------------------------------------

# On an update of a fleet the template gets the group's current desired capacity
# (FleetDesiredCapacity), within the update's MinSize..MaxSize, so that an update never
# sets a fleet the scaling policies have grown or shrunk back to FleetSize. Always
# passed (empty: FleetSize), since `cloudformation deploy` would reuse a previous value
# that is stale by now. --fleet-size N asks for N. An update that leaves the group fewer
# instances than it wants now (a lower --fleet-size or MaxSize, or one instance again)
# stops the fleet's daemons first (quiesce_fleet), then starts the remaining ones again.
GROUP='' DESIRED='' SHRINK=false NEW_FLEET=${FLEET_SIZE:-1}
if [ "$STACK_EXISTS" = true ]; then
  GROUP=$(stack_output FleetGroupName)
  [ "$GROUP" != None ] || GROUP=''
fi
if [ -n "$GROUP" ]; then
  CURRENT=$(aws_query 2 autoscaling describe-auto-scaling-groups --region "$REGION" \
    --auto-scaling-group-names "$GROUP" --query 'AutoScalingGroups[0].DesiredCapacity' --output text)
  OLD_FLEET='' OLD_MIN='' OLD_MAX=''
  read -r OLD_FLEET OLD_MIN OLD_MAX < <(aws_query "2 0 0" cloudformation describe-stacks --region "$REGION" \
    --stack-name "$STACK_NAME" --query "Stacks[0].[Parameters[?ParameterKey=='FleetSize'].ParameterValue | [0], \
Parameters[?ParameterKey=='MinSize'].ParameterValue | [0], Parameters[?ParameterKey=='MaxSize'].ParameterValue | [0]]" \
    --output text) || true
  NEW_FLEET=${FLEET_SIZE:-$OLD_FLEET}
  NEW_MIN=$(extra_parameter MinSize)
  NEW_MIN=${NEW_MIN:-$OLD_MIN}
  NEW_MAX=$(extra_parameter MaxSize)
  NEW_MAX=${NEW_MAX:-$OLD_MAX}
  for value in "$CURRENT" "$NEW_FLEET" "$NEW_MIN" "$NEW_MAX"; do
    [[ $value =~ ^[0-9]+$ ]] || { say "could not read the size of $GROUP and the stack's FleetSize, MinSize and MaxSize (got '$value')"; exit 1; }
  done
  [ "$NEW_MAX" -ne 0 ] || NEW_MAX=$NEW_FLEET
  if [ "$NEW_FLEET" -eq 1 ]; then
    TARGET=0  # back to one instance: the group goes
  elif [ -n "$FLEET_SIZE" ]; then
    TARGET=$FLEET_SIZE
  else
    DESIRED=$CURRENT
    [ "$DESIRED" -ge "$NEW_MIN" ] || DESIRED=$NEW_MIN
    [ "$DESIRED" -le "$NEW_MAX" ] || DESIRED=$NEW_MAX
    TARGET=$DESIRED
  fi
  if [ "$TARGET" -lt "$CURRENT" ]; then
    SHRINK=true
  fi
fi
PARAMETERS+=("FleetDesiredCapacity=$DESIRED")

[ -z "$ALARM_EMAIL" ] || PARAMETERS+=("AlarmEmail=$ALARM_EMAIL")
[ -z "$INSTANCE_TYPE" ] || PARAMETERS+=("InstanceType=$INSTANCE_TYPE")
[ -z "$FLEET_SIZE" ] || PARAMETERS+=("FleetSize=$FLEET_SIZE")
[ -z "$FLEET_SUBNET_IDS" ] || PARAMETERS+=("FleetSubnetIds=$FLEET_SUBNET_IDS")
# ${a[@]+"${a[@]}"}: bash before 4.4 (macOS ships 3.2) calls an empty array unbound under set -u.
PARAMETERS+=(${EXTRA_PARAMETERS[@]+"${EXTRA_PARAMETERS[@]}"})

# --- deploy ------------------------------------------------------------------------------------

# A change set made by `cloudformation deploy --no-execute-changeset` (it uploads the
# template, keeps the previous value of every parameter not passed, and with
# --no-fail-on-empty-changeset says when nothing changes), then executed and waited for
# here: the CLI's own wait gives up after 60 minutes (its waiter polls 5 s x 720 times)
# while the stack goes on, and a fleet's rolling update (a drain and a bootstrap per
# instance, PauseTime 30 minutes each) can take longer.
say "creating a change set for stack $STACK_NAME in $REGION"
# The template is over CloudFormation's 51,200-byte inline limit: it goes through S3.
CREATED=$(aws_query "" cloudformation deploy --region "$REGION" --stack-name "$STACK_NAME" \
  --template-file "$TEMPLATE" \
  --s3-bucket "$ARTIFACT_BUCKET" --s3-prefix "processor/$STACK_NAME/templates" \
  --capabilities CAPABILITY_NAMED_IAM \
  --no-execute-changeset --no-fail-on-empty-changeset \
  --tags "Application=processor" "processor:stack=$STACK_NAME" \
  --parameter-overrides ${PARAMETERS[@]+"${PARAMETERS[@]}"}) || { say "the change set could not be created"; exit 1; }
[ "$DRY_RUN" = false ] || exit 0
CHANGE_SET=$(printf '%s\n' "$CREATED" | grep -o 'arn:[^ ]*:changeSet/[^ ]*' | head -n 1 || true)
if [ -z "$CHANGE_SET" ]; then
  if printf '%s\n' "$CREATED" | grep -q 'No changes to deploy'; then
    say "stack $STACK_NAME is up to date: nothing to change"
  else
    say "cloudformation deploy named no change set: $CREATED"
    exit 1
  fi
else
  if [ "$SHRINK" = true ]; then
    quiesce_fleet "$GROUP" || { say "could not stop the fleet's daemons: the change set $CHANGE_SET is left unexecuted"; exit 1; }
  fi
  say "executing $CHANGE_SET"
  aws cloudformation execute-change-set --region "$REGION" --change-set-name "$CHANGE_SET"
  STATUS=$(wait_for_stack executing) || exit 1
  # The group is still there (a smaller fleet, or an update that rolled back): its
  # daemons run again.
  if [ "$SHRINK" = true ] && { [ "$NEW_FLEET" -gt 1 ] || [ "$STATUS" != UPDATE_COMPLETE ]; }; then
    resume_fleet "$GROUP" || say "could not start the fleet's daemons again: run systemctl start processor on its instances"
  fi
  case "$STATUS" in
    CREATE_COMPLETE|UPDATE_COMPLETE) ;;
    *)
      say "stack $STACK_NAME did not deploy ($STATUS); the latest failures:"
      failure_events
      exit 1 ;;
  esac
fi

aws_cli cloudformation describe-stacks --region "$REGION" --stack-name "$STACK_NAME" \
  --query 'Stacks[0].Outputs[].[OutputKey,OutputValue]' --output table
