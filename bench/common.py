"""What every benchmark shares: the emulator, the real daemon, processorctl, statistics.

Everything runs on loopback as separate processes, as in production: a moto
server (its own process, so its CPU and memory are not the daemon's), the
daemon as ``processor run`` and ``processorctl`` as a fresh interpreter.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PYTHON = sys.executable
#: The environment of every process we start: fake credentials, no real AWS.
ENV = {
    **os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
}
for _name in list(ENV):
    if _name.startswith("PROCESSOR_"):
        del ENV[_name]  # the bench writes its own config; nothing may override it
# The bench's own clients (setup, the floors) use the same fake credentials.
os.environ.update({k: v for k, v in ENV.items() if k.startswith("AWS_")})
KIB = 1024
MIB = 1024 * KIB
INPUT_BUCKET = "bench-in"
OUTPUT_BUCKET = "bench-out"


def byte_compile() -> None:
    """Byte-compile the project's packages, as installing the wheel on an instance does.

    The instance runs processorctl from a pip-installed wheel (pip writes the
    ``.pyc`` files); a source checkout in an environment with
    ``PYTHONDONTWRITEBYTECODE=1`` (this sandbox sets it) would otherwise compile
    every imported module from source on each run and measure that instead.
    """
    import compileall

    for package in ("worker", "lambda_trigger", "processor_shared"):
        compileall.compile_dir(REPO / package, quiet=1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """A moto server on a free loopback port, in its own process; yields the endpoint."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([PYTHON, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def up() -> bool:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
        except OSError:
            return False
        return True

    try:
        wait_for(up, 60, "the moto server", 0.1)
        yield endpoint
    finally:
        stop_process(proc)


def s3_client(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 5}),
    )


def create_buckets(endpoint: str) -> Any:
    client = s3_client(endpoint)
    for bucket in (INPUT_BUCKET, OUTPUT_BUCKET):
        client.create_bucket(Bucket=bucket)
    return client


def put_small_objects(client: Any, count: int, size: int, prefix: str = "obj/") -> list[tuple[str, str]]:
    """``count`` distinct objects of ``size`` bytes; returns (key, etag) pairs."""
    objects = []
    base = os.urandom(size)
    for i in range(count):
        key = f"{prefix}{i:05d}.bin"
        body = i.to_bytes(4, "big") + base[4:]
        etag = client.put_object(Bucket=INPUT_BUCKET, Key=key, Body=body)["ETag"].strip('"')
        objects.append((key, etag))
    return objects


def write_config(
    directory: Path, endpoint: str, command: Sequence[str], *, concurrency: int = 2,
    output_prefix: str = "", min_free_mb: int = 16,
) -> Path:
    """A daemon config whose state and socket live under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "processor.toml"
    config.write_text(
        f'[s3]\noutput_bucket = "{OUTPUT_BUCKET}"\noutput_prefix = "{output_prefix}"\n'
        f'endpoint_url = "{endpoint}"\n'
        f"[processing]\ncommand = {json.dumps(list(command))}\nconcurrency = {concurrency}\n"
        f'[paths]\nstate_dir = "{directory}/state"\nsocket = "{directory}/p.sock"\n'
        f"min_free_mb = {min_free_mb}\n"
        '[logging]\njournald = false\n'
    )
    return config


def ledger_path(config: Path) -> Path:
    return config.parent / "state" / "ledger" / "ledger.db"


class Daemon:
    """``processor run`` as a subprocess; optionally under a profiler (argv prefix)."""

    def __init__(self, config: Path, *, prefix: Sequence[str] = ()) -> None:
        self.config = config
        self.socket = config.parent / "p.sock"
        argv = [*prefix, "-m", "worker", "run", "--config", str(config)] if prefix else \
            [str(BIN / "processor"), "run", "--config", str(config)]
        # stderr to a file, never a pipe nobody reads: a full pipe would stall the daemon.
        self.stderr_path = config.parent / "daemon.stderr"
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=stderr,
                                         start_new_session=True)
        try:
            wait_for(lambda: self.socket.exists() or self.proc.poll() is not None, 60, "the daemon socket")
        except TimeoutError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise RuntimeError(f"daemon exited: {self.stderr_path.read_text()[-2000:]}")

    def stop(self) -> int:
        return stop_process(self.proc, timeout=120)

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_process(proc: subprocess.Popen[Any], timeout: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return int(proc.returncode)


def ctl(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "processorctl"), "--config", str(config), *args],
                          env=ENV, capture_output=True, text=True, check=True)


def read_ledger(config: Path, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
    """A read-only query on the daemon's ledger (WAL: never blocks the daemon)."""
    db = sqlite3.connect(f"file:{ledger_path(config)}?mode=ro", uri=True, timeout=30)
    try:
        db.row_factory = sqlite3.Row
        return list(db.execute(sql, params))
    finally:
        db.close()


def finished_count(config: Path) -> int:
    rows = read_ledger(config, "SELECT COUNT(*) AS n FROM jobs WHERE state IN "
                               "('succeeded', 'failed', 'cancelled')")
    return int(rows[0]["n"])


# -- statistics ---------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): a value that was actually observed."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


@dataclass(frozen=True)
class Figure:
    """One line of the results table: a measure, its value, the goal, and whether it is met."""

    measure: str
    value: str
    goal: str = ""
    met: bool | None = None

    def row(self) -> str:
        verdict = {True: "met", False: "**not met**", None: ""}[self.met]
        return f"| {self.measure} | {self.value} | {self.goal} | {verdict} |"


def nproc() -> str:
    return subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()


def machine() -> str:
    return (f"{nproc()} cores (`nproc`), {_mem_gib():.0f} GiB RAM, Python {sys.version.split()[0]}, "
            "loopback only")


def _mem_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / MIB
    return 0.0


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)
