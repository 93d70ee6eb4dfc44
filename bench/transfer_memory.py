"""One large object through the daemon, against a bare boto3 floor: throughput and memory.

Runs everything on loopback: a moto server in its own process (so the
emulator's memory is not counted), the real daemon (`processor run`) and
processorctl. The processing command is `cp` on both sides.

Measured, in the same run:
  floor   - a bare Python process doing boto3 download_file -> cp -> upload_file
            of the same object with the daemon's TransferConfig: its wall time
            and its peak RSS growth over an idle `import boto3, worker.storage.s3`;
  daemon  - the job's wall time in the ledger (claim to succeeded: HEAD,
            download, verify, cp, hash, upload, manifest) and the daemon's
            peak RSS (VmHWM) during the job, and its growth over its idle peak.

Both are repeated for several rounds (a fresh daemon each, which side goes
first alternating): throughput is the median of the rounds' ratios, peak RSS
the highest of the rounds.

Usage: python -m bench.transfer_memory [--size-mib 1024] [--rounds 3] [--record]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    BIN,
    ENV,
    INPUT_BUCKET,
    MIB,
    OUTPUT_BUCKET,
    PYTHON,
    Daemon,
    create_buckets,
    moto_server,
    read_ledger,
    status_kib,
    wait_for,
    write_config,
)

FLOOR = """
import json, subprocess, sys, time
import boto3
from botocore.config import Config
from worker.storage.s3 import TRANSFER_CONFIG
c = boto3.client("s3", endpoint_url=sys.argv[1], config=Config(s3={"addressing_style": "path"}))
out = sys.argv[3]
started = time.monotonic()
c.download_file(sys.argv[4], "big.bin", sys.argv[2], Config=TRANSFER_CONFIG)
subprocess.run(["/bin/cp", sys.argv[2], out], check=True)
c.upload_file(out + "/" + sys.argv[2].rsplit("/", 1)[1], sys.argv[5], "floor/big.bin", Config=TRANSFER_CONFIG)
elapsed = time.monotonic() - started
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"elapsed_s": elapsed, "hwm_kib": hwm}))
"""

IDLE = ("import boto3, worker.storage.s3; print(next(int(l.split()[1]) for l in open('/proc/self/status') "
        "if l.startswith('VmHWM:')))")


@dataclass(frozen=True)
class Large:
    size_mib: int
    floor_s: float  # median over rounds
    daemon_s: float  # median over rounds
    floor_growth_mib: float
    daemon_idle_mib: float
    daemon_peak_mib: float  # highest over rounds
    #: floor time / daemon time of each round (back to back).
    ratios: tuple[float, ...] = ()

    @property
    def throughput_ratio(self) -> float:
        """Daemon throughput over the floor's (higher is better; 1.0 = as fast)."""
        return statistics.median(self.ratios) if self.ratios else self.floor_s / self.daemon_s

    @property
    def daemon_growth_mib(self) -> float:
        return self.daemon_peak_mib - self.daemon_idle_mib


def measure(size_mib: int, rounds: int = 3) -> Large:
    with moto_server() as endpoint, tempfile.TemporaryDirectory(prefix="bench-large-") as tmp_name:
        tmp = Path(tmp_name)
        s3 = create_buckets(endpoint)
        source = tmp / "source.bin"
        with source.open("wb") as fh:
            block = os.urandom(MIB)
            for i in range(size_mib):
                fh.write(block[i % 7:] + block[: i % 7])
        s3.upload_file(str(source), INPUT_BUCKET, "big.bin")
        source.unlink()
        etag = s3.head_object(Bucket=INPUT_BUCKET, Key="big.bin")["ETag"]
        idle_floor = int(subprocess.run([PYTHON, "-c", IDLE], env=ENV, capture_output=True, text=True,
                                        check=True).stdout)
        floors: list[dict[str, float]] = []
        daemons: list[tuple[float, float, float]] = []
        for round_ in range(rounds):
            steps = (_floor, _daemon) if round_ % 2 == 0 else (_daemon, _floor)
            for step in steps:
                if step is _floor:
                    floors.append(_floor(endpoint, tmp / f"floor-{round_}"))
                else:
                    daemons.append(_daemon(endpoint, tmp / f"daemon-{round_}", etag))
    return Large(
        size_mib,
        statistics.median(f["elapsed_s"] for f in floors),
        statistics.median(d[0] for d in daemons),
        (max(f["hwm_kib"] for f in floors) - idle_floor) / 1024,
        max(d[1] for d in daemons) / 1024,
        max(d[2] for d in daemons) / 1024,
        tuple(f["elapsed_s"] / d[0] for f, d in zip(floors, daemons, strict=True)),
    )


def _floor(endpoint: str, work: Path) -> dict[str, float]:
    (work / "out").mkdir(parents=True)
    floor: dict[str, float] = json.loads(subprocess.run(
        [PYTHON, "-c", FLOOR, endpoint, str(work / "floor.bin"), str(work / "out"),
         INPUT_BUCKET, OUTPUT_BUCKET],
        env=ENV, capture_output=True, text=True, check=True).stdout)
    for leftover in (work / "floor.bin", work / "out" / "floor.bin"):
        leftover.unlink()
    return floor


def _daemon(endpoint: str, work: Path, etag: str) -> tuple[float, float, float]:
    """(the job's seconds in the ledger, idle VmHWM KiB, VmHWM KiB after the job) of a fresh daemon."""
    config = write_config(work, endpoint, ("/bin/cp", "{input}", "{output_dir}"),
                          concurrency=1, output_prefix=f"{work.name}/")
    with Daemon(config) as daemon:
        time.sleep(0.5)
        idle_hwm = status_kib(daemon.proc.pid, "VmHWM")
        job_id = subprocess.run([str(BIN / "processorctl"), "--config", str(config), "submit",
                                 "--bucket", INPUT_BUCKET, "--key=big.bin", f"--etag={etag}"],
                                env=ENV, capture_output=True, text=True, check=True).stdout.strip()

        def done() -> bool:
            rows = read_ledger(config, "SELECT state FROM jobs WHERE id = ?", (job_id,))
            return rows[0]["state"] not in ("queued", "running")

        wait_for(done, 3600, "the large job", 0.2)
        peak_hwm = status_kib(daemon.proc.pid, "VmHWM")
    row = read_ledger(config, "SELECT state, error, started_at, finished_at FROM jobs WHERE id = ?",
                      (job_id,))[0]
    if row["state"] != "succeeded":
        raise RuntimeError(f"large job {row['state']}: {row['error']}")
    return row["finished_at"] - row["started_at"], idle_hwm, peak_hwm


def record(large: Large, path: Path, when: dt.datetime) -> None:
    """Keep a full-size run's figures (bench/large_object_record.json) for the suite's table."""
    path.write_text(json.dumps({**large.__dict__, "date": f"{when:%Y-%m-%d %H:%M}Z"}, indent=1) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--record", action="store_true",
                        help="write the figures to bench/large_object_record.json (make bench shows them)")
    args = parser.parse_args()
    when = dt.datetime.now(dt.UTC)
    r = measure(args.size_mib, args.rounds)
    if args.record:
        record(r, Path(__file__).resolve().parent / "large_object_record.json", when)
    moved = 2 * r.size_mib
    print(f"{r.size_mib} MiB: floor {r.floor_s:.1f} s ({moved / r.floor_s:.0f} MiB/s moved), "
          f"daemon {r.daemon_s:.1f} s ({moved / r.daemon_s:.0f} MiB/s), throughput ratio "
          f"{r.throughput_ratio:.2f} (rounds {', '.join(f'{x:.2f}' for x in r.ratios)}); "
          f"daemon peak RSS {r.daemon_peak_mib:.1f} MiB (idle "
          f"{r.daemon_idle_mib:.1f}, growth {r.daemon_growth_mib:.1f}); floor growth "
          f"{r.floor_growth_mib:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
