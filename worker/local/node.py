"""One instance of the local fleet: its config, its daemon (`processor run`) and its SSM agent."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.config.settings import load_settings
from worker.ctl.control_client import request
from worker.errors import ControlError
from worker.local.agent import CommandResult, LocalSsmAgent
from worker.local.emulator import Emulator, Resources
from worker.local.ssmfront import SsmFront

#: How long a daemon may take to answer on its socket after start.
DAEMON_START_TIMEOUT_S = 30.0

#: A local fleet daemon's lease and long poll on the work queue: shorter than
#: the AWS defaults (300 s, 20 s) so a stopped daemon's messages come back,
#: and a daemon stops, within seconds while you watch.
QUEUE_VISIBILITY_S = 30
QUEUE_WAIT_S = 5

#: `processorctl reconcile`'s default age locally: events arrive within seconds here.
RECONCILE_OLDER_THAN_S = 10


@dataclass
class Node:
    instance_id: str
    state_dir: Path
    config: Path
    ledger_path: Path
    agent: LocalSsmAgent


def start_node(
    stack: ExitStack, emulator: Emulator, res: Resources, front: SsmFront, *, instance_id: str,
    state_dir: Path, command: list[str], on_result: Callable[[CommandResult], None],
    on_daemon: Callable[[subprocess.Popen[bytes]], None] | None = None,
) -> Node | None:
    """Start the daemon and the agent of one instance; both stop when ``stack`` closes.

    ``on_daemon`` is handed the daemon's process as soon as it is started (a
    second Ctrl-C signals it: worker.local.interrupts).
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    config = write_config(state_dir, res, command, holder=instance_id)
    settings = load_settings(config, environ={})
    env = {**os.environ, **emulator.env(), "PROCESSOR_CONFIG": str(config),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    if stack.enter_context(daemon(config, env, state_dir, settings.paths.socket, on_daemon)) is None:
        return None
    inbox: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
    agent_env = {**env, "PATH": f"{systemctl_shim(state_dir)}{os.pathsep}{env['PATH']}"}
    agent = LocalSsmAgent(emulator.client("ssm"), instance_id, env=agent_env,
                          work_dir=state_dir / "ssm-agent", on_result=on_result, inbox=inbox)
    front.register(instance_id, inbox, lambda: agent.online, agent.result)
    agent.start()
    stack.callback(agent.stop, 10.0)
    return Node(instance_id, state_dir, config, settings.paths.ledger, agent)


def systemctl_shim(state_dir: Path) -> Path:
    """A directory whose ``systemctl`` is worker.local.systemctl for this instance (the DrainDocument's)."""
    directory = state_dir / "ssm-agent" / "bin"
    directory.mkdir(parents=True, exist_ok=True)
    shim = directory / "systemctl"
    shim.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m worker.local.systemctl "
                    f"{shlex.quote(str(state_dir))} \"$@\"\n")
    shim.chmod(0o755)
    return directory


def socket_path(state_dir: Path) -> Path:
    candidate = state_dir / "processor.sock"
    if len(str(candidate).encode()) <= 100:
        return candidate
    # Unix socket paths are limited to 107 bytes; fall back to a short private dir.
    digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:12]
    short = Path(tempfile.gettempdir()) / f"processor-{digest}"
    short.mkdir(mode=0o700, exist_ok=True)
    return short / "processor.sock"


def write_config(state_dir: Path, res: Resources, command: list[str], holder: str = "") -> Path:
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
        f"socket = {json.dumps(str(socket_path(state_dir)))}",
        "[logging]",
        'level = "info"',
        "journald = false",
        # `processorctl reconcile` (and the ReconcileDocument) list this bucket; objects
        # older than a few seconds, since events here take well under that.
        "[reconcile]",
        f"input_bucket = {json.dumps(res.input_bucket)}",
        f"older_than_s = {RECONCILE_OLDER_THAN_S}",
        *_queue_section(res, holder),
        "",
    ])
    config.write_text(text, encoding="utf-8")
    return config


def _queue_section(res: Resources, holder: str) -> list[str]:
    """A fleet daemon pulls from the shared work queue; one instance has no [queue] (SSM flow)."""
    if not res.work_queue_url:
        return []
    return [
        "[queue]",
        f"url = {json.dumps(res.work_queue_url)}",
        f"endpoint_url = {json.dumps(res.endpoint)}",
        f"visibility_s = {QUEUE_VISIBILITY_S}",
        f"wait_s = {QUEUE_WAIT_S}",
        # Only messages about the input bucket are jobs; others go to the DLQ.
        f"input_bucket = {json.dumps(res.input_bucket)}",
        # The fleet's job record (claims, counted attempts, `processorctl fleet`).
        f"table = {json.dumps(res.job_table)}",
        f"dead_letter_url = {json.dumps(res.work_dead_letter_queue_url)}",
        f"holder = {json.dumps(holder)}",
    ]


@contextmanager
def daemon(
    config: Path, env: dict[str, str], state_dir: Path, socket: Path,
    on_start: Callable[[subprocess.Popen[bytes]], None] | None = None,
) -> Iterator[subprocess.Popen[bytes] | None]:
    """Run `processor run` as a child, as systemd would; SIGTERM and wait on exit.

    In its own process group: a terminal's Ctrl-C goes to `processor local`
    only, which then stops the daemon like systemd (one SIGTERM: a drain).
    """
    log_path = state_dir / "daemon.stderr"
    with log_path.open("ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--config", str(config)],
            env=env, stdin=subprocess.DEVNULL, stdout=err, stderr=err, process_group=0,
        )
    if on_start is not None:
        on_start(proc)
    deadline = time.monotonic() + DAEMON_START_TIMEOUT_S
    ready = False
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            request(socket, "ping", timeout=1.0)
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
