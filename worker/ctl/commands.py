"""`processorctl`'s commands other than ``submit``: list, show, status, cancel, retry, logs, reconcile.

Apart from worker.ctl.cli because operators run these now and then, while
``submit`` runs once per S3 object and imports only what it needs; worker.ctl.cli
imports this module when one of these commands is asked for.
"""

from __future__ import annotations

import argparse
import codecs
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from worker import exitcodes
from worker.config import Settings
from worker.ctl.control_client import request, wake
from worker.ctl.render import describe, dump_json, printable, result_location, table, when
from worker.errors import ControlError, InvalidTransition
from worker.job import Job
from worker.joblog import was_cut
from worker.ledger import Ledger
from worker.states import JobState

Command = Callable[[argparse.Namespace, Settings, Ledger, TextIO], int]


def _list(args: argparse.Namespace, settings: Settings, ledger: Ledger, out: TextIO) -> int:
    state = JobState(args.state) if args.state else None
    jobs = ledger.list_jobs(state, limit=args.limit)
    if args.json:
        dump_json(out, [job.to_dict() for job in jobs])
        return exitcodes.OK
    rows = [("JOB", "STATE", "ATTEMPTS", "UPDATED", "KEY")]
    rows += [
        (j.id, j.state.value, str(j.attempts), when(j.updated_at), printable(j.key, 80))
        for j in jobs
    ]
    table(out, rows)
    return exitcodes.OK


def _show(args: argparse.Namespace, settings: Settings, ledger: Ledger, out: TextIO) -> int:
    job = ledger.get(args.job_id)
    history = ledger.history(job.id)
    if args.json:
        dump_json(out, {**job.to_dict(), "results": result_location(job, settings),
                        "transitions": history})
        return exitcodes.OK
    describe(out, job, settings)
    print("transitions:", file=out)
    for t in history:
        reason = f"  ({printable(t['reason'], 200)})" if t["reason"] else ""
        print(f"  {when(t['at'])}  {t['from_state'] or '-'} -> {t['to_state']}"
              f"  attempt {t['attempt']}{reason}", file=out)
    return exitcodes.OK


def _status(args: argparse.Namespace, settings: Settings, ledger: Ledger, out: TextIO) -> int:
    try:
        live: dict[str, Any] | None = request(settings.paths.socket, "status", timeout=2.0)
    except ControlError:
        live = None
    counts = ledger.counts()
    if args.json:
        dump_json(out, {"daemon": live, "counts": counts})
        return exitcodes.OK
    if live is None:
        print(f"daemon: not reachable on {settings.paths.socket}", file=out)
    else:
        mode = "draining" if live["draining"] else "running"
        print(f"daemon: {mode}, pid {live['pid']}, version {live['version']}, "
              f"{live['busy']}/{live['slots']} slots busy", file=out)
        if live.get("oldest_queued_age_s") is not None:
            print(f"oldest queued job: {live['oldest_queued_age_s']}s old", file=out)
    if settings.queue.url:
        print(f"work queue: {printable(settings.queue.url, 500)}", end="", file=out)
        held = (live or {}).get("queue") or {}
        if held:
            state = "receiving" if held.get("receiving") else "not receiving (draining)"
            print(f", {held.get('held', 0)} message(s) held, {state}", end="", file=out)
        print(file=out)
    print("jobs: " + ", ".join(f"{n} {state}" for state, n in counts.items()), file=out)
    return exitcodes.OK


def _cancel(args: argparse.Namespace, settings: Settings, ledger: Ledger, out: TextIO) -> int:
    job = ledger.get(args.job_id)
    if job.state is JobState.QUEUED:
        try:
            job = ledger.transition(job.id, JobState.CANCELLED, expect=JobState.QUEUED,
                                    reason="cancelled by an operator", finished_at=time.time())
        except InvalidTransition:
            job = ledger.get(job.id)  # the daemon claimed it meanwhile: cancel it there
    if job.state is JobState.RUNNING:
        try:
            job = _cancel_running(settings, ledger, job)
        except ControlError as exc:
            print(f"processorctl: {job.id} is running but the daemon is not reachable ({exc}); "
                  "a stopped daemon requeues it at start: cancel it then", file=sys.stderr)
            return exitcodes.DAEMON_UNAVAILABLE
    if job.state is not JobState.CANCELLED:
        print(f"processorctl: {job.id} is {job.state.value}; only queued or running jobs "
              "can be cancelled", file=sys.stderr)
        return exitcodes.FAILURE
    _report(out, args.json, job)
    return exitcodes.OK


def _cancel_running(settings: Settings, ledger: Ledger, job: Job) -> Job:
    """Ask the daemon to stop the job, then wait (TERM, grace, KILL) until it has."""
    deadline = time.monotonic() + settings.processing.kill_grace_s + 30
    asked = False
    while job.state is JobState.RUNNING and time.monotonic() < deadline:
        if not asked:
            # False while the daemon is between claiming the job and starting it.
            asked = bool(request(settings.paths.socket, "cancel", job_id=job.id)["running"])
        time.sleep(0.1)
        job = ledger.get(job.id)
    return job


def _retry(args: argparse.Namespace, settings: Settings, ledger: Ledger, out: TextIO) -> int:
    try:
        job = ledger.retry(args.job_id)
    except InvalidTransition as exc:
        print(f"processorctl: {args.job_id} is {exc.current}; only failed or cancelled jobs "
              "can be retried", file=sys.stderr)
        return exitcodes.FAILURE
    wake(settings.paths.socket)
    _report(out, args.json, job)
    return exitcodes.OK


def _logs(args: argparse.Namespace, settings: Settings, ledger: Ledger, out: TextIO) -> int:
    job = ledger.get(args.job_id)
    path = settings.paths.job_log(job.id)
    offset = 0
    while True:
        offset = _copy_from(path, offset, out)
        if not args.follow or job.state not in (JobState.QUEUED, JobState.RUNNING):
            break
        time.sleep(0.25)
        job = ledger.get(job.id)
    _copy_from(path, offset, out)
    if offset == 0 and not path.exists():
        print(f"processorctl: no output recorded yet for {job.id} ({path})", file=sys.stderr)
    elif was_cut(path):
        print(f"processorctl: this log was cut at logging.job_log_max_mb "
              f"({settings.logging.job_log_max_mb} MiB): the middle is left out, "
              "where the line '[processor: log cut: ...]' stands", file=sys.stderr)
    return exitcodes.OK


def _copy_from(path: Path, offset: int, out: TextIO) -> int:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            # In blocks (a log can be job_log_max_mb large), decoded across their edges.
            decoder = codecs.getincrementaldecoder("utf-8")("replace")
            while data := fh.read(1024 * 1024):
                out.write(decoder.decode(data))
                offset += len(data)
            out.write(decoder.decode(b"", final=True))
    except FileNotFoundError:
        return offset
    out.flush()
    return offset


def _reconcile(args: argparse.Namespace, settings: Settings, ledger: Ledger, out: TextIO) -> int:
    # Imported here: it needs boto3, slow to import, and every other command runs without it.
    from worker.ctl.reconcile import reconcile

    return reconcile(args, settings, ledger, out)


def _report(out: TextIO, as_json: bool, job: Job) -> None:
    if as_json:
        dump_json(out, job.to_dict())
    else:
        print(f"{job.id} {job.state.value}", file=out)


#: Every command but ``submit`` (worker.ctl.cli's own), by name.
COMMANDS: Mapping[str, Command] = {
    "list": _list, "show": _show, "status": _status, "cancel": _cancel,
    "retry": _retry, "logs": _logs, "reconcile": _reconcile,
}
