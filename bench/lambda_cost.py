"""The Lambda's cold import and per-record cost.

- cold import: seconds to ``import lambda_trigger.handler`` in a fresh
  interpreter, against ``import boto3`` alone (each timed inside its own new
  process, so interpreter start-up is not in either; alternated, median);
- per record: ``handle()`` on an event of RECORDS ObjectCreated records with
  a fake SSM client that answers at once (no SendCommand round trip), with
  the INFO log line per record going to a stream handler as on Lambda;
  against a bare loop that only decodes each key and calls the same fake.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, unquote_plus

from bench.common import ENV, PYTHON, REPO, median

RECORDS = 100

_TIMED_IMPORT = "import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"


class FakeSsm:
    """Answers SendCommand at once, like a client whose round trip costs nothing."""

    def __init__(self) -> None:
        self.calls = 0

    def send_command(self, **kwargs: Any) -> dict[str, Any]:
        self.calls += 1
        return {"Command": {"CommandId": f"cmd-{self.calls:08d}"}}


def _event(records: int) -> dict[str, Any]:
    return {"Records": [
        {"eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
         "eventTime": "2026-01-01T00:00:00.000Z", "eventName": "ObjectCreated:Put",
         "s3": {"s3SchemaVersion": "1.0", "configurationId": "bench",
                "bucket": {"name": "bench-in", "arn": "arn:aws:s3:::bench-in"},
                "object": {"key": quote_plus(f"incoming/file {i:05d}.bin"), "size": 65536,
                           "eTag": f"{i:032x}", "sequencer": f"{i:016X}"}}}
        for i in range(records)
    ]}


def import_times(trials: int = 10) -> tuple[list[float], list[float]]:
    handler: list[float] = []
    boto3: list[float] = []
    for _ in range(trials):
        for module, out in (("lambda_trigger.handler", handler), ("boto3", boto3)):
            done = subprocess.run([PYTHON, "-c", _TIMED_IMPORT.format(module=module)], env=ENV, cwd=REPO,
                                  capture_output=True, text=True, check=True)
            out.append(float(done.stdout))
    return handler, boto3


def per_record(records: int = RECORDS, rounds: int = 30) -> tuple[float, float]:
    """Median seconds per record: handle() vs the bare decode-and-send loop."""
    from lambda_trigger import handler as trigger
    from lambda_trigger.loglines import LOGGER

    sink = logging.StreamHandler(io.StringIO())
    LOGGER.addHandler(sink)
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False
    env = {"DOCUMENT_NAME": "processor-submit", "TARGET_INSTANCE_ID": "i-0123456789abcdef0"}
    event = _event(records)
    client = FakeSsm()
    try:
        handler_s, bare_s = [], []
        for _ in range(rounds):
            started = time.perf_counter()
            summary = trigger.handle(json.loads(json.dumps(event)), env, lambda: client)
            handler_s.append((time.perf_counter() - started) / records)
            assert summary["sent"] == records, summary
            started = time.perf_counter()
            for record in json.loads(json.dumps(event))["Records"]:
                obj = record["s3"]["object"]
                client.send_command(DocumentName="processor-submit", InstanceIds=["i-0123456789abcdef0"],
                                    Parameters={"Bucket": [record["s3"]["bucket"]["name"]],
                                                "Key": [unquote_plus(obj["key"])], "ETag": [obj["eTag"]]})
            bare_s.append((time.perf_counter() - started) / records)
    finally:
        LOGGER.removeHandler(sink)
    return median(handler_s), median(bare_s)


@dataclass(frozen=True)
class LambdaCost:
    import_handler_s: float
    import_boto3_s: float
    record_s: float
    bare_record_s: float


def measure(trials: int = 10) -> LambdaCost:
    handler, boto3 = import_times(trials)
    record_s, bare_s = per_record()
    return LambdaCost(median(handler), median(boto3), record_s, bare_s)
