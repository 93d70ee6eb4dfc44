"""Burst throughput: N uploads through the whole local pipeline, in jobs per second.

``processor local --command "cp {input} {output_dir}"`` runs the real chain:
S3 -> the bucket notification (SQS in the emulator) -> the real Lambda -> the
local SSM agent running the real submit document -> ``processorctl submit`` ->
the daemon. N small objects are uploaded by 16 threads at once; the figure is
N divided by the time from the first upload to the ledger's last finished job
(a cheap command, so it measures the pipeline, not the processing).

tests/reliability/test_load.py checks the same burst for correctness (every
upload one succeeded job, bounded memory) and only fails when it stalls: how
fast it drains is this figure, not a pass/fail line.

Usage: python -m bench.burst [--events 1000]
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.common import BIN, ENV, free_port, s3_client, stop_process, wait_for

#: The bench gives up only when no job finishes for this long (it measures; it does not judge).
STALL_S = 120.0
INPUT = "processor-input"


@dataclass(frozen=True)
class Burst:
    events: int
    uploaded_s: float  # first upload -> last upload acknowledged
    drained_s: float  # first upload -> last job finished in the ledger
    succeeded: int

    @property
    def jobs_per_s(self) -> float:
        return self.events / self.drained_s


def _finished(ledger: Path) -> tuple[int, int]:
    """(finished, succeeded) jobs in the ledger; (0, 0) before it exists."""
    if not ledger.exists():
        return 0, 0
    db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=30)
    try:
        row = db.execute("SELECT SUM(state IN ('succeeded', 'failed', 'cancelled')), "
                         "SUM(state = 'succeeded') FROM jobs").fetchone()
    finally:
        db.close()
    return int(row[0] or 0), int(row[1] or 0)


def measure(events: int) -> Burst:
    with tempfile.TemporaryDirectory(prefix="bench-burst-") as tmp:
        state = Path(tmp) / "state"
        port = free_port()
        proc = subprocess.Popen(
            [str(BIN / "processor"), "local", "--port", str(port), "--state-dir", str(state),
             "--command", "cp {input} {output_dir}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp, env=ENV,
        )
        lines: list[str] = []

        def read() -> None:  # drain the pipe, or the stack blocks on a full one
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            wait_for(lambda: any("processor local is ready" in line for line in lines)
                     or proc.poll() is not None, 120, "processor local to be ready", interval=0.1)
            if proc.poll() is not None:
                raise RuntimeError("processor local exited:\n" + "".join(lines[-40:]))
            s3 = s3_client(f"http://127.0.0.1:{port}")
            ledger = state / "ledger" / "ledger.db"
            started = time.monotonic()
            with ThreadPoolExecutor(max_workers=16) as pool:
                list(pool.map(lambda n: s3.put_object(Bucket=INPUT, Key=f"burst/{n:05d}.txt",
                                                      Body=f"object {n}\n".encode()), range(events)))
            uploaded_s = time.monotonic() - started
            last, moved_at = -1, time.monotonic()
            while (done := _finished(ledger))[0] < events:
                if done[0] != last:
                    last, moved_at = done[0], time.monotonic()
                elif time.monotonic() - moved_at > STALL_S:
                    raise RuntimeError(f"burst stalled at {last}/{events} jobs:\n" + "".join(lines[-40:]))
                time.sleep(0.2)
            drained_s = time.monotonic() - started
        finally:
            stop_process(proc, timeout=60)
            reader.join(timeout=10)
    return Burst(events, uploaded_s, drained_s, done[1])


def describe(burst: Burst) -> str:
    return (f"**{burst.jobs_per_s:.1f} jobs/s** ({burst.events} uploads in {burst.uploaded_s:.1f} s, "
            f"{burst.succeeded} succeeded {burst.drained_s:.1f} s after the first upload)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000, help="objects uploaded at once (default 1000)")
    args = parser.parse_args()
    burst = measure(args.events)
    print(describe(burst).replace("**", ""))
    return 0 if burst.succeeded == burst.events else 1


if __name__ == "__main__":
    sys.exit(main())
