"""How processorctl shows jobs to people and machines (stdlib only)."""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO

import processor_shared.layout as layout
from worker.jobs.states import JobState

if TYPE_CHECKING:
    from worker.config.settings import Settings
    from worker.jobs.job import Job


# Long on purpose: `show`'s screen, one block per section, in the order it prints.
def describe(
    out: TextIO, job: Job, settings: Settings, *, facts: Mapping[str, Any] | None = None,
    now: float | None = None, outputs: list[dict[str, Any]] | str | None = None,
) -> None:
    """One job for people; ``facts`` from worker.jobs.activity (what it is doing now), ``outputs``
    a success's (or why they were not read)."""
    from worker.jobs.activity import clock, duration, in_words, size

    now = time.time() if now is None else now
    facts = facts or {}
    fields: list[tuple[str, str]] = [
        ("job", job.id),
        ("state", job.state.value + (f" ({job.phase.value})" if job.phase.value else "")),
        ("source", f"s3://{job.bucket}/{printable(job.key, 2000)}"),
        ("version id", job.version_id or "-"),
        ("etag", job.etag or "-"),
        ("attempts", str(job.attempts)),
        ("submitted", when(job.created_at)),
        ("updated", when(job.updated_at)),
    ]
    if job.started_at is not None:
        fields.append(("started", f"{when(job.started_at)} ({duration(now - job.started_at)} ago)"))
    if "elapsed_s" in facts:
        fields.append(("elapsed", duration(facts["elapsed_s"])))
        left = facts["deadline_at"] - now
        fields.append(("deadline", f"{clock(facts['deadline_at'])} "
                       + (f"(in {duration(left)}; processing.timeout_s {settings.processing.timeout_s:g})"
                          if left >= 0 else "(passed)")))
    if job.state is JobState.RUNNING:
        fields.append(("phase", in_words(job, dict(facts), now=now).split("; ")[0]))
        if "percent" in facts:
            rate = (f", {size(facts['rate_bps'])}/s, ETA {duration(facts['eta_s'])}"
                    if "rate_bps" in facts else "")
            fields.append(("progress", f"{facts['percent']:g}% ({size(job.bytes_done)} of "
                           f"{size(job.bytes_total)}){rate}"))
    if "until" in facts:
        fields.append(("phase", in_words(job, dict(facts), now=now)))
    if job.state is JobState.QUEUED and job.next_attempt_at and "until" not in facts:
        fields.append(("next attempt", when(job.next_attempt_at)))
    if "duration_s" in facts:
        fields.append(("duration", duration(facts["duration_s"])))
        if job.finished_at is not None:
            fields.append(("finished", when(job.finished_at)))
    if job.exit_code is not None:
        fields.append(("exit code", str(job.exit_code)))
    if job.error:
        fields.append(("error", printable(job.error, 2000)))
    where = result_location(job, settings)
    notes = [note for flag, note in ((where["fallback"], "fallback: the key is too long for "
                                      "<output prefix><key>/"), (not where["final"], "expected"))
             if flag]
    fields.append(("results", f"s3://{where['bucket']}/{printable(where['prefix'], 2000)}"
                   + (f"  ({'; '.join(notes)})" if notes else "")))
    fields.append(("log", str(settings.paths.job_log(job.id))))
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        print(f"{name + ':':<{width + 1}} {value}", file=out)
    if isinstance(outputs, str):
        print(f"outputs: {outputs}", file=out)
    elif outputs is not None:
        print(f"outputs ({len(outputs)}):", file=out)
        for item in outputs:
            print(f"  s3://{settings.s3.output_bucket}/{printable(str(item['key']), 2000)}"
                  f"  ({size(int(item['size'] or 0))})", file=out)
    if job.stderr_tail:
        print("stderr (tail):", file=out)
        for line in job.stderr_tail.splitlines()[-20:]:
            print(f"  | {printable(line, 500)}", file=out)


def result_location(job: Job, settings: Settings) -> dict[str, Any]:
    """Where the job's outcome is (``final``: the ledger recorded it) or is expected to land.

    ``fallback`` marks the ``_by-id/<job id>/`` location of keys too long for
    their results (processor_shared.layout). Until the job ends the expectation is the
    key-only rule; a success whose outputs do not fit still moves to the fallback.
    """
    output_prefix = settings.s3.output_prefix
    prefix = job.result_prefix or layout.result_prefix(output_prefix, job.key, job.id)
    return {"bucket": settings.s3.output_bucket, "prefix": prefix,
            "fallback": layout.is_fallback(output_prefix, prefix), "final": bool(job.result_prefix)}


def printable(text: str, limit: int) -> str:
    """Escape control characters so a hostile key cannot drive the terminal."""
    escaped = "".join(
        ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape", "backslashreplace").decode()
        for ch in text
    )
    return escaped if len(escaped) <= limit else escaped[: limit - 1] + "…"


def first_line(text: str | None, limit: int) -> str:
    """The first non-empty line of ``text``, escaped and cut to ``limit`` ('' for none)."""
    for line in (text or "").splitlines():
        if line.strip():
            return printable(line.strip(), limit)
    return ""


def when(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def table(out: TextIO, rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), file=out)


def dump_json(out: TextIO, value: object) -> None:
    json.dump(value, out, indent=2, ensure_ascii=False)
    out.write("\n")


def fail(out: TextIO, as_json: bool, code: int, message: str, kind: str) -> int:
    """Say why on stderr; under --json also as ``{"error": …}`` on stdout (a script reads
    one stream and one shape); return ``code``, the exit status."""
    print(message, file=sys.stderr)
    if as_json:
        dump_json(out, {"error": {"kind": kind, "message": message, "exit_code": code}})
    return code
