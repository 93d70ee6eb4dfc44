"""`processorctl`'s commands other than ``submit``: list, show, status, cancel, retry, logs, reconcile.

Apart from worker.ctl.cli because operators run these now and then, while
``submit`` runs once per S3 object and imports only what it needs; worker.ctl.cli
imports this module when one of these commands is asked for.
"""

from __future__ import annotations

import argparse
import codecs
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from processor_shared.layout import MANIFEST_NAME
from worker import exitcodes
from worker.config.settings import Settings
from worker.ctl.control_client import request, wake
from worker.ctl.jobs import (
    DEFAULT_LIMIT,
    JobQuery,
    LedgerSource,
    find_job,
    find_jobs,
    parse_states,
    parse_time,
    split_s3_url,
)
from worker.ctl.render import describe, dump_json, fail, first_line, printable, result_location, table, when
from worker.errors import ControlError, InvalidTransition, UsageError
from worker.jobs.activity import activity, duration
from worker.jobs.job import Job
from worker.jobs.states import TERMINAL, JobState
from worker.runner.joblog import was_cut
from worker.state.ledger import Ledger

Command = Callable[[argparse.Namespace, Settings, Ledger, TextIO], int]


def _list(args: argparse.Namespace, settings: Settings, ledger: Ledger, out: TextIO) -> int:
    if args.fleet:
        from worker.ctl.fleet import list_fleet  # boto3: only when asked for

        return list_fleet(args, settings, ledger, out)
    query = _query(args, limit=None if args.all else (args.limit or DEFAULT_LIMIT))
    page = LedgerSource(ledger).page(query)
    now = time.time()
    if args.json:
        dump_json(out, [{**job.to_dict(), **_summary(job, now)} for job in page.jobs])
    else:
        rows = [("JOB", "STATE", "ATTEMPTS", "STARTED", "DURATION", "KEY", "ERROR")]
        rows += [
            (j.id, j.state.value, str(j.attempts), when(j.started_at) if j.started_at else "-",
             _duration_cell(j, now), printable(j.key, 60), first_line(j.error, 60))
            for j in page.jobs
        ]
        table(out, rows)
    if page.total > len(page.jobs):
        print(f"processorctl: showing the {len(page.jobs)} newest of {page.total} matching jobs; "
              "--limit N or --all for more", file=sys.stderr)
    return exitcodes.OK


def _query(args: argparse.Namespace, *, limit: int | None) -> JobQuery:
    now = time.time()
    bucket, key_prefix = None, args.key or ""
    if key_prefix.startswith("s3://"):
        bucket, key_prefix = split_s3_url(key_prefix, option="--key")
    return JobQuery(
        states=parse_states(args.state) if args.state else (),
        bucket=bucket, key_prefix=key_prefix,
        since=parse_time(args.since, option="--since", now=now) if args.since else None,
        until=parse_time(args.until, option="--until", now=now) if args.until else None,
        limit=limit,
    )


def _summary(job: Job, now: float) -> dict[str, Any]:
    """The fields `list --json` adds to each job: ``duration_s`` of its last attempt (so far)."""
    end = now if job.state is JobState.RUNNING else job.finished_at if job.state in TERMINAL else None
    if job.started_at is None or end is None:
        return {"duration_s": None}
    return {"duration_s": round(max(end - job.started_at, 0.0), 1)}


def _duration_cell(job: Job, now: float) -> str:
    seconds = _summary(job, now)["duration_s"]
    return "-" if seconds is None else duration(seconds)


def _show(args: argparse.Namespace, settings: Settings, ledger: Ledger, out: TextIO) -> int:
    if args.fleet or (args.job_id.startswith("s3://") and settings.queue.table):
        from worker.ctl.fleet import show  # the fleet-wide record (boto3)

        return show(args, settings, ledger, out)
    jobs = find_jobs(LedgerSource(ledger), args.job_id, all_versions=args.all_versions)
    now = time.time()
    shown = []
    for n, job in enumerate(jobs):
        history = ledger.history(job.id)
        facts = activity(job, now=now, timeout_s=settings.processing.timeout_s)
        outputs = _outputs(job, settings)
        if args.json:
            shown.append({**job.to_dict(), "results": result_location(job, settings),
                          "activity": facts, **({"outputs": outputs} if outputs is not None else {}),
                          "transitions": history})
            continue
        if n:
            print(file=out)
        describe(out, job, settings, facts=facts, now=now, outputs=outputs)
        print("transitions:", file=out)
        for t in history:
            reason = f"  ({printable(t['reason'], 200)})" if t["reason"] else ""
            print(f"  {when(t['at'])}  {t['from_state'] or '-'} -> {t['to_state']}"
                  f"  attempt {t['attempt']}{reason}", file=out)
    if args.json:
        dump_json(out, shown if args.all_versions and args.job_id.startswith("s3://") else shown[0])
    return exitcodes.OK


#: How long `show` waits for a success's ``_manifest.json`` before saying it could not read it.
OUTPUTS_TIMEOUT_S = 5.0


def _outputs(job: Job, settings: Settings) -> list[dict[str, Any]] | str | None:
    """A success's outputs as its ``_manifest.json`` lists them (a reason when unreadable).

    Bounded by ``OUTPUTS_TIMEOUT_S``: with S3 unreachable the store would retry
    for minutes, and `show` is what an operator runs to find out what is wrong.
    """
    if job.state is not JobState.SUCCEEDED or not job.result_prefix:
        return None
    key = job.result_prefix + MANIFEST_NAME
    found: list[list[dict[str, Any]] | str] = []

    def read() -> None:
        _store_logs_to_stderr()
        # Imported here: boto3 is slow to import, and only a success's outputs need it.
        from worker.errors import StorageError
        from worker.storage.s3 import S3Store

        store = S3Store.from_settings(settings.s3)
        try:
            manifest = store.read_json(settings.s3.output_bucket, key)
        except StorageError as exc:
            found.append(f"not read: {exc}")
            return
        finally:
            store.close()
        if manifest is None:
            found.append("not read: _manifest.json is missing")
            return
        found.append([{"key": str(o.get("key")), "size": o.get("size")}
                      for o in manifest.get("outputs", []) if isinstance(o, dict)])

    reader = threading.Thread(target=read, name="manifest", daemon=True)
    reader.start()
    reader.join(OUTPUTS_TIMEOUT_S)
    if not found:
        return (f"not read within {OUTPUTS_TIMEOUT_S:g}s (is S3 reachable?): "
                f"s3://{settings.s3.output_bucket}/{key}")
    return found[0]


def _store_logs_to_stderr() -> None:
    """The S3 adapter logs its retries with structlog, which prints to stdout unless told
    otherwise: processorctl's stdout is for its answer (and --json), so warnings go to stderr."""
    import logging

    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr),
                        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
                        cache_logger_on_first_use=False)


def _status(args: argparse.Namespace, settings: Settings, ledger: Ledger, out: TextIO) -> int:
    try:
        live: dict[str, Any] | None = request(settings.paths.socket, "status", timeout=2.0)
    except ControlError:
        live = None
    counts = ledger.counts()
    code = exitcodes.OK if live is not None else exitcodes.DAEMON_NOT_RUNNING
    if args.json:
        dump_json(out, {"daemon": live, "counts": counts})
        return code
    if live is None:
        print(f"daemon: not running (not reachable on {settings.paths.socket})", file=out)
    else:
        mode = "draining" if live["draining"] else "running"
        print(f"daemon: {mode}, pid {live['pid']}, version {live['version']}, "
              f"{live['busy']}/{live['slots']} slots busy", file=out)
        for job in live.get("running", []):
            doing = job.get("activity_text") or f"running for {duration(job.get('running_s', 0))}"
            print(f"  {job['job_id']}  {printable(job['key'], 60)}: {doing}", file=out)
        if live.get("oldest_queued_age_s") is not None:
            print(f"oldest queued job: {duration(live['oldest_queued_age_s'])} old", file=out)
    if settings.queue.url:
        print(f"work queue: {printable(settings.queue.url, 500)}", end="", file=out)
        held = (live or {}).get("queue") or {}
        if held:
            if held.get("paused"):
                state = f"receiving {held['paused']}"
            else:
                state = "receiving" if held.get("receiving") else "not receiving (draining)"
            print(f", {held.get('held', 0)} message(s) held, {state}", end="", file=out)
        print(file=out)
    print("jobs: " + ", ".join(f"{n} {state}" for state, n in counts.items()), file=out)
    return code


def _cancel(args: argparse.Namespace, settings: Settings, ledger: Ledger, out: TextIO) -> int:
    job = find_job(LedgerSource(ledger), args.job_id)
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
            return fail(out, args.json, exitcodes.DAEMON_UNAVAILABLE,
                        f"processorctl: {job.id} is running but the daemon is not reachable ({exc}); "
                        "a stopped daemon requeues it at start: cancel it then", "daemon_unavailable")
    if job.state is not JobState.CANCELLED:
        return fail(out, args.json, exitcodes.FAILURE, f"processorctl: {job.id} is {job.state.value}; "
                    "only queued or running jobs can be cancelled", "not_cancellable")
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
    bulk = any(getattr(args, name) for name in ("state", "key", "since", "until"))
    if bulk == (args.job_id is not None):
        raise UsageError("retry takes one JOB, or filters (--state failed [--since …] [--key PREFIX]), "
                         "not both")
    if bulk:
        return _retry_matching(args, settings, ledger, out)
    job = find_job(LedgerSource(ledger), args.job_id)
    try:
        job = ledger.retry(job.id)
    except InvalidTransition as exc:
        return fail(out, args.json, exitcodes.FAILURE, f"processorctl: {job.id} is {exc.current}; "
                    "only failed or cancelled jobs can be retried", "not_retryable")
    wake(settings.paths.socket)
    _report(out, args.json, job)
    return exitcodes.OK


def _retry_matching(args: argparse.Namespace, settings: Settings, ledger: Ledger, out: TextIO) -> int:
    """Bulk retry: count the matching failed/cancelled jobs, confirm (--yes, or y on a terminal), retry."""
    query = _query(args, limit=None)
    retryable = (JobState.FAILED, JobState.CANCELLED)
    states = tuple(s for s in query.states or retryable if s in retryable)
    if query.states and not states:
        raise UsageError("--state: only failed or cancelled jobs can be retried")
    jobs = LedgerSource(ledger).page(JobQuery(states, query.bucket, query.key_prefix, query.since,
                                              query.until, limit=None)).jobs
    if not args.yes:
        if not jobs or not sys.stdin.isatty():
            summary = {"matched": len(jobs), "retried": [], "confirmed": False}
            if args.json:
                dump_json(out, summary)
            else:
                print(f"{len(jobs)} job(s) match; add --yes to retry them", file=out)
            return exitcodes.OK if not jobs else exitcodes.USAGE
        answer = input(f"retry {len(jobs)} job(s)? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            print("nothing retried", file=out)
            return exitcodes.FAILURE
    retried, skipped = [], []
    for job in jobs:
        try:
            retried.append(ledger.retry(job.id).id)
        except InvalidTransition:
            skipped.append(job.id)  # retried or running meanwhile
    if retried:
        wake(settings.paths.socket)
    if args.json:
        dump_json(out, {"matched": len(jobs), "retried": retried, "skipped": skipped, "confirmed": True})
    else:
        for job_id in retried:
            print(f"{job_id} queued", file=out)
        print(f"retried {len(retried)} of {len(jobs)} matching job(s)"
              + (f"; {len(skipped)} had changed state meanwhile" if skipped else ""), file=out)
    return exitcodes.OK


#: While `logs -f` waits, how often it checks that the daemon still answers.
_DAEMON_CHECK_S = 2.0


def _logs(args: argparse.Namespace, settings: Settings, ledger: Ledger, out: TextIO) -> int:
    job = find_job(LedgerSource(ledger), args.job_id)
    path = settings.paths.job_log(job.id)
    offset = 0
    checked = 0.0
    while True:
        offset = _copy_from(path, offset, out)
        if not args.follow or job.state not in (JobState.QUEUED, JobState.RUNNING):
            break
        if time.monotonic() - checked >= _DAEMON_CHECK_S:
            checked = time.monotonic()
            if not _daemon_answers(settings):
                _copy_from(path, offset, out)
                what = ("queued: it runs once the daemon starts" if job.state is JobState.QUEUED
                        else "left running by a daemon that stopped: it is requeued when the daemon starts")
                print(f"processorctl: the daemon is not running (not reachable on {settings.paths.socket}) "
                      f"and {job.id} is {what}; stopped following", file=sys.stderr)
                return exitcodes.DAEMON_UNAVAILABLE
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


def _daemon_answers(settings: Settings) -> bool:
    try:
        request(settings.paths.socket, "ping", timeout=2.0)
    except ControlError:
        return False
    return True


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

    _store_logs_to_stderr()
    return reconcile(args, settings, ledger, out)


def _report(out: TextIO, as_json: bool, job: Job) -> None:
    if as_json:
        dump_json(out, job.to_dict())
    else:
        print(f"{job.id} {job.state.value}", file=out)


#: Every command but ``submit`` (worker.ctl.cli's own), by name.
def _fleet(args: argparse.Namespace, settings: Settings, ledger: Ledger, out: TextIO) -> int:
    from worker.ctl.fleet import fleet  # boto3: only when asked for

    return fleet(args, settings, ledger, out)


def _dlq(args: argparse.Namespace, settings: Settings, ledger: Ledger, out: TextIO) -> int:
    from worker.ctl.fleet import dlq  # boto3: only when asked for

    return dlq(args, settings, ledger, out)


COMMANDS: Mapping[str, Command] = {
    "list": _list, "show": _show, "status": _status, "cancel": _cancel,
    "retry": _retry, "logs": _logs, "reconcile": _reconcile, "fleet": _fleet, "dlq": _dlq,
}
