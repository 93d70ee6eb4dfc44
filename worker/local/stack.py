"""Wire the local stack together and run it: `processor local [--once] [--instances N]`.

Order of start: emulator -> resources -> daemon (a real `processor run`
subprocess) -> local SSM agent -> event pump. Order of stop is the reverse;
the daemon gets SIGTERM and drains like under systemd.

One instance is the seed's flow: the Lambda sends SendCommand of the submit
document to it. A fleet (N > 1) is what the stack builds on AWS: the Lambda
gets QUEUE_URL and sends one message per upload to the shared SQS work
queue that every daemon pulls from (config ``[queue]``); each instance keeps
its SSM agent for the operator documents.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from worker import exitcodes
from worker.ctl.render import printable
from worker.errors import ConfigError, LedgerError
from worker.jobs.job import Job
from worker.jobs.states import TERMINAL, JobState
from worker.local import statedir
from worker.local.agent import CommandResult, parse_content
from worker.local.emulator import STACK_NAME, Emulator, Resources, provision
from worker.local.interrupts import Interrupts, installed, leftover
from worker.local.node import Node, start_node
from worker.local.pump import EventPump, Invocation
from worker.local.ssmfront import SsmFront
from worker.local.statedir import StateDirInUse
from worker.state.ledger import Ledger

#: Where the sample inputs are uploaded in the input bucket.
SAMPLE_PREFIX = "incoming/"

#: Most instances `processor local --instances` runs (each is a daemon and an agent).
MAX_INSTANCES = 8


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
        if not 1 <= args.instances <= MAX_INSTANCES:
            raise ConfigError(f"--instances must be 1 to {MAX_INSTANCES}, got {args.instances}",
                              key="--instances")
        # Lock, then port, then reset: a second stack leaves the first one's state alone.
        state_dir, lock = statedir.claim(Path(args.state_dir), args.port)
    except ConfigError as exc:
        print(f"processor local: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    except StateDirInUse as exc:
        print(f"processor local: {exc}", file=sys.stderr)
        return exitcodes.STATE_DIR_LOCKED
    except OSError as exc:
        print(f"processor local: cannot use --state-dir {args.state_dir}: {exc}", file=sys.stderr)
        return exitcodes.FAILURE
    interrupts = Interrupts()
    ledger_paths: list[Path] = []
    with lock, installed(interrupts):
        status = _run(args, console, command, state_dir, interrupts, ledger_paths)
        if status is not None:
            return status
        if interrupts.forced:
            console.say("stopped at once (second stop signal): running jobs were interrupted")
        left = leftover(job for path in ledger_paths for job in _jobs_at(path))
        console.say(f"stopped; {left}" if left else "stopped; every job had finished")
        return interrupts.exit_code or exitcodes.OK


def _run(
    args: argparse.Namespace, console: _Console, command: list[str], state_dir: Path,
    interrupts: Interrupts, ledger_paths: list[Path],
) -> int | None:
    """Start the stack and run it; an exit status, or None once the interactive mode stopped."""
    stop = interrupts.stop
    with ExitStack() as stack:
        try:
            emulator = Emulator(args.port)
        except ConfigError as exc:
            print(f"processor local: {exc}", file=sys.stderr)
            return exitcodes.USAGE
        stack.callback(emulator.stop)
        res = provision(emulator, input_bucket=args.input_bucket,
                        output_bucket=args.output_bucket, instances=args.instances)
        ssm = emulator.client("ssm")
        front = SsmFront(res.endpoint, lambda name, version: _document(ssm, name, version))
        front.start()
        stack.callback(front.stop)
        failures: list[str] = []
        nodes = []
        for n, instance in enumerate(res.instance_ids, start=1):
            try:
                node = start_node(
                    stack, emulator, res, front, instance_id=instance,
                    state_dir=state_dir if len(res.instance_ids) == 1 else state_dir / f"node-{n}",
                    command=command, on_result=lambda r: _on_command(console, failures, r),
                    on_daemon=interrupts.daemons.append,
                )
            except ConfigError as exc:
                # The config written for the daemon does not load: say which key.
                print(f"processor local: {exc}", file=sys.stderr)
                return exitcodes.FAILURE
            if node is None:
                return exitcodes.FAILURE
            nodes.append(node)
            ledger_paths.append(node.ledger_path)
        # The Lambda reads its configuration from the environment, as on AWS; its SSM
        # calls go through the front, which behaves like the service where moto does not.
        for name in ("TARGET_INSTANCE_ID", "DOCUMENT_NAME", "QUEUE_URL"):
            os.environ.pop(name, None)
        os.environ.update({**emulator.env(), "AWS_ENDPOINT_URL_SSM": front.endpoint,
                           **lambda_environment(res)})
        pump = EventPump(emulator.client("sqs"), res.queue_url,
                         on_invocation=lambda i: _on_invocation(
                             console, failures, i,
                             "message(s)" if res.work_queue_url else "command(s)"))
        pump.start()
        stack.callback(pump.stop)
        _banner(console, res, state_dir, nodes, front.endpoint)
        ledgers = [stack.enter_context(Ledger(node.ledger_path)) for node in nodes]
        if args.once:
            return _once(console, emulator, res, ledgers, failures, interrupts, args.timeout)
        _watch(console, ledgers, res, stop)
        console.say("stopping: draining the daemon(s)… (Ctrl-C again to stop at once)")
    return None


def _jobs_at(path: Path) -> list[Job]:
    try:
        with Ledger(path) as ledger:
            return ledger.list_jobs()
    except (OSError, LedgerError):
        return []


def lambda_environment(res: Resources) -> dict[str, str]:
    """The trigger's target, as the stack sets it: one instance by id, a fleet by its queue."""
    if res.work_queue_url:
        return {"QUEUE_URL": res.work_queue_url}
    return {"DOCUMENT_NAME": res.submit_document, "TARGET_INSTANCE_ID": res.instance_ids[0]}


def _document(ssm: Any, name: str, version: str | None) -> dict[str, Any]:
    args = {"Name": name, **({"DocumentVersion": version} if version else {})}
    return parse_content(ssm.get_document(**args))


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


def _banner(console: _Console, res: Resources, state_dir: Path, nodes: list[Node], ssm: str) -> None:
    instances = ", ".join(node.instance_id for node in nodes)
    documents = ",".join(name.removeprefix(f"{STACK_NAME}-") for name in res.documents) or "-"
    env_file = _write_env(state_dir, res, nodes, ssm)
    console.say("\n".join([
        "processor local is ready",
        f"  S3, SQS endpoint   {res.endpoint}  (credentials: testing/testing, region us-east-1)",
        f"  SSM endpoint       {ssm}  (Run Command: send-command, get-command-invocation)",
        f"  input bucket       s3://{res.input_bucket}",
        f"  output bucket      s3://{res.output_bucket}",
        f"  instance(s)        {instances}; SSM document {res.submit_document}",
        f"  operator documents {STACK_NAME}-{{{documents}}}",
        *([f"  work queue         {res.work_queue_url}  (every daemon pulls from it)",
           f"  dead-letter queue  {res.work_dead_letter_queue_url}"] if res.work_queue_url else []),
        f"  state dir          {state_dir}  (config: "
        + ", ".join(str(node.config.relative_to(state_dir)) for node in nodes) + ")",
        f"  your shell         . {env_file}   (then the aws CLI and processorctl use this stack; "
        "README, \"Rehearse operations locally\")",
        f"  upload more with   AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing "
        f"aws --endpoint-url {res.endpoint} s3 cp FILE s3://{res.input_bucket}/KEY",
    ]))


def _write_env(state_dir: Path, res: Resources, nodes: list[Node], ssm: str) -> Path:
    """``env.sh``: what a shell needs to reach this stack with the aws CLI and processorctl."""
    from worker.local.emulator import CREDENTIALS, REGION

    path = state_dir / "env.sh"
    lines = [
        "# Written by `processor local`: source it (. env.sh) to point the aws CLI, boto3 and",
        "# processorctl at this stack (its emulator, its SSM front and its first instance).",
        *(f"export {name}={shlex.quote(value)}" for name, value in CREDENTIALS.items()),
        f"export AWS_DEFAULT_REGION={REGION} AWS_REGION={REGION}",
        f"export AWS_ENDPOINT_URL={shlex.quote(res.endpoint)}",
        f"export AWS_ENDPOINT_URL_SSM={shlex.quote(ssm)}",
        f"export PROCESSOR_CONFIG={shlex.quote(str(nodes[0].config))}",
        f"export INPUT={shlex.quote(res.input_bucket)} OUTPUT={shlex.quote(res.output_bucket)} "
        f"INSTANCE={shlex.quote(nodes[0].instance_id)} STACK={STACK_NAME}",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# -- running ----------------------------------------------------------------------


def _on_command(console: _Console, failures: list[str], result: CommandResult) -> None:
    if result.status == "Success":
        console.say(f"ssm     {result.command_id[:8]} ran {result.document_name}: "
                    f"{result.stdout.strip()[:80]}")
    else:
        # Like the Run Command console: the step's error and what the script said.
        reason = "; ".join(part for part in (result.error, result.stderr.strip()) if part)
        failures.append(f"SSM command {result.command_id}: {result.status}: {reason}")
        console.say(f"ssm     {result.command_id[:8]} {result.status}: {printable(reason, 500)}")


def _on_invocation(
    console: _Console, failures: list[str], invocation: Invocation, what: str = "command(s)"
) -> None:
    if invocation.ok:
        result = invocation.result if isinstance(invocation.result, dict) else {}
        console.say(f"lambda  {invocation.request_id[:8]} sent {result.get('sent', 0)} {what}")
    else:
        failures.append(f"Lambda invocation {invocation.request_id}: {invocation.error}")
        console.say(f"lambda  {invocation.request_id[:8]} failed: {invocation.error}")


def _sample_files() -> list[tuple[str, bytes]]:
    samples = resources.files("worker.local") / "samples"
    return sorted(
        (SAMPLE_PREFIX + entry.name, entry.read_bytes())
        for entry in samples.iterdir() if entry.is_file()
    )


def _all_jobs(ledgers: list[Ledger]) -> list[Job]:
    return [job for ledger in ledgers for job in ledger.list_jobs()]


def _once(
    console: _Console, emulator: Emulator, res: Resources, ledgers: list[Ledger],
    failures: list[str], interrupts: Interrupts, timeout: float,
) -> int:
    s3 = emulator.client("s3")
    stop = interrupts.stop
    samples = _sample_files()
    for key, body in samples:
        s3.put_object(Bucket=res.input_bucket, Key=key, Body=body)
        console.say(f"upload  s3://{res.input_bucket}/{key} ({len(body)} bytes)")
    keys = {key for key, _ in samples}
    deadline = time.monotonic() + timeout
    jobs: dict[str, Job] = {}
    while time.monotonic() < deadline and not stop.is_set():
        jobs = {job.key: job for job in _all_jobs(ledgers) if job.key in keys}
        if len(jobs) == len(keys) and all(job.state in TERMINAL for job in jobs.values()):
            break
        if failures and len(jobs) + len(failures) >= len(keys) and all(
            job.state in TERMINAL for job in jobs.values()
        ):
            break
        stop.wait(0.2)
    interrupted = stop.is_set()
    if interrupted:
        jobs = {job.key: job for job in _all_jobs(ledgers) if job.key in keys}
    console.say("")
    console.say("results" + (" (interrupted)" if interrupted else ""))
    ok = True
    for key, _ in samples:
        job = jobs.get(key)
        if interrupted and (job is None or job.state not in TERMINAL):
            ok = False
            what = "no job yet" if job is None else f"job {job.id} was {job.state.value}"
            console.say(f"  INTERRUPTED s3://{res.input_bucket}/{key}: {what}")
            continue
        if job is None:
            ok = False
            console.say(f"  MISSING    s3://{res.input_bucket}/{key}: no job was created in {timeout:g}s")
            continue
        ok &= _report(console, s3, res, job)
    for failure in failures:
        console.say(f"  ERROR      {failure}")
    ok &= not failures
    done = sum(1 for job in jobs.values() if job.state is JobState.SUCCEEDED)
    if interrupted:
        console.say(f"\nsummary: interrupted; {done}/{len(keys)} succeeded before the stop signal")
        return interrupts.exit_code or exitcodes.FAILURE
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


def _watch(console: _Console, ledgers: list[Ledger], res: Resources, stop: threading.Event) -> None:
    """Print each job as it finishes until Ctrl-C / SIGTERM."""
    console.say("waiting for uploads; Ctrl-C to stop")
    seen: dict[str, str] = {}
    while not stop.wait(0.5):
        for job in _all_jobs(ledgers):
            if job.state in TERMINAL and seen.get(job.id) != job.state.value:
                seen[job.id] = job.state.value
                where = (f"s3://{res.output_bucket}/{job.result_prefix}" if job.result_prefix
                         else job.error or "")
                console.say(f"job     {job.id} {job.state.value}: s3://{job.bucket}/{job.key} -> {where}")
