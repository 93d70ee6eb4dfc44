"""The fleet's job records on DynamoDB: the only module in worker/ that imports boto3 for DynamoDB.

One on-demand table (``[queue] table``), partition key ``job_id``; every write
is conditional on the revision read (``rev``), so two instances never both
win a claim. Two global secondary indexes answer the fleet-wide questions with
a Query, never a Scan: ``by-state`` (``state``, ``updated_at``) for ``list
--fleet`` and the running jobs of ``processorctl fleet``, ``by-object``
(``object`` = ``bucket/key``, ``created_at``) for ``show s3://bucket/key``.
Finished records carry ``expires_at`` (the table's TTL attribute).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from decimal import Decimal
from typing import Any

import boto3
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.config import Config

from worker.aws.errors import failure, translated
from worker.aws.retry import DYNAMODB_CLIENT
from worker.config.settings import Settings, queue_region
from worker.fleet.record import (
    FINAL_STATES,
    RECORD_RETENTION_S,
    FleetJob,
    FleetState,
    RecordConflict,
    RecordError,
)

#: The table's indexes (deploy/cloudformation/processor.yaml and worker/local/emulator.py create them).
STATE_INDEX = "by-state"
OBJECT_INDEX = "by-object"

_RETRYABLE_CODES = frozenset({
    "ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded",
    "InternalServerError", "ServiceUnavailable", "LimitExceededException", "500", "502", "503", "504",
})

_FLOATS = ("lease_until", "created_at", "updated_at", "started_at", "finished_at", "waiting_until",
           "duration_s")
_INTS = ("rev", "attempts", "counted_attempts")
_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def _record_error(what: str, exc: Exception) -> RecordError | RecordConflict:
    found = failure(exc)
    if found.code == "ConditionalCheckFailedException":
        return RecordConflict(f"{what}: the record changed meanwhile")
    return RecordError(f"{what}: {found.text}", retryable=found.retryable(_RETRYABLE_CODES),
                       code=found.code)


def _translated(what: str) -> AbstractContextManager[None]:
    """botocore's errors in the block leave it as RecordError (RecordConflict: a lost condition)."""
    return translated(what, _record_error)


def to_item(record: FleetJob) -> dict[str, Any]:
    """The DynamoDB item (attribute values) of a record; empty and None values are left out."""
    plain: dict[str, Any] = {
        "job_id": record.job_id, "bucket": record.bucket, "key": record.key,
        "object": f"{record.bucket}/{record.key}", "state": record.state.value,
        "version_id": record.version_id, "etag": record.etag, "holder": record.holder,
        "token": record.token, "message_id": record.message_id, "error": record.error,
        "result": record.result,
    }
    for name in _INTS:
        plain[name] = Decimal(int(getattr(record, name)))
    for name in _FLOATS:
        value = getattr(record, name)
        if value is not None:
            plain[name] = Decimal(str(round(float(value), 3)))
    if record.state in FINAL_STATES and record.finished_at is not None:
        plain["expires_at"] = Decimal(int(record.finished_at + RECORD_RETENTION_S))
    return {k: _serializer.serialize(v) for k, v in plain.items() if v not in (None, "")}


def from_item(item: dict[str, Any]) -> FleetJob:
    plain = {k: _deserializer.deserialize(v) for k, v in item.items()}

    def number(name: str) -> float | None:
        value = plain.get(name)
        return float(value) if value is not None else None

    return FleetJob(
        job_id=str(plain["job_id"]), bucket=str(plain["bucket"]), key=str(plain["key"]),
        version_id=plain.get("version_id"), etag=plain.get("etag"),
        state=FleetState(plain["state"]), rev=int(plain.get("rev", 0)),
        holder=str(plain.get("holder", "")), token=str(plain.get("token", "")),
        message_id=str(plain.get("message_id", "")), lease_until=number("lease_until") or 0.0,
        attempts=int(plain.get("attempts", 0)), counted_attempts=int(plain.get("counted_attempts", 0)),
        created_at=number("created_at") or 0.0, updated_at=number("updated_at") or 0.0,
        started_at=number("started_at"), finished_at=number("finished_at"),
        waiting_until=number("waiting_until"), error=plain.get("error"), result=plain.get("result"),
        duration_s=number("duration_s"),
    )


class DynamoRecords:
    """``worker.fleet.record.JobRecords`` on one DynamoDB table."""

    def __init__(self, client: Any, table: str) -> None:
        self._client = client
        self.table = table

    @classmethod
    def from_settings(cls, settings: Settings) -> DynamoRecords:
        q = settings.queue
        config = Config(region_name=queue_region(settings), **DYNAMODB_CLIENT.config())
        client = boto3.session.Session().client(
            "dynamodb", endpoint_url=q.table_endpoint_url or q.endpoint_url or None, config=config)
        return cls(client, q.table)

    def get(self, job_id: str) -> FleetJob | None:
        with _translated(f"read the fleet record of {job_id} from {self.table}"):
            item = self._client.get_item(TableName=self.table, Key={"job_id": {"S": job_id}},
                                         ConsistentRead=True).get("Item")
        return from_item(item) if item else None

    def put(self, record: FleetJob, *, expected_rev: int | None) -> FleetJob:
        from dataclasses import replace

        written = replace(record, rev=(expected_rev or 0) + 1)
        if expected_rev is None:
            condition: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(job_id)"}
        else:
            condition = {"ConditionExpression": "rev = :rev",
                         "ExpressionAttributeValues": {":rev": {"N": str(expected_rev)}}}
        with _translated(f"write the fleet record of {record.job_id} to {self.table}"):
            self._client.put_item(TableName=self.table, Item=to_item(written), **condition)
        return written

    def renew(self, job_id: str, token: str, lease_until: float, now: float) -> bool:
        try:
            with _translated(f"renew the claim on {job_id} in {self.table}"):
                self._client.update_item(
                    TableName=self.table, Key={"job_id": {"S": job_id}},
                    UpdateExpression="SET lease_until = :lease, updated_at = :now",
                    ConditionExpression="#t = :token AND #s = :running",
                    ExpressionAttributeNames={"#t": "token", "#s": "state"},
                    ExpressionAttributeValues={
                        ":lease": {"N": str(round(lease_until, 3))}, ":now": {"N": str(round(now, 3))},
                        ":token": {"S": token}, ":running": {"S": FleetState.RUNNING.value}},
                )
        except RecordConflict:
            return False
        return True

    def newest_for_object(self, bucket: str, key: str, limit: int = 1) -> list[FleetJob]:
        with _translated(f"look up s3://{bucket}/{key} in {self.table}"):
            pages = self._client.get_paginator("query").paginate(
                TableName=self.table, IndexName=OBJECT_INDEX,
                KeyConditionExpression="#o = :o", ExpressionAttributeNames={"#o": "object"},
                ExpressionAttributeValues={":o": {"S": f"{bucket}/{key}"}}, ScanIndexForward=False,
            )
            return self._collect(pages, limit)

    def in_state(self, state: FleetState, *, since: float | None = None, until: float | None = None,
                 limit: int | None = None) -> list[FleetJob]:
        condition = "#s = :s"
        values: dict[str, Any] = {":s": {"S": state.value}}
        if since is not None and until is not None:
            condition += " AND updated_at BETWEEN :a AND :b"
            values.update({":a": {"N": str(since)}, ":b": {"N": str(until)}})
        elif since is not None:
            condition += " AND updated_at >= :a"
            values[":a"] = {"N": str(since)}
        elif until is not None:
            condition += " AND updated_at <= :b"
            values[":b"] = {"N": str(until)}
        with _translated(f"list {state.value} jobs in {self.table}"):
            pages = self._client.get_paginator("query").paginate(
                TableName=self.table, IndexName=STATE_INDEX, KeyConditionExpression=condition,
                ExpressionAttributeNames={"#s": "state"}, ExpressionAttributeValues=values,
                ScanIndexForward=False,
            )
            return self._collect(pages, limit)

    @staticmethod
    def _collect(pages: Any, limit: int | None) -> list[FleetJob]:
        found: list[FleetJob] = []
        for page in pages:
            for item in page.get("Items", []):
                found.append(from_item(item))
                if limit is not None and len(found) >= limit:
                    return found
        return found

    def close(self) -> None:
        self._client.close()


def table_definition(name: str) -> dict[str, Any]:
    """CreateTable arguments of the fleet's table (the local stack and tests; the stack has its own)."""
    projection = {"ProjectionType": "ALL"}
    return {
        "TableName": name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [
            {"AttributeName": "job_id", "AttributeType": "S"},
            {"AttributeName": "state", "AttributeType": "S"},
            {"AttributeName": "updated_at", "AttributeType": "N"},
            {"AttributeName": "object", "AttributeType": "S"},
            {"AttributeName": "created_at", "AttributeType": "N"},
        ],
        "KeySchema": [{"AttributeName": "job_id", "KeyType": "HASH"}],
        "GlobalSecondaryIndexes": [
            {"IndexName": STATE_INDEX, "Projection": projection, "KeySchema": [
                {"AttributeName": "state", "KeyType": "HASH"},
                {"AttributeName": "updated_at", "KeyType": "RANGE"}]},
            {"IndexName": OBJECT_INDEX, "Projection": projection, "KeySchema": [
                {"AttributeName": "object", "KeyType": "HASH"},
                {"AttributeName": "created_at", "KeyType": "RANGE"}]},
        ],
    }
