"""`processorctl`: submit jobs and inspect the ledger.

It runs once per SSM command, so it starts fast: stdlib plus the ledger, never
boto3. ``submit`` writes to the ledger directly (durable while the daemon is
stopped) and then pokes the daemon over its socket if it is up.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from worker import __version__, exitcodes
from worker.config import CONFIG_HELP, Settings, config_path, load_settings
from worker.control import request, wake
from worker.errors import (
    ConfigError,
    ControlError,
    InvalidTransition,
    JobNotFound,
    LedgerError,
)
from worker.job import Identity, Job, JobState, normalise_etag
from worker.ledger import Ledger
from worker.render import describe, dump_json, printable, table, when

#: S3's limit on a key, in UTF-8 bytes.
MAX_KEY_BYTES = 1024

#: The longest name the pipeline itself writes under a result prefix.
RESULT_NAME_RESERVE = "_manifest.json"


class UsageError(Exception):
    """A command-line value is unusable; the message names the option."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="processorctl",
        description="Submit and inspect processor jobs.",
        epilog="Exit status: 0 ok, 1 failure, 2 usage or configuration error, "
        "3 no such job, 4 ledger unavailable, 5 daemon not reachable.",
    )
    parser.add_argument("--version", action="version", version=f"processorctl {__version__}")
    parser.add_argument("--config", help=CONFIG_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    submit = sub.add_parser("submit", help="durably queue one S3 object; prints the job id")
    submit.add_argument("--bucket", required=True)
    submit.add_argument(
        "--key", required=True, help="the object key, decoded (write --key=VALUE: keys may start with '-')"
    )
    submit.add_argument("--version-id", default="", help="S3 version id (versioned buckets)")
    submit.add_argument("--etag", default="", help="the object's ETag, when not versioned")
    submit.add_argument("--json", action="store_true")

    listing = sub.add_parser("list", help="list jobs, oldest first")
    listing.add_argument("--state", choices=[s.value for s in JobState])
    listing.add_argument("--limit", type=int, default=None)
    listing.add_argument("--json", action="store_true")

    show = sub.add_parser("show", help="one job in full, with its transitions")
    show.add_argument("job_id")
    show.add_argument("--json", action="store_true")

    status = sub.add_parser("status", help="counts per state and what the daemon is doing")
    status.add_argument("--json", action="store_true")

    cancel = sub.add_parser("cancel", help="cancel a queued or running job")
    cancel.add_argument("job_id")
    cancel.add_argument("--json", action="store_true")

    retry = sub.add_parser("retry", help="put a failed or cancelled job back in the queue")
    retry.add_argument("job_id")
    retry.add_argument("--json", action="store_true")

    reconcile = sub.add_parser(
        "reconcile", help="submit input objects that have neither a job nor a result (lost events)"
    )
    reconcile.add_argument("--input-bucket", help="default: reconcile.input_bucket from the config")
    reconcile.add_argument("--prefix", help="default: reconcile.prefix")
    reconcile.add_argument("--older-than", type=_duration, metavar="DURATION",
                           help="e.g. 10m, 900s, 1h (default: reconcile.older_than_s)")
    reconcile.add_argument("--fleet-tag", metavar="KEY=VALUE",
                           help="in a fleet: take only objects that hash to this instance "
                           "(default: reconcile.fleet_tag)")
    reconcile.add_argument("--instance-id", help="this instance in the fleet (default: "
                           "reconcile.instance_id, else the EC2 metadata service)")
    reconcile.add_argument("--dry-run", action="store_true", help="list what would be submitted")
    reconcile.add_argument("--json", action="store_true")

    logs = sub.add_parser("logs", help="the processing command's output for a job")
    logs.add_argument("job_id")
    logs.add_argument("-f", "--follow", action="store_true",
                      help="keep printing until the job leaves the running state")
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(config_path(args.config, os.environ))
    except ConfigError as exc:
        print(f"processorctl: configuration error: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    try:
        _act_as_state_owner(settings.paths.state_dir)
    except OSError as exc:
        print(f"processorctl: cannot switch to the owner of {settings.paths.state_dir}: {exc}",
              file=sys.stderr)
        return exitcodes.FAILURE
    try:
        with Ledger(settings.paths.ledger) as ledger:
            handler = COMMANDS[args.command]
            return handler(args, settings, ledger, out)
    except UsageError as exc:
        print(f"processorctl: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    except JobNotFound as exc:
        print(f"processorctl: {exc}", file=sys.stderr)
        return exitcodes.NOT_FOUND
    except LedgerError as exc:
        print(f"processorctl: ledger unavailable: {exc}", file=sys.stderr)
        return exitcodes.LEDGER_UNAVAILABLE


def _act_as_state_owner(state_dir: Path) -> None:
    """Run as root (the SSM agent does), become the state dir's owner first.

    Otherwise a root processorctl could create the ledger or its WAL files as
    root while the daemon is stopped, and the daemon (user ``processor``) could
    not open them afterwards.
    """
    if os.geteuid() != 0:
        return
    try:
        owner = state_dir.stat()
    except FileNotFoundError:
        return
    if owner.st_uid == 0:
        return
    os.setgroups([])
    os.setgid(owner.st_gid)
    os.setuid(owner.st_uid)


# -- commands -----------------------------------------------------------------


def _submit(args: argparse.Namespace, settings: Settings, ledger: Ledger, out: TextIO) -> int:
    identity = _identity(args.bucket, args.key, args.version_id, args.etag,
                         output_prefix=settings.s3.output_prefix)
    job, created = ledger.submit(identity)
    wake(settings.paths.socket)
    if args.json:
        dump_json(out, {"job_id": job.id, "created": created, "state": job.state.value})
    else:
        print(job.id, file=out)
        if not created:
            print(f"processorctl: already submitted; job is {job.state.value}", file=sys.stderr)
    return exitcodes.OK


def _identity(
    bucket: str, key: str, version_id: str, etag: str, *, output_prefix: str = ""
) -> Identity:
    if not bucket:
        raise UsageError("--bucket must not be empty")
    if not key:
        raise UsageError("--key must not be empty")
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"--key is not valid UTF-8: {key!r}") from None
    if len(encoded) > MAX_KEY_BYTES:
        raise UsageError(f"--key is {len(encoded)} bytes; S3 keys are at most {MAX_KEY_BYTES}")
    # Results land at <prefix><key>/...: refuse now what could never be uploaded later.
    longest = len(f"{output_prefix}{key}/{RESULT_NAME_RESERVE}".encode())
    if longest > MAX_KEY_BYTES:
        raise UsageError(
            f"--key is {len(encoded)} bytes: its results (<output prefix><key>/"
            f"{RESULT_NAME_RESERVE}) would be {longest} bytes, over S3's {MAX_KEY_BYTES}-byte key limit"
        )
    return Identity(bucket, key, version_id or None, normalise_etag(etag))


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
        dump_json(out, {**job.to_dict(), "transitions": history})
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
    path = settings.paths.logs / "jobs" / f"{job.id}.log"
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
    return exitcodes.OK


def _copy_from(path: Path, offset: int, out: TextIO) -> int:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return offset
    out.write(data.decode("utf-8", "replace"))
    out.flush()
    return offset + len(data)


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 90s, 10m, 1h)") from None


def _reconcile(args: argparse.Namespace, settings: Settings, ledger: Ledger, out: TextIO) -> int:
    # Imported here: it needs boto3, slow to import, and every other command runs without it.
    from worker.ctl_reconcile import reconcile

    return reconcile(args, settings, ledger, out)


def _report(out: TextIO, as_json: bool, job: Job) -> None:
    if as_json:
        dump_json(out, job.to_dict())
    else:
        print(f"{job.id} {job.state.value}", file=out)


COMMANDS = {
    "submit": _submit, "list": _list, "show": _show, "status": _status,
    "cancel": _cancel, "retry": _retry, "logs": _logs, "reconcile": _reconcile,
}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
