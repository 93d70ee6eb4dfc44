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
artifact bucket, and runs `aws cloudformation deploy` (create or update).

Options:
  --stack-name NAME        stack name, also the prefix of the bucket names
                           (default: processor; lowercase letters, digits and
                           hyphens, 2-28 characters, starting with a letter)
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
EXTRA_PARAMETERS=()

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

# --- build ------------------------------------------------------------------------------

say "building the wheel and the Lambda package"
BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT
(cd "$REPO" && python3 -m pip wheel --no-deps -w "$BUILD" --quiet . >&2)
WHEEL_PATH=$(find "$BUILD" -maxdepth 1 -name 'processor-*.whl' -print -quit)
[ -n "$WHEEL_PATH" ] || { say "pip wheel produced no processor wheel"; exit 1; }

# The Lambda package holds lambda_trigger/ (boto3 comes with the runtime), with
# fixed timestamps so that the same sources give the same zip and the same key.
LAMBDA_ZIP=$BUILD/lambda_trigger.zip
python3 - "$REPO" "$LAMBDA_ZIP" <<'PY'
import sys
import zipfile
from pathlib import Path

repo, target = Path(sys.argv[1]), Path(sys.argv[2])
with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
    for path in sorted((repo / "lambda_trigger").glob("*.py")):
        info = zipfile.ZipInfo(f"lambda_trigger/{path.name}", date_time=(2020, 1, 1, 0, 0, 0))
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
WHEEL_NAME=$(basename "$WHEEL_PATH")
mkdir -p "$DIST"
cp "$WHEEL_PATH" "$DIST/$WHEEL_NAME"
LAMBDA_NAME=lambda_trigger-$(digest "$LAMBDA_ZIP").zip
cp "$LAMBDA_ZIP" "$DIST/$LAMBDA_NAME"
# Content-addressed keys: a new build is a new key, so the stack update sees a change.
WHEEL_KEY=processor/$STACK_NAME/$(digest "$WHEEL_PATH")/$WHEEL_NAME
LAMBDA_KEY=processor/$STACK_NAME/$LAMBDA_NAME
say "built dist/$WHEEL_NAME and dist/$LAMBDA_NAME"

# --- account, region, artifact bucket -------------------------------------------------------

if [ -z "$REGION" ] && [ "$DRY_RUN" = false ]; then
  REGION=$(aws configure get region || true)
fi
[ -n "$REGION" ] || REGION=us-east-1
read -r ACCOUNT CALLER_ARN < <(aws_query "123456789012 arn:aws:iam::123456789012:user/dry-run" \
  sts get-caller-identity --query '[Account,Arn]' --output text)
PARTITION=$(printf '%s' "$CALLER_ARN" | cut -d: -f2)
ARTIFACT_BUCKET=${ARTIFACT_BUCKET:-$STACK_NAME-deploy-$ACCOUNT-$REGION}

if [ "$DRY_RUN" = true ] || ! aws s3api head-bucket --bucket "$ARTIFACT_BUCKET" --region "$REGION" 2>/dev/null; then
  say "creating the artifact bucket $ARTIFACT_BUCKET"
  if [ "$REGION" = us-east-1 ]; then
    aws_cli s3api create-bucket --bucket "$ARTIFACT_BUCKET" --region "$REGION" >/dev/null
  else
    aws_cli s3api create-bucket --bucket "$ARTIFACT_BUCKET" --region "$REGION" \
      --create-bucket-configuration "LocationConstraint=$REGION" >/dev/null
  fi
  aws_cli s3api wait bucket-exists --bucket "$ARTIFACT_BUCKET" --region "$REGION"
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
fi

say "uploading to s3://$ARTIFACT_BUCKET/"
aws_cli s3 cp --region "$REGION" --only-show-errors "$WHEEL_PATH" "s3://$ARTIFACT_BUCKET/$WHEEL_KEY"
aws_cli s3 cp --region "$REGION" --only-show-errors "$LAMBDA_ZIP" "s3://$ARTIFACT_BUCKET/$LAMBDA_KEY"

# --- parameters ------------------------------------------------------------------------------

PARAMETERS=(
  "ArtifactBucket=$ARTIFACT_BUCKET"
  "WheelKey=$WHEEL_KEY"
  "LambdaCodeKey=$LAMBDA_KEY"
  "BucketNamePrefix=$STACK_NAME"
  "ImageId=$AMI_PIN"
)

STACK_EXISTS=false
if [ "$DRY_RUN" = false ] \
   && aws cloudformation describe-stacks --stack-name "$STACK_NAME" --region "$REGION" >/dev/null 2>&1; then
  STACK_EXISTS=true
fi

# Network: on create (or with --subnet-id) the subnet, its VPC and its zone; on an
# update without --subnet-id the stack keeps its values (a new subnet replaces the
# instance).
if [ -z "$SUBNET_ID" ] && [ "$STACK_EXISTS" = false ]; then
  VPC_ID=$(aws_query vpc-0123456789abcdef0 ec2 describe-vpcs --region "$REGION" \
    --filters Name=is-default,Values=true --query 'Vpcs[0].VpcId' --output text)
  if [ -z "$VPC_ID" ] || [ "$VPC_ID" = None ]; then
    say "this region has no default VPC: pass --subnet-id"
    exit 1
  fi
  SUBNET_ID=$(aws_query subnet-0123456789abcdef0 ec2 describe-subnets --region "$REGION" \
    --filters "Name=vpc-id,Values=$VPC_ID" Name=default-for-az,Values=true \
    --query 'sort_by(Subnets, &AvailabilityZone)[0].SubnetId' --output text)
fi
if [ -n "$SUBNET_ID" ]; then
  read -r VPC_ID ZONE < <(aws_query "vpc-0123456789abcdef0 ${REGION}a" ec2 describe-subnets \
    --region "$REGION" --subnet-ids "$SUBNET_ID" \
    --query 'Subnets[0].[VpcId,AvailabilityZone]' --output text)
  PARAMETERS+=("VpcId=$VPC_ID" "SubnetId=$SUBNET_ID" "AvailabilityZone=$ZONE")
fi

# The AMI, pinned in an SSM parameter of our own: CloudFormation resolves an SSM
# parameter at every update, and the public "latest" one moves with each release,
# which would replace the instance on an unrelated update.
if [ "$REFRESH_AMI" = true ] || [ "$DRY_RUN" = true ] \
   || ! aws ssm get-parameter --name "$AMI_PIN" --region "$REGION" >/dev/null 2>&1; then
  AMI=$(aws_query ami-0123456789abcdef0 ssm get-parameter --region "$REGION" --name "$AMI_SOURCE" \
    --query Parameter.Value --output text)
  say "pinning $AMI ($AMI_SOURCE) in $AMI_PIN"
  aws_cli ssm put-parameter --region "$REGION" --name "$AMI_PIN" --type String \
    --data-type aws:ec2:image --value "$AMI" --overwrite >/dev/null
fi

# A fleet's subnets must share one VPC, the security group's (VpcId; known here on
# create or with --subnet-id).
if [ -n "$FLEET_SUBNET_IDS" ]; then
  IFS=, read -r -a FLEET_SUBNETS <<<"$FLEET_SUBNET_IDS"
  FLEET_VPCS=$(aws_query "${VPC_ID:-vpc-0123456789abcdef0}" ec2 describe-subnets --region "$REGION" \
    --subnet-ids "${FLEET_SUBNETS[@]}" --query 'Subnets[].VpcId' --output text | tr -s '\t ' '\n' | sort -u)
  if [ "$(printf '%s\n' "$FLEET_VPCS" | wc -l)" -ne 1 ] \
     || { [ -n "${VPC_ID:-}" ] && [ "$FLEET_VPCS" != "$VPC_ID" ]; }; then
    say "--fleet-subnet-ids must all be in one VPC, the one of the instance ${VPC_ID:-} (they are in: $(printf '%s ' "$FLEET_VPCS"))"
    exit 1
  fi
fi

[ -z "$ALARM_EMAIL" ] || PARAMETERS+=("AlarmEmail=$ALARM_EMAIL")
[ -z "$INSTANCE_TYPE" ] || PARAMETERS+=("InstanceType=$INSTANCE_TYPE")
[ -z "$FLEET_SIZE" ] || PARAMETERS+=("FleetSize=$FLEET_SIZE")
[ -z "$FLEET_SUBNET_IDS" ] || PARAMETERS+=("FleetSubnetIds=$FLEET_SUBNET_IDS")
PARAMETERS+=("${EXTRA_PARAMETERS[@]}")

# --- deploy ------------------------------------------------------------------------------------

say "deploying stack $STACK_NAME in $REGION"
# The template is over CloudFormation's 51,200-byte inline limit: it goes through S3.
aws_cli cloudformation deploy --region "$REGION" --stack-name "$STACK_NAME" \
  --template-file "$TEMPLATE" \
  --s3-bucket "$ARTIFACT_BUCKET" --s3-prefix "processor/$STACK_NAME/templates" \
  --capabilities CAPABILITY_NAMED_IAM \
  --no-fail-on-empty-changeset \
  --tags "Application=processor" "processor:stack=$STACK_NAME" \
  --parameter-overrides "${PARAMETERS[@]}"

aws_cli cloudformation describe-stacks --region "$REGION" --stack-name "$STACK_NAME" \
  --query 'Stacks[0].Outputs[].[OutputKey,OutputValue]' --output table
