"""What the real-fleet benchmarks share: a work queue on the emulator, fleet daemons, their logs.

A fleet daemon is the real ``processor run`` with a ``[queue]`` section (the
same keys tests/integration/test_queue_fleet.py uses): the emulator's SQS
queue (its DLQ by redrive policy, at the stack's default of 5 receives) and
the fleet's DynamoDB job table, created with
``worker.fleet.dynamo.table_definition`` like the local stack does.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import INPUT_BUCKET, Daemon, write_config

#: The stack's default redrive (QueueMaxReceiveCount).
MAX_RECEIVE_COUNT = 5


@dataclass(frozen=True)
class WorkQueue:
    url: str
    dlq_url: str
    table: str


def sqs_client(endpoint: str) -> Any:
    import boto3

    return boto3.session.Session().client("sqs", endpoint_url=endpoint, region_name="us-east-1")


def create_work_queue(endpoint: str, name: str, *, visibility_s: int) -> WorkQueue:
    """A work queue ``name``, its DLQ and a fleet job table of the same name, all fresh."""
    import boto3

    from worker.fleet.dynamo import table_definition

    sqs = sqs_client(endpoint)
    dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    url = sqs.create_queue(QueueName=name, Attributes={
        "VisibilityTimeout": str(visibility_s),
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": str(MAX_RECEIVE_COUNT)}),
    })["QueueUrl"]
    dynamodb = boto3.session.Session().client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
    dynamodb.create_table(**table_definition(name))
    return WorkQueue(url, dlq, name)


def fleet_config(directory: Path, endpoint: str, command: Sequence[str], queue: WorkQueue, *,
                 holder: str, concurrency: int, output_prefix: str, visibility_s: int,
                 wait_s: int) -> Path:
    """A daemon config (``bench.common.write_config``) with the fleet's ``[queue]`` section."""
    config = write_config(directory, endpoint, command, concurrency=concurrency, output_prefix=output_prefix)
    settings = {"url": queue.url, "endpoint_url": endpoint, "visibility_s": visibility_s, "wait_s": wait_s,
                "table": queue.table, "holder": holder}
    with config.open("a") as fh:
        fh.write("[queue]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))
    return config


def send_jobs(sqs: Any, url: str, objects: Sequence[tuple[str, str]]) -> None:
    """One message per (key, etag), in order, as the Lambda words them; batches of 10."""
    for start in range(0, len(objects), 10):
        entries = [{"Id": str(i), "MessageBody": json.dumps(
            {"bucket": INPUT_BUCKET, "key": key, "version_id": None, "etag": etag})}
            for i, (key, etag) in enumerate(objects[start:start + 10])]
        failed = sqs.send_message_batch(QueueUrl=url, Entries=entries).get("Failed")
        if failed:
            raise RuntimeError(f"send_message_batch: {failed}")


def queue_counts(sqs: Any, url: str) -> tuple[int, int]:
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])


def log_events(config: Path, name: str) -> list[dict[str, Any]]:
    """The daemon's JSON log events called ``name``, each with its ``ts`` as epoch seconds (``at``)."""
    path = config.parent / "state" / "logs" / "processor.jsonl"
    found = []
    for line in path.read_text().splitlines() if path.exists() else []:
        event = json.loads(line)
        if event.get("event") == name:
            event["at"] = dt.datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()
            found.append(event)
    return found


@contextmanager
def daemons(configs: Sequence[Path]) -> Iterator[list[Daemon]]:
    """``processor run`` for every config; all are stopped at the end, together (SIGTERM, then wait)."""
    started: list[Daemon] = []
    try:
        for config in configs:
            started.append(Daemon(config))
        yield started
    finally:
        for daemon in started:
            if daemon.proc.poll() is None:
                daemon.proc.send_signal(signal.SIGTERM)
        for daemon in started:
            daemon.stop()
