"""The real daemon (`processor run`) and processorctl as child processes, with their config files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.emulator import CREDENTIALS
from tests.support.waiting import cpu_seconds, wait_until
from worker.config.settings import load_settings
from worker.ctl.control_client import request
from worker.errors import ControlError
from worker.runner.process import reap_orphans

#: The bundled summariser, as the processing command of test daemons.
DEFAULT_COMMAND = [sys.executable, "-m", "worker.examples.summarize", "{input}", "{output_dir}"]


def write_config(
    directory: Path, *, output_bucket: str = "out", endpoint: str = "", command: list[str] | None = None,
    **processing: Any,
) -> Path:
    """A processor.toml whose state lives under ``directory``."""
    state = directory / "state"
    lines = [
        "[s3]", f"output_bucket = {json.dumps(output_bucket)}", f"endpoint_url = {json.dumps(endpoint)}",
        "[processing]",
        f"command = {json.dumps(command or DEFAULT_COMMAND)}",
        *(f"{k} = {json.dumps(v)}" for k, v in processing.items()),
        "[paths]", f"state_dir = {json.dumps(str(state))}",
        f"socket = {json.dumps(str(directory / 'p.sock'))}",
        "[logging]", "journald = false",
    ]
    path = directory / "processor.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def processorctl(config: Path, *args: str, env: dict[str, str] | None = None,
                 timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run the real processorctl console script."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "processorctl"), "--config", str(config), *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )


def submit(config: Path, bucket: str, key: str, etag: str | None = None) -> str:
    """``processorctl submit`` of s3://bucket/key, as the SSM agent runs it (exit 0 asserted); the job id."""
    done = processorctl(config, "submit", "--bucket", bucket, f"--key={key}",
                        *([f"--etag={etag}"] if etag is not None else []))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def upload_and_submit(s3: Any, config: Path, bucket: str, key: str, body: bytes) -> str:
    """Upload ``body`` as s3://bucket/key and submit it with its ETag, as its S3 event would; the job id."""
    etag = s3.put_object(Bucket=bucket, Key=key, Body=body)["ETag"]
    return submit(config, bucket, key, etag)


@contextmanager
def daemon(
    config: Path, socket: Path, stall_s: float = 60, preexec_fn: Callable[[], None] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start `processor run` (``preexec_fn`` runs in the child before exec: limits, say); always
    stopped (SIGKILL as a last resort) when the block ends."""
    # stderr to a file: a pipe nobody reads fills after ~64 KiB of log lines and
    # then blocks the daemon's next log write.
    err = (config.parent / "daemon.stderr").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "run", "--config", str(config)],
        env={**os.environ, **CREDENTIALS}, stdout=subprocess.DEVNULL, stderr=err, preexec_fn=preexec_fn,
    )

    def answers() -> bool:
        assert proc.poll() is None, (config.parent / "daemon.stderr").read_text()[-3000:]
        try:
            request(socket, "ping", timeout=1)
            return True
        except ControlError:
            return False

    try:
        # Start-up is silent; while it burns CPU (imports on a loaded machine) it is not stuck.
        wait_until(answers, stall_s=stall_s, progress=lambda: cpu_seconds(proc.pid),
                   describe="daemon did not answer on its socket")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        err.close()
        # A daemon killed with jobs running leaves their commands (own sessions) behind:
        # stop them too, as every process a test starts is stopped by it.
        reap_orphans(load_settings(config, environ={}).paths.work)


def log_events(config: Path, event: str | None = None) -> list[dict[str, Any]]:
    """The daemon's log file (state/logs/processor.jsonl beside ``config``), one dict a line;
    only the ``event`` lines if given; none while there is no file yet."""
    path = config.parent / "state" / "logs" / "processor.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in map(json.loads, lines) if event is None or e.get("event") == event]


def wait_state(config: Path, job_id: str, states: set[str], stall_s: float = 60) -> dict[str, Any]:
    """The job once it is in one of ``states``; fails when its state and phase stop moving."""
    seen: dict[str, Any] = {}

    def reached() -> dict[str, Any] | None:
        shown = processorctl(config, "show", job_id, "--json")
        assert shown.returncode == 0, shown.stderr
        seen.update(json.loads(shown.stdout))
        return dict(seen) if seen["state"] in states else None

    def moving() -> object:
        return (seen.get("state"), seen.get("attempts"), json.dumps(seen.get("progress"), sort_keys=True))

    return wait_until(reached, stall_s=stall_s, progress=moving, interval=0.1,
                      describe=lambda: f"job stayed {seen.get('state')}")
