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
from typing import TYPE_CHECKING, Any, TextIO

from worker import __version__, exitcodes
from worker.config import CONFIG_HELP, Settings, config_path, load_settings
from worker.ctl.control_client import wake
from worker.errors import ConfigError, JobNotFound, LedgerError, UsageError
from worker.identity import Identity, bucket_name_problem, decode_key_base64, normalise_etag
from worker.ledger import Ledger
from worker.states import JobState
from worker.storage.layout import MAX_KEY_BYTES

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
    """An ArgumentParser (and subparsers, which take the parent's class) using _HelpFormatter."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(formatter_class=_HelpFormatter, **kwargs)


def _parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
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
            return _command(args.command)(args, settings, ledger, out)
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
    # go to the _by-id/<job id>/ fallback (worker.storage.layout).
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
