"""The fleet's job records on DynamoDB (worker.fleet.dynamo) over HTTP against the emulator:
conditional claims, renewals, the two indexes, TTL, and `processorctl fleet`'s bounded output."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import processorctl, write_config
from worker.fleet.dynamo import DynamoRecords, table_definition
from worker.fleet.record import FleetJob, FleetState, RecordConflict, RecordError

TABLE = "records-test"


@pytest.fixture
def records(aws: Callable[[str], Any]) -> DynamoRecords:
    client = aws("dynamodb")
    client.create_table(**table_definition(TABLE))
    return DynamoRecords(client, TABLE)


def _job(n: int, state: FleetState = FleetState.RUNNING, **fields: Any) -> FleetJob:
    return FleetJob(f"j-{n:020d}", "in", f"k/{n} ünïcode $(x)", None, f"e{n}", state, **fields)


def test_a_claim_is_a_conditional_write_only_one_instance_wins(records: DynamoRecords) -> None:
    first = records.put(_job(1, holder="i-a", token="t-a", created_at=1.0, updated_at=1.0),
                        expected_rev=None)
    assert first.rev == 1 and records.get(first.job_id) == first
    with pytest.raises(RecordConflict):  # a second "new" record for the same job
        records.put(_job(1, holder="i-b", token="t-b"), expected_rev=None)
    second = records.put(replace(first, holder="i-b", token="t-b"), expected_rev=1)
    with pytest.raises(RecordConflict):  # the loser read rev 1 too
        records.put(replace(first, holder="i-c", token="t-c"), expected_rev=1)
    assert records.get(first.job_id).holder == "i-b" and second.rev == 2  # type: ignore[union-attr]
    assert records.get("j-missing") is None


def test_only_the_holder_renews_its_lease(records: DynamoRecords) -> None:
    job = records.put(_job(2, holder="i-a", token="t-a", lease_until=10.0), expected_rev=None)
    assert records.renew(job.job_id, "t-a", 99.5, 50.0)
    renewed = records.get(job.job_id)
    assert renewed is not None and renewed.lease_until == 99.5 and renewed.rev == job.rev
    assert not records.renew(job.job_id, "t-other", 200.0, 60.0)
    records.put(replace(renewed, state=FleetState.SUCCEEDED, token="", finished_at=70.0),
                expected_rev=renewed.rev)
    assert not records.renew(job.job_id, "t-a", 300.0, 80.0)  # ended: nothing to renew


def test_the_indexes_answer_by_state_and_by_object_newest_first(
    records: DynamoRecords, aws: Callable[[str], Any],
) -> None:
    for n, (state, at) in enumerate([(FleetState.FAILED, 100.0), (FleetState.FAILED, 300.0),
                                     (FleetState.SUCCEEDED, 200.0), (FleetState.WAITING, 250.0)]):
        records.put(_job(n, state, created_at=at, updated_at=at, finished_at=at), expected_rev=None)
    assert [r.updated_at for r in records.in_state(FleetState.FAILED)] == [300.0, 100.0]
    assert [r.updated_at for r in records.in_state(FleetState.FAILED, since=150.0)] == [300.0]
    assert [r.updated_at for r in records.in_state(FleetState.FAILED, until=150.0)] == [100.0]
    assert len(records.in_state(FleetState.FAILED, limit=1)) == 1
    # Two versions of one object.
    older = records.put(FleetJob("j-v1", "in", "same.csv", "v1", None, FleetState.SUCCEEDED,
                                 created_at=10.0, finished_at=15.0), expected_rev=None)
    newer = records.put(FleetJob("j-v2", "in", "same.csv", "v2", None, FleetState.RUNNING,
                                 created_at=20.0), expected_rev=None)
    assert records.newest_for_object("in", "same.csv") == [newer]
    assert records.newest_for_object("in", "same.csv", limit=None) == [newer, older]
    # Finished records carry the TTL attribute; running ones do not.
    client = aws("dynamodb")
    item = client.get_item(TableName=TABLE, Key={"job_id": {"S": older.job_id}})["Item"]
    assert "expires_at" in item
    assert "expires_at" not in client.get_item(TableName=TABLE, Key={"job_id": {"S": newer.job_id}})["Item"]


def test_an_unreachable_table_is_a_retryable_record_error() -> None:
    import socket

    import boto3
    from botocore.config import Config

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    client = boto3.session.Session(region_name="us-east-1").client(
        "dynamodb", endpoint_url=dead, aws_access_key_id="x", aws_secret_access_key="x",
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=1))
    with pytest.raises(RecordError) as info:
        DynamoRecords(client, TABLE).get("j-1")
    assert info.value.retryable and "transport error" in str(info.value)


def test_the_fleet_summary_stays_short_for_the_ssm_console(
    records: DynamoRecords, aws: Callable[[str], Any], moto_endpoint: str, short_tmp: Path,
) -> None:
    now = time.time()
    for n in range(40):  # 10 instances x 4 slots, all busy
        records.put(_job(n, holder=f"i-{n % 10:017d}", token="t", lease_until=now + 300,
                         started_at=now - n, updated_at=now - n, attempts=1), expected_rev=None)
    queue = aws("sqs").create_queue(QueueName="summary-work")["QueueUrl"]
    config = write_config(short_tmp, output_bucket="out", endpoint=moto_endpoint)
    with config.open("a") as fh:
        fh.write("[queue]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in {
            "url": queue, "endpoint_url": moto_endpoint, "table": TABLE}.items()))
    done = processorctl(config, "fleet")
    assert done.returncode == 0, done.stderr
    assert "40 running on 10 instance(s)" in done.stdout and "34 more running job(s)" in done.stdout
    # First in the status document's output, and short: the console keeps 2,500 characters.
    assert len(done.stdout) <= 1200, len(done.stdout)
    as_json = json.loads(processorctl(config, "fleet", "--json").stdout)
    assert sum(len(v) for v in as_json["running"].values()) == 40
    assert as_json["queue"]["oldest_age_s"] is None and "oldest message: unknown" in done.stdout
    # SQS publishes the age of the oldest message to CloudWatch; the emulator takes it as given.
    aws("cloudwatch").put_metric_data(Namespace="AWS/SQS", MetricData=[{
        "MetricName": "ApproximateAgeOfOldestMessage", "Value": 754.0, "Unit": "Seconds",
        "Dimensions": [{"Name": "QueueName", "Value": "summary-work"}]}])
    assert json.loads(processorctl(config, "fleet", "--json").stdout)["queue"]["oldest_age_s"] == 754.0
    assert "oldest message: 754s" in processorctl(config, "fleet").stdout
