"""`processorctl`: submit jobs and inspect the ledger.

It runs once per SSM command, so it starts fast: stdlib plus the ledger, never
boto3. ``submit`` writes to the ledger directly (durable while the daemon is
stopped) and then pokes the daemon over its socket if it is up. The other
commands live in worker.ctl.commands, imported only when one is asked for;
keep what ``submit`` imports small (tests/unit/test_layering.py and test_ctl.py check it).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from processor_shared.layout import MAX_KEY_BYTES
from worker import __version__, exitcodes
from worker.config.settings import CONFIG_HELP, Settings, config_path, load_settings
from worker.ctl.control_client import wake
from worker.errors import ConfigError, JobNotFound, LedgerError, UsageError
from worker.jobs.identity import Identity, bucket_name_problem, decode_key_base64, normalise_etag
from worker.jobs.states import JobState
from worker.state.ledger import Ledger

if TYPE_CHECKING:
    from worker.ctl.commands import Command


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter at argparse's width, measured without importing shutil.

    argparse builds a formatter for every ``add_argument`` (to check metavars)
    and sizes it with ``shutil.get_terminal_size``; importing shutil (and with
    it zlib, bz2 and lzma) was ≈ 2 ms of every processorctl start.
    """

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=_terminal_columns() - 2)


def _terminal_columns() -> int:
    """``shutil.get_terminal_size().columns``: $COLUMNS, else stdout's terminal, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns > 0:
        return columns
    if sys.__stdout__ is None:
        return 80
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80


class _ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser (and subparsers, which take the parent's class) using _HelpFormatter.

    A usage error raises `_UsageError` instead of exiting, so ``main`` can also
    answer it as JSON under ``--json``.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(formatter_class=_HelpFormatter, **kwargs)

    def error(self, message: str) -> NoReturn:
        error = UsageError(f"{self.prog}: error: {message}")
        error.add_note(self.format_usage())
        raise error


# Long on purpose: one declaration per subcommand, read top to bottom as --help prints them.
def _parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="processorctl",
        description="Submit and inspect processor jobs.",
        epilog="Exit status: 0 ok, 1 failure, 2 usage or configuration error, "
        "3 no such job (status: the daemon is not running), 4 ledger unavailable, "
        "5 daemon not reachable.",
    )
    parser.add_argument("--version", action="version", version=f"processorctl {__version__}")
    parser.add_argument("--config", help=CONFIG_HELP)
    # The global options again, after the subcommand (`processorctl list --config X`):
    # SUPPRESS keeps the value given before it when they are not repeated.
    common = _ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help=CONFIG_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, summary: str, **kwargs: Any) -> argparse.ArgumentParser:
        made: argparse.ArgumentParser = sub.add_parser(name, help=summary, parents=[common], **kwargs)
        return made

    submit = command("submit", "durably queue one S3 object; prints the job id")
    submit.add_argument("--bucket", required=True)
    key = submit.add_mutually_exclusive_group(required=True)
    key.add_argument(
        "--key", help="the object key, decoded (write --key=VALUE: keys may start with '-')"
    )
    key.add_argument(
        "--key-base64", metavar="B64",
        help="the object key as base64url of its UTF-8 bytes, '=' padding optional: any key, "
        "control characters included (the SSM document's KeyBase64)",
    )
    submit.add_argument("--version-id", default="", help="S3 version id (versioned buckets)")
    submit.add_argument("--etag", default="", help="the object's ETag, when not versioned")
    submit.add_argument("--json", action="store_true")

    listing = command("list", "list jobs, newest first (the 50 newest unless --limit or --all)",
                      epilog="TIME is 1h, 30m, 2d (that long ago), an ISO date or time "
                      "(2026-12-07, 2026-12-07T14:30Z; UTC unless it says) or @EPOCH.")
    _add_filters(listing)
    limit = listing.add_mutually_exclusive_group()
    limit.add_argument("--limit", type=_positive, metavar="N", help="show the N newest (default 50)")
    limit.add_argument("--all", action="store_true", help="every matching job")
    listing.add_argument("--fleet", action="store_true",
                         help="the whole fleet's jobs, from the fleet's job record ([queue] table); "
                         "--state may then also say waiting")
    listing.add_argument("--json", action="store_true")

    show = command("show", "one job in full, with its transitions")
    show.add_argument("job_id", metavar="JOB",
                      help="a job id, a unique start of one, or s3://BUCKET/KEY (that object's newest job; "
                      "fleet-wide with [queue] table)")
    show.add_argument("--fleet", action="store_true",
                      help="the job's fleet-wide record ([queue] table) rather than this ledger's")
    show.add_argument("--all-versions", action="store_true",
                      help="with s3://BUCKET/KEY: every version's job, newest first")
    show.add_argument("--json", action="store_true")

    fleet = command("fleet", "the work queue and the running jobs of every instance")
    fleet.add_argument("--json", action="store_true")

    dlq = command("dlq", "the work queue's dead letters: list them with reasons, or redrive")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    for name, text in (("list", "dead letters with their reasons (left in place)"),
                       ("redrive", "move dead letters back to the work queue; their failed "
                                   "job records are reset so they run again")):
        one = dlq_sub.add_parser(name, help=text, parents=[common])
        one.add_argument("--limit", type=int, default=None if name == "redrive" else 10)
        one.add_argument("--json", action="store_true")

    status = command("status", "counts per state and what the daemon is doing "
                     "(exit 3 when the daemon is not running)")
    status.add_argument("--json", action="store_true")

    cancel = command("cancel", "cancel a queued or running job")
    cancel.add_argument("job_id", metavar="JOB", help="a job id, a unique start of one, or s3://BUCKET/KEY")
    cancel.add_argument("--json", action="store_true")

    retry = command(
        "retry", "put failed or cancelled jobs back in the queue: one JOB, or every match of --state …",
        epilog="Bulk: `processorctl retry --state failed --since 1h --key incoming/` prints how many "
        "jobs match and retries them after confirmation (--yes for scripts).")
    retry.add_argument("job_id", metavar="JOB", nargs="?",
                       help="a job id, a unique start of one, or s3://BUCKET/KEY")
    _add_filters(retry)
    retry.add_argument("--yes", action="store_true", help="retry every matching job without asking")
    retry.add_argument("--json", action="store_true")

    reconcile = command(
        "reconcile", "submit input objects that have neither a job nor a result (lost events)"
    )
    reconcile.add_argument("--input-bucket", help="default: reconcile.input_bucket from the config")
    reconcile.add_argument("--prefix", help="default: reconcile.prefix")
    reconcile.add_argument("--older-than", type=_duration, metavar="DURATION",
                           help="e.g. 10m, 900s, 1h (default: reconcile.older_than_s)")
    reconcile.add_argument("--dry-run", action="store_true", help="list what would be submitted")
    reconcile.add_argument("--json", action="store_true")

    logs = command("logs", "the processing command's output for a job")
    logs.add_argument("job_id", metavar="JOB", help="a job id, a unique start of one, or s3://BUCKET/KEY")
    logs.add_argument("-f", "--follow", action="store_true",
                      help="keep printing until the job leaves the running state")
    return parser


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state", metavar="STATE[,STATE]",
                        help="only jobs in these states: " + ", ".join(s.value for s in JobState))
    parser.add_argument("--key", metavar="PREFIX", help="only keys starting with PREFIX; "
                        "s3://BUCKET/PREFIX also names the bucket")
    parser.add_argument("--since", metavar="TIME", help="only jobs submitted at or after TIME")
    parser.add_argument("--until", metavar="TIME", help="only jobs submitted before TIME")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return value


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
    except UsageError as exc:  # argparse's message, as argparse prints it: usage, then the error
        sys.stderr.write("".join(getattr(exc, "__notes__", [])))
        return _fail(out, "--json" in argv, exitcodes.USAGE, str(exc), "usage")
    as_json = bool(getattr(args, "json", False))
    try:
        settings = load_settings(config_path(args.config, os.environ))
    except ConfigError as exc:
        return _fail(out, as_json, exitcodes.USAGE, f"processorctl: configuration error: {exc}", "config")
    try:
        _act_as_state_owner(settings.paths.state_dir)
    except OSError as exc:
        return _fail(out, as_json, exitcodes.FAILURE,
                     f"processorctl: cannot switch to the owner of {settings.paths.state_dir}: {exc}",
                     "permission")
    try:
        with Ledger(settings.paths.ledger) as ledger:
            return _command(args.command)(args, settings, ledger, out)
    except UsageError as exc:
        return _fail(out, as_json, exitcodes.USAGE, f"processorctl: {exc}", "usage")
    except JobNotFound as exc:
        return _fail(out, as_json, exitcodes.NOT_FOUND, f"processorctl: {exc}", "not_found")
    except LedgerError as exc:
        return _fail(out, as_json, exitcodes.LEDGER_UNAVAILABLE,
                     f"processorctl: ledger unavailable: {exc}", "ledger_unavailable")


def _fail(out: TextIO, as_json: bool, code: int, message: str, kind: str) -> int:
    # Imported here: only a failing command needs it (submit's normal path stays small).
    from worker.ctl.render import fail

    return fail(out, as_json, code, message, kind)


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


def _command(name: str) -> Command:
    if name == "submit":
        return _submit
    # Imported here: it needs the Job dataclass and the renderers, which submit does not.
    from worker.ctl.commands import COMMANDS

    return COMMANDS[name]


def _submit(args: argparse.Namespace, settings: Settings, ledger: Ledger, out: TextIO) -> int:
    if args.key_base64 is not None:
        try:
            key = decode_key_base64(args.key_base64)
        except ValueError as exc:
            raise UsageError(f"--key-base64: {exc}") from None
    else:
        key = args.key
    identity = _identity(args.bucket, key, args.version_id, args.etag)
    job_id, state, created = ledger.enqueue(identity)
    wake(settings.paths.socket)
    if args.json:
        from worker.ctl.render import dump_json  # the SSM document's submit is not --json

        dump_json(out, {"job_id": job_id, "created": created, "state": state.value})
    else:
        print(job_id, file=out)
        if not created:
            print(f"processorctl: already submitted; job is {state.value}", file=sys.stderr)
    return exitcodes.OK


def _identity(bucket: str, key: str, version_id: str, etag: str) -> Identity:
    if not bucket:
        raise UsageError("--bucket must not be empty")
    problem = bucket_name_problem(bucket)
    if problem is not None:
        raise UsageError(f"--bucket {bucket!r} is not a valid S3 bucket name: it {problem}")
    if not key:
        raise UsageError("--key must not be empty")
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"--key is not valid UTF-8: {key!r}") from None
    if len(encoded) > MAX_KEY_BYTES:
        raise UsageError(f"--key is {len(encoded)} bytes; S3 keys are at most {MAX_KEY_BYTES}")
    # A key too long for <output prefix><key>/_manifest.json is fine: its results
    # go to the _by-id/<job id>/ fallback (processor_shared.layout).
    return Identity(bucket, key, version_id or None, normalise_etag(etag))


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 90s, 10m, 1h)") from None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
