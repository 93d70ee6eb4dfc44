"""Daemon memory while it processes one large object, against a bare boto3 floor.

Runs everything on loopback: a moto server in its own process (so the
emulator's memory is not counted), the real daemon (`processor run`) and
processorctl. The processing command is `cp`, so the daemon downloads SIZE
bytes, verifies them, and uploads SIZE bytes back.

Measured, in the same run:
  floor   - peak RSS growth of a bare Python process doing boto3's
            download_file + upload_file of the same object with the daemon's
            TransferConfig (what the transfer itself costs);
  daemon  - peak RSS growth of the daemon over its idle peak (VmHWM).

Usage: python bench/transfer_memory.py [--size-mib 1024] [--results bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
from botocore.config import Config

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
       "AWS_DEFAULT_REGION": "us-east-1"}
MIB = 1024 * 1024

FLOOR = """
import boto3, os, sys
from botocore.config import Config
from worker.s3 import TRANSFER_CONFIG
c = boto3.client("s3", endpoint_url=sys.argv[1], config=Config(s3={"addressing_style": "path"}))
c.download_file("bench-in", "big.bin", sys.argv[2], Config=TRANSFER_CONFIG)
c.upload_file(sys.argv[2], "bench-out", "floor/big.bin", Config=TRANSFER_CONFIG)
print(open("/proc/self/status").read())
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def wait_http(url: str, timeout: float = 30) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args()
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp_name:
        tmp = Path(tmp_name)
        moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        daemon = None
        try:
            wait_http(endpoint + "/moto-api/")
            s3 = boto3.client("s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}),
                              region_name="us-east-1", aws_access_key_id="bench",
                              aws_secret_access_key="bench")
            s3.create_bucket(Bucket="bench-in")
            s3.create_bucket(Bucket="bench-out")
            source = tmp / "source.bin"
            with source.open("wb") as fh:
                block = os.urandom(MIB)
                for i in range(args.size_mib):
                    fh.write(block[i % 7:] + block[: i % 7])
            s3.upload_file(str(source), "bench-in", "big.bin")
            etag = s3.head_object(Bucket="bench-in", Key="big.bin")["ETag"]

            # Floor: the same transfers in a bare process.
            floor = subprocess.run([sys.executable, "-c", FLOOR, endpoint, str(tmp / "floor.bin")],
                                   env=ENV, capture_output=True, text=True, check=True)
            floor_hwm = int(next(line.split()[1] for line in floor.stdout.splitlines()
                                 if line.startswith("VmHWM:")))
            idle_floor = subprocess.run(
                [sys.executable, "-c", "import boto3, worker.s3; print(open('/proc/self/status').read())"],
                env=ENV, capture_output=True, text=True, check=True)
            idle_floor_hwm = int(next(line.split()[1] for line in idle_floor.stdout.splitlines()
                                      if line.startswith("VmHWM:")))
            (tmp / "floor.bin").unlink()

            config = tmp / "processor.toml"
            config.write_text(
                f'[s3]\noutput_bucket = "bench-out"\nendpoint_url = "{endpoint}"\n'
                f'[processing]\ncommand = ["/bin/cp", "{{input}}", "{{output_dir}}"]\n'
                f'[paths]\nstate_dir = "{tmp}/state"\nsocket = "{tmp}/p.sock"\nmin_free_mb = 16\n'
                '[logging]\njournald = false\n')
            daemon = subprocess.Popen([str(BIN / "processor"), "run", "--config", str(config)], env=ENV,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while not (tmp / "p.sock").exists():
                time.sleep(0.05)
            time.sleep(0.5)
            idle_hwm = status_kib(daemon.pid, "VmHWM")
            started = time.monotonic()
            job_id = subprocess.run([str(BIN / "processorctl"), "--config", str(config), "submit",
                                     "--bucket", "bench-in", "--key=big.bin", f"--etag={etag}"],
                                    env=ENV, capture_output=True, text=True, check=True).stdout.strip()
            while True:
                shown = json.loads(subprocess.run(
                    [str(BIN / "processorctl"), "--config", str(config), "show", job_id, "--json"],
                    env=ENV, capture_output=True, text=True, check=True).stdout)
                if shown["state"] in ("succeeded", "failed"):
                    break
                time.sleep(0.2)
            elapsed = time.monotonic() - started
            peak_hwm = status_kib(daemon.pid, "VmHWM")
            if shown["state"] != "succeeded":
                print(f"job failed: {shown['error']}", file=sys.stderr)
                return 1
        finally:
            for proc in (daemon, moto):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
                    proc.wait(timeout=60)

    floor_delta = (floor_hwm - idle_floor_hwm) / 1024
    daemon_delta = (peak_hwm - idle_hwm) / 1024
    lines = [
        f"### transfer_memory — {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}Z, {args.size_mib} MiB object",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| object size | {args.size_mib} MiB (downloaded, verified, copied, uploaded) |",
        f"| floor: bare boto3 download+upload, peak RSS growth | {floor_delta:.1f} MiB |",
        f"| daemon: idle peak RSS | {idle_hwm / 1024:.1f} MiB |",
        f"| daemon: peak RSS during the job | {peak_hwm / 1024:.1f} MiB |",
        f"| daemon: peak RSS growth | {daemon_delta:.1f} MiB |",
        f"| daemon growth / floor growth | {daemon_delta / floor_delta:.2f} |" if floor_delta > 0 else
        "| daemon growth / floor growth | n/a |",
        f"| job wall time (submit to succeeded) | {elapsed:.1f} s "
        f"({2 * args.size_mib / elapsed:.0f} MiB/s moved) |",
        "",
    ]
    report = "\n".join(lines)
    print(report)
    if args.results:
        with args.results.open("a") as fh:
            fh.write(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
