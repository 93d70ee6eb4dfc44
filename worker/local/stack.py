"""Wire the local stack together and run it: `processor local [--once]`.

Order of start: emulator -> resources -> daemon (a real `processor run`
subprocess) -> local SSM agent -> event pump. Order of stop is the reverse;
the daemon gets SIGTERM and drains like under systemd.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from worker import exitcodes
from worker.control import request
from worker.errors import ConfigError, ControlError
from worker.job import TERMINAL, Job, JobState
from worker.ledger import Ledger
from worker.local.agent import CommandResult, LocalSsmAgent
from worker.local.emulator import Emulator, Resources, provision
from worker.local.pump import EventPump, Invocation

#: Marks a directory as ours, so a reset never deletes an operator's files.
MARKER = ".processor-local"

#: Where the sample inputs are uploaded in the input bucket.
SAMPLE_PREFIX = "incoming/"

#: How long the daemon may take to answer on its socket after start.
DAEMON_START_TIMEOUT_S = 30.0


@dataclass
class _Console:
    """Serialised, flushed output shared by the agent, pump and watcher threads."""

    out: TextIO
    lock: threading.Lock

    def say(self, text: str) -> None:
        with self.lock:
            print(text, file=self.out, flush=True)


def run_local(args: argparse.Namespace, out: TextIO | None = None) -> int:
    console = _Console(out or sys.stdout, threading.Lock())
    try:
        command = _command(args.command)
        state_dir = _reset_state_dir(Path(args.state_dir))
    except ConfigError as exc:
        print(f"processor local: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with ExitStack() as stack:
            try:
                emulator = Emulator(args.port)
            except ConfigError as exc:
                print(f"processor local: {exc}", file=sys.stderr)
                return exitcodes.USAGE
            stack.callback(emulator.stop)
            res = provision(emulator, input_bucket=args.input_bucket, output_bucket=args.output_bucket)
            config = _write_config(state_dir, res, command)
            env = {**os.environ, **emulator.env(), "PROCESSOR_CONFIG": str(config),
                   "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
            daemon = stack.enter_context(_daemon(config, env, state_dir))
            if daemon is None:
                return exitcodes.FAILURE
            # The Lambda reads its configuration from the environment, as on AWS.
            os.environ.update({**emulator.env(), "DOCUMENT_NAME": res.submit_document,
                               "TARGET_INSTANCE_ID": res.instance_id})
            failures: list[str] = []
            agent = LocalSsmAgent(
                emulator.client("ssm"), res.instance_id, env=env,
                work_dir=state_dir / "ssm-agent", on_result=lambda r: _on_command(console, failures, r),
            )
            agent.start()
            stack.callback(agent.stop, 10.0)
            pump = EventPump(emulator.client("sqs"), res.queue_url,
                             on_invocation=lambda i: _on_invocation(console, failures, i))
            pump.start()
            stack.callback(pump.stop)
            _banner(console, res, state_dir, config)
            ledger = stack.enter_context(Ledger(Path(_config_value(config, "ledger"))))
            if args.once:
                return _once(console, emulator, res, ledger, failures, stop, args.timeout)
            _watch(console, ledger, res, stop)
            console.say("stopping: draining the daemon…")
            return exitcodes.OK
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- set-up ---------------------------------------------------------------------


def _command(text: str | None) -> list[str]:
    if text is None:
        return [sys.executable, "-m", "worker.examples.summarize", "{input}", "{output_dir}"]
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise ConfigError(f"--command cannot be split: {exc}", key="--command") from None
    if "{input}" not in argv:
        raise ConfigError(f"--command must contain the argument {{input}}, got {text!r}", key="--command")
    return argv


def _reset_state_dir(path: Path) -> Path:
    """Start from an empty state dir: the emulator starts empty, so must the ledger."""
    path = path.resolve()
    if path.exists() and any(path.iterdir()):
        if not (path / MARKER).exists():
            raise ConfigError(
                f"--state-dir {path} is not empty and was not made by `processor local`; "
                "refusing to reset it", key="--state-dir",
            )
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text("state of `processor local`; reset at every start\n")
    return path


def _socket_path(state_dir: Path) -> Path:
    candidate = state_dir / "processor.sock"
    if len(str(candidate).encode()) <= 100:
        return candidate
    # Unix socket paths are limited to 107 bytes; fall back to a short private dir.
    digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:12]
    short = Path(tempfile.gettempdir()) / f"processor-{digest}"
    short.mkdir(mode=0o700, exist_ok=True)
    return short / "processor.sock"


def _write_config(state_dir: Path, res: Resources, command: list[str]) -> Path:
    config = state_dir / "processor.toml"
    text = "\n".join([
        "# Written by `processor local` for its daemon.",
        "[s3]",
        f"output_bucket = {json.dumps(res.output_bucket)}",
        f"endpoint_url = {json.dumps(res.endpoint)}",
        'region = "us-east-1"',
        "[processing]",
        f"command = {json.dumps(command, ensure_ascii=False)}",
        "concurrency = 2",
        "timeout_s = 600",
        "max_attempts = 3",
        # Short delays so a retry is visible while you watch.
        "retry_base_s = 1",
        "retry_max_s = 10",
        "drain_timeout_s = 20",
        "kill_grace_s = 5",
        "[paths]",
        f"state_dir = {json.dumps(str(state_dir))}",
        f"socket = {json.dumps(str(_socket_path(state_dir)))}",
        "[logging]",
        'level = "info"',
        "journald = false",
        "",
    ])
    config.write_text(text, encoding="utf-8")
    return config


def _config_value(config: Path, what: str) -> str:
    from worker.config import load_settings

    settings = load_settings(config, environ={})
    return str(settings.paths.ledger if what == "ledger" else settings.paths.socket)


@contextmanager
def _daemon(config: Path, env: dict[str, str], state_dir: Path) -> Iterator[subprocess.Popen[bytes] | None]:
    """Run `processor run` as a child, as systemd would; SIGTERM and wait on exit."""
    log_path = state_dir / "daemon.stderr"
    with log_path.open("ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--config", str(config)],
            env=env, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
        )
    socket_path = Path(_config_value(config, "socket"))
    deadline = time.monotonic() + DAEMON_START_TIMEOUT_S
    ready = False
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            request(socket_path, "ping", timeout=1.0)
            ready = True
            break
        except ControlError:
            time.sleep(0.05)
    try:
        if not ready:
            tail = log_path.read_text(errors="replace")[-2000:]
            print(f"processor local: the daemon did not start; its output:\n{tail}", file=sys.stderr)
            yield None
        else:
            yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _banner(console: _Console, res: Resources, state_dir: Path, config: Path) -> None:
    console.say("\n".join([
        "processor local is ready",
        f"  emulator endpoint  {res.endpoint}  (credentials: testing/testing, region us-east-1)",
        f"  input bucket       s3://{res.input_bucket}",
        f"  output bucket      s3://{res.output_bucket}",
        f"  instance           {res.instance_id}, SSM document {res.submit_document}",
        f"  state dir          {state_dir}  (config {config.name}, logs/processor.jsonl)",
        f"  upload more with   AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing "
        f"aws --endpoint-url {res.endpoint} s3 cp FILE s3://{res.input_bucket}/KEY",
    ]))


# -- running ----------------------------------------------------------------------


def _on_command(console: _Console, failures: list[str], result: CommandResult) -> None:
    if result.status == "Success":
        console.say(f"ssm     {result.command_id[:8]} ran {result.document_name}: "
                    f"{result.stdout.strip()[:80]}")
    else:
        reason = result.error or result.stderr.strip()
        failures.append(f"SSM command {result.command_id}: {result.status}: {reason}")
        console.say(f"ssm     {result.command_id[:8]} {result.status}: "
                    f"{(result.error or result.stderr.strip())[:300]}")


def _on_invocation(console: _Console, failures: list[str], invocation: Invocation) -> None:
    if invocation.ok:
        sent = invocation.result.get("sent", 0) if isinstance(invocation.result, dict) else 0
        console.say(f"lambda  {invocation.request_id[:8]} sent {sent} command(s)")
    else:
        failures.append(f"Lambda invocation {invocation.request_id}: {invocation.error}")
        console.say(f"lambda  {invocation.request_id[:8]} failed: {invocation.error}")


def _sample_files() -> list[tuple[str, bytes]]:
    samples = resources.files("worker.local") / "samples"
    return sorted(
        (SAMPLE_PREFIX + entry.name, entry.read_bytes())
        for entry in samples.iterdir() if entry.is_file()
    )


def _once(
    console: _Console, emulator: Emulator, res: Resources, ledger: Ledger,
    failures: list[str], stop: threading.Event, timeout: float,
) -> int:
    s3 = emulator.client("s3")
    samples = _sample_files()
    for key, body in samples:
        s3.put_object(Bucket=res.input_bucket, Key=key, Body=body)
        console.say(f"upload  s3://{res.input_bucket}/{key} ({len(body)} bytes)")
    keys = {key for key, _ in samples}
    deadline = time.monotonic() + timeout
    jobs: dict[str, Job] = {}
    while time.monotonic() < deadline and not stop.is_set():
        jobs = {job.key: job for job in ledger.list_jobs() if job.key in keys}
        if len(jobs) == len(keys) and all(job.state in TERMINAL for job in jobs.values()):
            break
        if failures and len(jobs) + len(failures) >= len(keys) and all(
            job.state in TERMINAL for job in jobs.values()
        ):
            break
        stop.wait(0.2)
    console.say("")
    console.say("results")
    ok = True
    for key, _ in samples:
        job = jobs.get(key)
        if job is None:
            ok = False
            console.say(f"  MISSING    s3://{res.input_bucket}/{key}: no job was created in {timeout:g}s")
            continue
        ok &= _report(console, s3, res, job)
    for failure in failures:
        console.say(f"  ERROR      {failure}")
    ok &= not failures
    done = sum(1 for job in jobs.values() if job.state is JobState.SUCCEEDED)
    console.say(f"\nsummary: {done}/{len(keys)} succeeded" + ("" if ok else " — see errors above"))
    return exitcodes.OK if ok else exitcodes.FAILURE


def _report(console: _Console, s3: Any, res: Resources, job: Job) -> bool:
    if job.state is not JobState.SUCCEEDED:
        state = job.state.value.upper()
        console.say(f"  {state:<10} s3://{job.bucket}/{job.key} (job {job.id}): {job.error}")
        return False
    manifest_key = f"{job.result_prefix}_manifest.json"
    manifest = json.loads(s3.get_object(Bucket=res.output_bucket, Key=manifest_key)["Body"].read())
    console.say(f"  SUCCEEDED  s3://{job.bucket}/{job.key} (job {job.id}, attempt {job.attempts})")
    for output in manifest["outputs"]:
        console.say(f"             -> s3://{res.output_bucket}/{output['key']} ({output['size']} bytes)")
    console.say(f"             -> s3://{res.output_bucket}/{manifest_key}")
    return True


def _watch(console: _Console, ledger: Ledger, res: Resources, stop: threading.Event) -> None:
    """Print each job as it finishes until Ctrl-C / SIGTERM."""
    console.say("waiting for uploads; Ctrl-C to stop")
    seen: dict[str, str] = {}
    while not stop.wait(0.5):
        for job in ledger.list_jobs():
            if job.state in TERMINAL and seen.get(job.id) != job.state.value:
                seen[job.id] = job.state.value
                where = (f"s3://{res.output_bucket}/{job.result_prefix}" if job.result_prefix
                         else job.error or "")
                console.say(f"job     {job.id} {job.state.value}: s3://{job.bucket}/{job.key} -> {where}")
