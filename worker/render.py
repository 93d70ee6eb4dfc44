"""How processorctl shows jobs to people and machines (stdlib only)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

from worker.states import JobState

if TYPE_CHECKING:
    from worker.config import Settings
    from worker.job import Job


def describe(out: TextIO, job: Job, settings: Settings) -> None:
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
    if job.state is JobState.RUNNING and job.bytes_total:
        fields.append(("progress", f"{job.bytes_done}/{job.bytes_total} bytes"))
    if job.state is JobState.QUEUED and job.next_attempt_at:
        fields.append(("next attempt", when(job.next_attempt_at)))
    if job.exit_code is not None:
        fields.append(("exit code", str(job.exit_code)))
    if job.error:
        fields.append(("error", printable(job.error, 2000)))
    if job.result_prefix:
        fields.append(("results", f"s3://{settings.s3.output_bucket}/{printable(job.result_prefix, 2000)}"))
    fields.append(("log", str(settings.paths.logs / "jobs" / f"{job.id}.log")))
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        print(f"{name + ':':<{width + 1}} {value}", file=out)
    if job.stderr_tail:
        print("stderr (tail):", file=out)
        for line in job.stderr_tail.splitlines()[-20:]:
            print(f"  | {printable(line, 500)}", file=out)


def printable(text: str, limit: int) -> str:
    """Escape control characters so a hostile key cannot drive the terminal."""
    escaped = "".join(
        ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape", "backslashreplace").decode()
        for ch in text
    )
    return escaped if len(escaped) <= limit else escaped[: limit - 1] + "…"


def when(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def table(out: TextIO, rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), file=out)


def dump_json(out: TextIO, value: object) -> None:
    json.dump(value, out, indent=2, ensure_ascii=False)
    out.write("\n")
