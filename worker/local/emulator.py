"""The embedded AWS emulator (moto server on loopback) and the stack's resources in it."""

from __future__ import annotations

import json
import logging
import socket
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from moto.server import ThreadedMotoServer

from worker.errors import ConfigError
from worker.local import cfn

#: Region and dummy credentials of the emulator; real AWS is never contacted.
REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}

#: The name the local stack plays, so document names match a deployed stack's.
STACK_NAME = "processor"

#: The tag every local instance carries, as on AWS (what the operator documents target).
INSTANCE_TAG = "processor:fleet"

#: The fleet's work queue: its lease (default visibility) is short locally so a
#: message of a stopped daemon comes back while you watch (AWS default: 300 s).
WORK_QUEUE_VISIBILITY_S = 30
#: Receives before SQS moves a message to the DLQ: a backstop only (the daemons
#: send failed and malformed messages there themselves, and hand work back as
#: fresh messages); above 2 x processing.max_attempts (3), since a holder's
#: death can cost a receive and a deferral another.
WORK_QUEUE_MAX_RECEIVES = 10
#: The DLQ keeps messages for the longest SQS allows (14 days), for inspection.
DLQ_RETENTION_S = 14 * 24 * 3600


@dataclass(frozen=True)
class Resources:
    endpoint: str
    input_bucket: str
    output_bucket: str
    queue_url: str
    dead_letter_queue_url: str
    instance_ids: tuple[str, ...]
    submit_document: str
    #: A fleet's (--instances > 1) shared work queue and its dead-letter queue; empty for
    #: one instance, which keeps the SSM flow.
    work_queue_url: str = ""
    work_dead_letter_queue_url: str = ""
    #: A fleet's job record table (DynamoDB; worker.fleet.dynamo).
    job_table: str = ""
    #: Every SSM document of the stack, by name (the submit document and the operators').
    documents: tuple[str, ...] = ()


class Emulator:
    """moto server on 127.0.0.1:port, started and stopped with the stack."""

    def __init__(self, port: int) -> None:
        check_port_free(port)
        # One access-log line per emulated request drowns the console.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self._server.start()
        host, bound = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{bound}"

    def env(self) -> dict[str, str]:
        """Environment that points any AWS SDK or CLI at the emulator."""
        return {**CREDENTIALS, "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION,
                "AWS_ENDPOINT_URL": self.endpoint}

    def client(self, service: str) -> Any:
        return boto3.session.Session(
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=REGION,
        ).client(service, endpoint_url=self.endpoint,
                 config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard"}))

    def stop(self) -> None:
        self._server.stop()


def check_port_free(port: int) -> None:
    """Fail (ConfigError naming --port) unless 127.0.0.1:port can be bound now."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
    except OSError as exc:
        raise ConfigError(
            f"--port {port}: cannot listen on 127.0.0.1:{port} ({exc.strerror}); "
            "is another `processor local` running? Pick another with --port", key="--port",
        ) from None
    finally:
        probe.close()


def provision(
    emulator: Emulator, *, input_bucket: str, output_bucket: str, instances: int = 1
) -> Resources:
    """Create what the CloudFormation stack would: buckets, the event path, documents, an instance."""
    s3, sqs, ssm, ec2 = (emulator.client(name) for name in ("s3", "sqs", "ssm", "ec2"))
    for bucket in (input_bucket, output_bucket):
        s3.create_bucket(Bucket=bucket)
    # Versioned input, as in the stack: a new upload of a key is a new job.
    s3.put_bucket_versioning(Bucket=input_bucket, VersioningConfiguration={"Status": "Enabled"})

    dlq_url = sqs.create_queue(QueueName=f"{STACK_NAME}-events-dlq")["QueueUrl"]
    dlq_arn = _queue_arn(sqs, dlq_url)
    queue_url = sqs.create_queue(
        QueueName=f"{STACK_NAME}-events",
        Attributes={
            # A failed Lambda call leaves the message; it is retried after the
            # visibility timeout and parked in the DLQ after 3 receives, like
            # Lambda's async retries and its on-failure destination.
            "VisibilityTimeout": "5",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "3"}),
        },
    )["QueueUrl"]
    queue_arn = _queue_arn(sqs, queue_url)
    # S3 -> SQS stands in for S3 -> Lambda, which the emulator only runs in Docker.
    s3.put_bucket_notification_configuration(
        Bucket=input_bucket,
        NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*"]}]
        },
    )

    specs = cfn.ssm_documents(cfn.load_template(cfn.default_template_path()), STACK_NAME)
    cfn.create_documents(ssm, specs)
    submit = next(spec.name for spec in specs if spec.logical_id == "SubmitDocument")

    work_queue_url, work_dlq_url = _work_queue(sqs) if instances > 1 else ("", "")
    job_table = _job_table(emulator.client("dynamodb")) if instances > 1 else ""

    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    launched = ec2.run_instances(
        ImageId=image, MinCount=instances, MaxCount=instances, InstanceType="t3.small",
        TagSpecifications=[{"ResourceType": "instance",
                            "Tags": [{"Key": INSTANCE_TAG, "Value": STACK_NAME}]}],
    )["Instances"]
    return Resources(
        endpoint=emulator.endpoint, input_bucket=input_bucket, output_bucket=output_bucket,
        queue_url=queue_url, dead_letter_queue_url=dlq_url,
        instance_ids=tuple(sorted(i["InstanceId"] for i in launched)),
        submit_document=submit, work_queue_url=work_queue_url,
        documents=tuple(spec.name for spec in specs),
        work_dead_letter_queue_url=work_dlq_url, job_table=job_table,
    )


def _job_table(dynamodb: Any) -> str:
    """The fleet's job record table, as the stack has it (worker.fleet.dynamo.table_definition)."""
    from worker.fleet.dynamo import table_definition

    name = f"{STACK_NAME}-jobs"
    dynamodb.create_table(**table_definition(name))
    return name


def _work_queue(sqs: Any) -> tuple[str, str]:
    """The fleet's shared SQS standard work queue and its DLQ (redrive policy), as the stack has."""
    dlq_url = sqs.create_queue(
        QueueName=f"{STACK_NAME}-work-dlq",
        Attributes={"MessageRetentionPeriod": str(DLQ_RETENTION_S)},
    )["QueueUrl"]
    url = sqs.create_queue(
        QueueName=f"{STACK_NAME}-work",
        Attributes={
            "VisibilityTimeout": str(WORK_QUEUE_VISIBILITY_S),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": _queue_arn(sqs, dlq_url),
                                         "maxReceiveCount": str(WORK_QUEUE_MAX_RECEIVES)}),
        },
    )["QueueUrl"]
    return str(url), str(dlq_url)


def _queue_arn(sqs: Any, url: str) -> str:
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
    return str(attributes["QueueArn"])
