"""`processor`: the daemon (`processor run`) and the local stack (`processor local`).

`processor run` is the daemon's lifecycle in order: take the state dir's lock
(before anything else touches the state dir), set up logging and the ledger,
then ``Daemon.start`` recovers and serves; from then on this process's main
thread only turns signals into ``Daemon.drain`` / ``Daemon.stop`` calls (one
``handle_<signal>`` each, `StopSignals`) until the daemon has stopped, and
exits with its status (worker.exitcodes).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from worker import __version__, exitcodes
from worker.config.settings import CONFIG_HELP, Settings, config_path, load_settings
from worker.errors import ConfigError, LedgerError, ProcessorError
from worker.state.dirs import make_dirs

if TYPE_CHECKING:
    from worker.daemon.lifecycle import Daemon
    from worker.state.statelock import StateLock


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="processor", description="Process files uploaded to S3 (see `processor CMD --help`)."
    )
    parser.add_argument("--version", action="version", version=f"processor {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="run the daemon in the foreground (systemd ExecStart)",
        epilog="SIGTERM/SIGINT drain (a second one stops at once); SIGHUP is ignored. Exit status: "
               "0 stopped with every job finished, 1 failure, 2 configuration error, "
               "6 another daemon holds the state dir, 7 stopped with jobs interrupted (left queued), "
               "8 processing.command's program is missing or not executable.",
    )
    run.add_argument("--config", help=CONFIG_HELP)
    check = sub.add_parser(
        "check", help="validate the configuration and the processing command, then exit (starts nothing)",
        epilog="Exit status: 0 usable, 2 configuration error, 8 processing.command's program is "
               "missing or not executable.",
    )
    check.add_argument("--config", help=CONFIG_HELP)
    local = sub.add_parser(
        "local", help="run the whole pipeline on this machine against an embedded S3/SSM emulator"
    )
    from worker.local.options import add_arguments  # stdlib-only module

    add_arguments(local)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        return run_daemon(args.config)
    if args.command == "check":
        return check_config(args.config)
    from worker.local.stack import run_local  # imports moto: only when asked for

    return run_local(args)


def check_config(config: str | None) -> int:
    """`processor check`: what `processor run` validates before it starts, and nothing else."""
    path = config_path(config, os.environ)
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        print(f"processor: configuration error: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    from worker.errors import CommandUnusable
    from worker.runner.command_check import check_command

    try:
        program = check_command(settings.processing, os.environ)
    except CommandUnusable as exc:
        print(f"processor: {exc}", file=sys.stderr)
        return exitcodes.COMMAND_UNUSABLE
    print(f"configuration {path}: valid\n"
          f"processing.command: runs {program} (executable)\n"
          f"state dir: {settings.paths.state_dir}\n"
          f"results: s3://{settings.s3.output_bucket}/{settings.s3.output_prefix}")
    return exitcodes.OK


def run_daemon(config: str | None) -> int:
    """Build everything once from the config, then hand over to the daemon loop."""
    try:
        settings = load_settings(config_path(config, os.environ))
    except ConfigError as exc:
        print(f"processor: configuration error: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    from worker.errors import CommandUnusable
    from worker.runner.command_check import check_command

    # Before anything starts: a missing program would fail every job, one by one.
    try:
        check_command(settings.processing, os.environ)
    except CommandUnusable as exc:
        print(f"processor: refusing to start: {exc}", file=sys.stderr)
        return exitcodes.COMMAND_UNUSABLE

    from worker.state import statelock

    # First, before logs, ledger, recovery or the socket touch the state dir: a
    # second daemon would requeue the first one's running jobs and kill their
    # commands as orphans.
    try:
        lock = statelock.acquire(settings.paths.state_dir)
    except statelock.StateDirLocked as exc:
        print(f"processor: {exc}", file=sys.stderr)
        return exitcodes.STATE_DIR_LOCKED
    except OSError as exc:
        print(f"processor: cannot use state dir {settings.paths.state_dir}: {exc}", file=sys.stderr)
        return exitcodes.FAILURE
    with lock:  # held for the daemon's whole life
        return _run_locked(settings, lock)


def _run_locked(settings: Settings, lock: StateLock) -> int:
    """Lock held: set up logging and the ledger, then recover and serve (`serve`)."""
    from worker.daemon.lifecycle import Daemon
    from worker.fleet.instance import guard_from_settings
    from worker.runner.pipeline import Pipeline
    from worker.state.ledger import Ledger
    from worker.storage.s3 import S3Store
    from worker.telemetry import logsetup

    try:
        logsetup.setup(settings)
    except OSError as exc:  # the log dir on the state volume is unusable
        print(f"processor: cannot use state dir {settings.paths.state_dir}: {exc}", file=sys.stderr)
        return exitcodes.FAILURE
    try:
        try:
            for directory in (settings.paths.work, settings.paths.logs / "jobs"):
                make_dirs(directory)
            ledger = Ledger(settings.paths.ledger)
        except (OSError, LedgerError) as exc:
            print(f"processor: cannot use state dir {settings.paths.state_dir}: {exc}", file=sys.stderr)
            return exitcodes.FAILURE
        store = S3Store.from_settings(settings.s3)
        work_queue = job_records = None
        holder = ""
        if settings.queue.url:
            from worker.fleet.dynamo import DynamoRecords
            from worker.fleet.sqs import SQSQueue  # a fleet's shared work queue

            work_queue = SQSQueue.from_settings(settings)
            job_records = DynamoRecords.from_settings(settings)
            holder = _holder_name(settings)
        # None unless [instance] asks for scale-in protection or an interruption watch.
        guard = guard_from_settings(settings)
        try:
            pipeline = Pipeline(settings, store, ledger, environ=os.environ)
            daemon = Daemon(settings, ledger, pipeline, work_queue=work_queue, job_records=job_records,
                            holder=holder, guard=guard)
            return serve(daemon, lock)
        except ProcessorError as exc:
            print(f"processor: {exc}", file=sys.stderr)
            return exitcodes.FAILURE
        finally:
            if guard is not None:
                guard.close()  # clears protection; bounded (~15 s)
            if work_queue is not None:
                work_queue.close()
            if job_records is not None:
                job_records.close()
            store.close()
            ledger.close()
    finally:
        # Last: daemon_stopped and any crash report are queued for CloudWatch by now.
        logsetup.shutdown(settings.logging.flush_timeout_s)


def _holder_name(settings: Settings) -> str:
    """This daemon's name in fleet claims: ``[queue] holder``, the EC2 instance id, or host:state dir."""
    if settings.queue.holder:
        return settings.queue.holder
    from worker.aws.imds import instance_id

    found = instance_id(settings.instance.imds_url)
    if found:
        return found
    import socket

    return f"{socket.gethostname()}:{settings.paths.state_dir}"


def serve(daemon: Daemon, lock: StateLock) -> int:
    """Start ``daemon`` (recover, then serve), act on signals until it stops; its exit status."""
    from worker.daemon.signals import SignalQueue

    signals = StopSignals(daemon)
    # Installed before the start, so a SIGTERM during recovery is queued, not fatal.
    with SignalQueue(signals.handlers) as received:
        daemon.start(lock, on_stopped=received.wake)  # wake: it may stop on its own (Spot)
        while (status := daemon.wait(0)) is None:
            if (signum := received.get()) is not None:
                signals.handlers[signum]()
    return status


class StopSignals:
    """What `processor run` does on each signal (README "Stopping"); called from the
    main loop, never from a signal handler, so logging here is safe."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.handlers: dict[int, Callable[[], None]] = {
            signal.SIGTERM: self.handle_term,
            signal.SIGINT: self.handle_int,
            signal.SIGHUP: self.handle_hup,
        }

    def handle_term(self) -> None:
        """`systemctl stop`: drain; while a drain runs (a signal's or a Spot notice's), stop at once."""
        self._drain_then_stop("SIGTERM")

    def handle_int(self) -> None:
        """Ctrl-C in a terminal: as SIGTERM."""
        self._drain_then_stop("SIGINT")

    def handle_hup(self) -> None:
        """No reload: logged and ignored (the config is read once, at start)."""
        import structlog

        structlog.get_logger("processor.daemon").info(
            "signal_ignored", signal="SIGHUP", reason="reload is not supported; restart the unit")

    def _drain_then_stop(self, name: str) -> None:
        if self.daemon.draining:
            self.daemon.stop(reason=f"second stop signal ({name})")
        else:
            self.daemon.drain(reason=f"signal {name}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
