"""What a job is doing now, in numbers and in words: pure, stdlib only.

One description for every place that says it — `processorctl show` and
`status`, the daemon's status reply (and so the SSM status document, which
runs `processorctl status`) and systemd's STATUS line — so they use the same
words: started, elapsed, deadline (start + processing.timeout_s), the phase
(downloading / running / uploading / waiting for storage, space or a retry,
with until when), a transfer's percent, rate and ETA, and an ended job's duration.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from worker.jobs.states import TERMINAL, JobState, Phase

if TYPE_CHECKING:
    from worker.jobs.job import Job

#: Phases whose bytes_done/bytes_total measure a transfer.
_TRANSFERS = frozenset({Phase.DOWNLOADING, Phase.UPLOADING})


def activity(job: Job, *, now: float, timeout_s: float) -> dict[str, Any]:
    """JSON-ready facts about ``job`` at ``now``; keys only where they apply.

    ``phase`` and ``phase_since``; running: ``started_at``, ``elapsed_s``,
    ``deadline_at`` and, in a transfer, ``percent``, ``rate_bps``, ``eta_s``;
    waiting: ``until``; ended: ``duration_s``.
    """
    facts: dict[str, Any] = {}
    if job.phase is not Phase.NONE:
        facts["phase"] = job.phase.value
        if job.phase_started_at is not None:
            facts["phase_since"] = job.phase_started_at
    if job.state is JobState.RUNNING and job.started_at is not None:
        facts["started_at"] = job.started_at
        facts["elapsed_s"] = round(max(now - job.started_at, 0.0), 1)
        facts["deadline_at"] = job.started_at + timeout_s
        if job.phase in _TRANSFERS and job.bytes_total > 0:
            facts["percent"] = round(100.0 * min(job.bytes_done, job.bytes_total) / job.bytes_total, 1)
            since = job.phase_started_at
            if since is not None and now > since and job.bytes_done > 0:
                rate = job.bytes_done / (now - since)
                facts["rate_bps"] = round(rate)
                facts["eta_s"] = round(max(job.bytes_total - job.bytes_done, 0) / rate, 1)
    if job.state is JobState.QUEUED and job.next_attempt_at > now and job.phase is not Phase.NONE:
        facts["until"] = job.next_attempt_at
    if job.state in TERMINAL and job.started_at is not None and job.finished_at is not None:
        facts["duration_s"] = round(max(job.finished_at - job.started_at, 0.0), 1)
    return facts


def in_words(job: Job, facts: dict[str, Any], *, now: float) -> str:
    """One line: 'downloading 40% of 286.1 MiB at 40.0 MiB/s, ETA 6s' and the like ('' if idle)."""
    phase = facts.get("phase", "")
    if job.state is JobState.RUNNING:
        parts = [phase or "starting"]
        if "percent" in facts:
            parts[0] += f" {facts['percent']:g}% of {size(job.bytes_total)}"
            if "rate_bps" in facts:
                parts[0] += f" at {size(facts['rate_bps'])}/s, ETA {duration(facts['eta_s'])}"
        elif "phase_since" in facts:
            parts[0] += f" for {duration(now - facts['phase_since'])}"
        if "elapsed_s" in facts:
            deadline = facts["deadline_at"]
            parts.append(f"started {duration(facts['elapsed_s'])} ago, "
                         f"deadline {clock(deadline)} (in {duration(deadline - now)})")
        return "; ".join(parts)
    if "until" in facts:
        return f"{phase} until {clock(facts['until'])} (in {duration(facts['until'] - now)})"
    return ""


def duration(seconds: float) -> str:
    """90 -> '1m30s'; 3700 -> '1h01m'; negative -> '0s' (a deadline already passed says 'in 0s')."""
    total = max(round(seconds), 0)
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    if total < 86400:
        return f"{total // 3600}h{total % 3600 // 60:02d}m"
    return f"{total // 86400}d{total % 86400 // 3600:02d}h"


def size(count: float) -> str:
    """Bytes for people, binary units as `aws s3 cp` prints them: '25.0 MiB'."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def clock(timestamp: float) -> str:
    """A UTC time of day with the date, as `processorctl` prints times."""
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
