"""The EMF document of a finished job, and that it goes nowhere but its own logger."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from worker.jobs.job import Job
from worker.jobs.states import JobState
from worker.telemetry import metrics


def finished(state: JobState = JobState.SUCCEEDED, bytes_in: int = 0, bytes_out: int = 0,
             cpu_s: float | None = None, peak_memory_bytes: int | None = None) -> Job:
    return Job(id="j-abc", bucket="in", key="reports/q3.csv", version_id=None, etag="e",
               state=state, attempts=2, created_at=1.0, updated_at=2.0,
               bytes_in=bytes_in, bytes_out=bytes_out, cpu_s=cpu_s, peak_memory_bytes=peak_memory_bytes)


def test_document_has_the_required_emf_structure() -> None:
    doc = metrics.document(finished(bytes_in=1234, bytes_out=56), 1.23456, now=1_700_000_000.5)
    aws = doc["_aws"]
    assert aws["Timestamp"] == 1_700_000_000_500 and isinstance(aws["Timestamp"], int)
    (directive,) = aws["CloudWatchMetrics"]
    assert directive["Namespace"] == "processor"
    assert directive["Dimensions"] == [["Outcome"], []]
    # Every dimension key is a top-level string member of the document…
    for dimension_set in directive["Dimensions"]:
        for name in dimension_set:
            assert isinstance(doc[name], str)
    # …and every metric a top-level number, with a CloudWatch unit.
    units = {m["Name"]: m["Unit"] for m in directive["Metrics"]}
    assert units == {"JobDuration": "Seconds", "BytesIn": "Bytes", "BytesOut": "Bytes",
                     "Jobs": "Count", "Attempts": "Count"}
    for name in units:
        assert isinstance(doc[name], (int, float)) and not isinstance(doc[name], bool)
    assert doc["Outcome"] == "succeeded" and doc["JobDuration"] == 1.235
    assert (doc["BytesIn"], doc["BytesOut"], doc["Jobs"], doc["Attempts"]) == (1234, 56, 1, 2)
    assert (doc["job_id"], doc["bucket"], doc["key"]) == ("j-abc", "in", "reports/q3.csv")
    json.dumps(doc, allow_nan=False)  # plain JSON, as CloudWatch parses it


def test_what_the_command_used_is_a_metric_when_it_ran() -> None:
    doc = metrics.document(finished(cpu_s=1.23456, peak_memory_bytes=5 << 20), 2.0, now=1.0)
    (directive,) = doc["_aws"]["CloudWatchMetrics"]
    units = {m["Name"]: m["Unit"] for m in directive["Metrics"]}
    assert units["JobCpuTime"] == "Seconds" and units["JobPeakMemory"] == "Bytes"
    assert (doc["JobCpuTime"], doc["JobPeakMemory"]) == (1.235, 5 << 20)


def test_missing_byte_counts_are_zero() -> None:
    doc = metrics.document(finished(JobState.FAILED), 0.5, now=1.0)
    assert (doc["BytesIn"], doc["BytesOut"], doc["Outcome"]) == (0, 0, "failed")


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def emf_and_root() -> Iterator[tuple[Collect, Collect]]:
    emf, root = logging.getLogger(metrics.LOGGER_NAME), logging.getLogger()
    level = emf.level
    on_emf, on_root = Collect(), Collect()
    emf.addHandler(on_emf)
    root.addHandler(on_root)
    try:
        yield on_emf, on_root
    finally:
        emf.removeHandler(on_emf)
        root.removeHandler(on_root)
        emf.setLevel(level)


def test_job_finished_emits_one_document_on_the_emf_logger_only(
    emf_and_root: tuple[Collect, Collect],
) -> None:
    on_emf, on_root = emf_and_root
    logging.getLogger(metrics.LOGGER_NAME).setLevel(logging.INFO)  # what logs.configure does
    metrics.job_finished(finished(bytes_in=3), 2.0, clock=lambda: 10.0)
    (text,) = on_emf.messages
    doc = json.loads(text)
    assert doc["_aws"]["Timestamp"] == 10_000 and doc["BytesIn"] == 3
    assert not any("_aws" in m for m in on_root.messages)  # never in the file or the journal


def test_job_finished_is_a_no_op_while_cloudwatch_is_off(emf_and_root: tuple[Collect, Collect]) -> None:
    on_emf, _ = emf_and_root
    logging.getLogger(metrics.LOGGER_NAME).setLevel(logging.CRITICAL + 1)  # the default
    metrics.job_finished(finished(), 2.0)
    assert on_emf.messages == []
