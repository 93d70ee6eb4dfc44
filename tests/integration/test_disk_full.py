"""A full state volume: an input that can never fit fails, one that fits later waits
for space, a command that fills the disk fails cleanly, and the daemon keeps serving.

The state dir is a small tmpfs (mounting needs root, as in CI; elsewhere the
test skips and says why).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.daemon import daemon, upload_and_submit, wait_state, write_config
from tests.support.emulator import with_buckets
from tests.support.waiting import wait_until

IN, OUT = "disk-in", "disk-out"
MIB = 1024 * 1024


#: The processing command of these tests (argv[1] input, argv[2] output dir):
#: "hold..." writes HOLD_MIB and waits for $GATE (a liveness bound of 60 s), then
#: succeeds; "small..." writes 1 MiB; anything else writes 64 MiB, more than the volume.
FILLER = """
import os, sys, time, pathlib
data = pathlib.Path(sys.argv[1]).read_bytes()
hold = data.startswith(b"hold")
n = {HOLD_MIB} if hold else 1 if data.startswith(b"small") else 64
with open(pathlib.Path(sys.argv[2]) / "result.bin", "wb") as f:
    for _ in range(n):
        f.write(b"x" * (1 << 20))
if hold:
    pathlib.Path(os.environ["HOLDING"]).touch()
    deadline = time.monotonic() + 60
    while not os.path.exists(os.environ["GATE"]) and time.monotonic() < deadline:
        time.sleep(0.05)
"""
#: What the holding job keeps on the 24 MiB volume while it waits for its gate.
HOLD_MIB = 16


def _config(short_tmp: Path, moto_endpoint: str, **processing: Any) -> Path:
    command = [sys.executable, "-c", FILLER.replace("{HOLD_MIB}", str(HOLD_MIB)), "{input}", "{output_dir}"]
    config = write_config(short_tmp, output_bucket=OUT, endpoint=moto_endpoint, command=command,
                          **processing)
    environment = json.dumps({"GATE": str(short_tmp / "gate"), "HOLDING": str(short_tmp / "holding")})
    # TOML inline table: the JSON object of two plain strings is the same text with " = ".
    environment = environment.replace('": "', '" = "')
    text = config.read_text().replace("[paths]", f"environment = {environment}\n[paths]")
    config.write_text(text.replace("[logging]", "min_free_mb = 1\n[logging]"))
    return config


def _submitter(s3: Any, config: Path) -> Callable[[str, bytes], str]:
    def submit(key: str, body: bytes) -> str:
        return upload_and_submit(s3, config, IN, key, body)
    return submit


def test_full_disk_fails_jobs_cleanly_and_the_daemon_keeps_serving(
    small_volume: Path, short_tmp: Path, aws: Callable[[str], Any], moto_endpoint: str
) -> None:
    s3 = with_buckets(aws("s3"), IN, OUT)
    config = _config(short_tmp, moto_endpoint)
    submit = _submitter(s3, config)

    with daemon(config, short_tmp / "p.sock"):
        too_big = submit("too-big.bin", b"b" * (30 * MIB))
        job = wait_state(config, too_big, {"succeeded", "failed"})
        assert job["state"] == "failed" and "can never fit" in job["error"], job
        assert str(small_volume / "work") in job["error"] and "bytes total" in job["error"], job

        fills = submit("fills-disk.bin", b"x" * MIB)
        job = wait_state(config, fills, {"succeeded", "failed"}, stall_s=60)
        assert job["state"] == "failed", job
        assert "No space left on device" in (job["stderr_tail"] or ""), job
        # The free space when the command exited is part of the recorded error.
        assert f"the state volume at {small_volume / 'work'} had" in job["error"], job
        failed = json.loads(s3.get_object(Bucket=OUT, Key="fills-disk.bin/_failed.json")["Body"].read())
        assert failed["job_id"] == fills

        fine = submit("small.txt", b"small input")
        job = wait_state(config, fine, {"succeeded", "failed"}, stall_s=60)
        assert job["state"] == "succeeded", job
    assert list((small_volume / "work").iterdir()) == []


def test_a_job_that_does_not_fit_beside_another_runs_after_it(
    small_volume: Path, short_tmp: Path, aws: Callable[[str], Any], moto_endpoint: str
) -> None:
    """The first job holds 16 MiB of the 24 MiB volume; an 8 MiB input (+1 MiB reserve)
    cannot fit beside it, waits for space without spending attempts (max_attempts = 1),
    and runs once the first job has finished and its work dir is gone."""
    s3 = with_buckets(aws("s3"), IN, OUT)
    config = _config(short_tmp, moto_endpoint, concurrency=2, max_attempts=1)
    submit = _submitter(s3, config)

    with daemon(config, short_tmp / "p.sock"):
        holder = submit("holder.bin", b"hold")
        # Liveness bounds only (tests/support/waiting.py): fail when nothing moves, never on total time.
        wait_until(lambda: (short_tmp / "holding").exists(), stall_s=60,
                   progress=lambda: wait_state(config, holder, {"queued", "running", "failed"})["state"],
                   describe=lambda: "the first job never started holding its space")
        waiter = submit("waiter.bin", b"small" + b"w" * (8 * MIB))

        def waiting_for_space() -> dict[str, Any] | None:
            job = wait_state(config, waiter, {"queued", "running", "succeeded", "failed"})
            assert job["state"] in {"queued", "running"}, job
            return job if "waiting for disk space" in (job["error"] or "") else None

        job = wait_until(waiting_for_space, stall_s=60, interval=0.1,
                         describe=lambda: "the second job never waited for space")
        assert str(small_volume / "work") in job["error"] and "bytes free" in job["error"], job
        (short_tmp / "gate").touch()
        first = wait_state(config, holder, {"succeeded", "failed"}, stall_s=90)
        second = wait_state(config, waiter, {"succeeded", "failed"}, stall_s=90)
    assert first["state"] == "succeeded", first
    assert second["state"] == "succeeded" and second["counted_attempts"] == 0, second
    assert second["attempts"] >= 2 and second["finished_at"] > first["finished_at"]
    assert s3.head_object(Bucket=OUT, Key="waiter.bin/_manifest.json")["ContentLength"] > 0
    assert list((small_volume / "work").iterdir()) == []
