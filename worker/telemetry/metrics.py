"""Job metrics as CloudWatch Embedded Metric Format (EMF): one document per finished job.

CloudWatch Logs turns each document into metric data points when it arrives
on a stream with the ``x-amzn-logs-format: json/emf`` header, so the metrics
need no PutMetricData call and no extra IAM beyond writing logs. Shape::

    {"_aws": {"Timestamp": <ms>, "CloudWatchMetrics": [{
        "Namespace": "processor",
        "Dimensions": [["Outcome"], []],
        "Metrics": [{"Name": "JobDuration", "Unit": "Seconds"}, ...]}]},
     "Outcome": "succeeded", "JobDuration": 1.5, "BytesIn": 10, "BytesOut": 7,
     "Jobs": 1, "Attempts": 1, "JobCpuTime": 0.2, "JobPeakMemory": 10485760,
     "job_id": "j-…", "bucket": "…", "key": "…"}

The empty dimension set gives fleet-wide totals beside the per-outcome ones;
``job_id``/``key``/``bucket`` are properties (searchable in Logs Insights, not
dimensions, which would make one metric per job).

Documents go through the stdlib logger ``LOGGER_NAME``, which propagates
nowhere: ``worker.telemetry.logsetup`` gives it only the CloudWatch metrics stream, so no
EMF JSON lands in the file or the journal. Not through structlog, because the
document must be the whole log event, not a field of one. When CloudWatch is
off the logger is disabled and no document is even built.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from worker.jobs.job import Job

#: CloudWatch metric namespace.
NAMESPACE = "processor"

#: The stdlib logger carrying EMF documents (wired up by worker.telemetry.logsetup).
LOGGER_NAME = "processor.emf"

#: Every metric of the document, with its CloudWatch unit.
METRICS: tuple[tuple[str, str], ...] = (
    ("JobDuration", "Seconds"),
    ("BytesIn", "Bytes"),
    ("BytesOut", "Bytes"),
    ("Jobs", "Count"),
    ("Attempts", "Count"),
    ("JobCpuTime", "Seconds"),
    ("JobPeakMemory", "Bytes"),
)

#: Metrics only a job whose command ran has.
_RAN_ONLY = frozenset({"JobCpuTime", "JobPeakMemory"})

#: Dimension sets: per final state, and one without dimensions for totals.
DIMENSIONS: tuple[tuple[str, ...], ...] = (("Outcome",), ())

_log = logging.getLogger(LOGGER_NAME)
_log.propagate = False  # EMF documents belong on the metrics stream only
_log.setLevel(logging.CRITICAL + 1)  # off until worker.telemetry.logsetup attaches the CloudWatch sink


def document(job: Job, duration_s: float, *, now: float) -> dict[str, Any]:
    """The EMF document of one finished job (``now`` in epoch seconds).

    ``JobCpuTime``/``JobPeakMemory`` (the command's, worker.runner.process) are left out,
    values and declarations, for a job whose command never ran.
    """
    used = {} if job.cpu_s is None else {
        "JobCpuTime": round(job.cpu_s, 3), "JobPeakMemory": job.peak_memory_bytes or 0}
    return {
        "_aws": {
            "Timestamp": int(now * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": NAMESPACE,
                    "Dimensions": [list(names) for names in DIMENSIONS],
                    "Metrics": [{"Name": name, "Unit": unit} for name, unit in METRICS
                                if name not in _RAN_ONLY or used],
                }
            ],
        },
        "Outcome": job.state.value,
        "JobDuration": round(duration_s, 3),
        "BytesIn": job.bytes_in,
        "BytesOut": job.bytes_out,
        "Jobs": 1,
        "Attempts": job.attempts,
        **used,
        "job_id": job.id,
        "bucket": job.bucket,
        "key": job.key,
    }


def job_finished(job: Job, duration_s: float, *, clock: Callable[[], float] = time.time) -> None:
    """Emit the job's EMF document (a no-op unless the CloudWatch sink is on)."""
    if not _log.isEnabledFor(logging.INFO):
        return
    try:
        text = json.dumps(document(job, duration_s, now=clock()), ensure_ascii=False,
                          separators=(",", ":"))
    except (TypeError, ValueError):  # pragma: no cover - the fields are plain data
        return
    _log.info(text)


def receiving_paused(paused: bool, what: str, *, clock: Callable[[], float] = time.time) -> None:
    """Emit ``ReceivingPaused``: 1 when a fleet daemon stops receiving because ``what``
    is down, 0 when it resumes."""
    if not _log.isEnabledFor(logging.INFO):
        return
    doc = {
        "_aws": {"Timestamp": int(clock() * 1000), "CloudWatchMetrics": [{
            "Namespace": NAMESPACE, "Dimensions": [[]],
            "Metrics": [{"Name": "ReceivingPaused", "Unit": "Count"}]}]},
        "ReceivingPaused": 1 if paused else 0,
        "dependency": what,
    }
    _log.info(json.dumps(doc, separators=(",", ":")))
