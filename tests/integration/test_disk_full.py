"""A full state volume: jobs that cannot fit fail cleanly and the daemon keeps serving.

The state dir is a small tmpfs (mounting needs root, as in CI; elsewhere the
test skips and says why).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import processorctl, write_config
from tests.integration.test_daemon import daemon, wait_state

IN, OUT = "disk-in", "disk-out"
MIB = 1024 * 1024


@pytest.fixture
def small_volume(short_tmp: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    state = short_tmp / "state"
    state.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(state)],
                             capture_output=True, text=True, timeout=30)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield state
    finally:
        subprocess.run(["umount", "-l", str(state)], capture_output=True, timeout=30)


def test_full_disk_fails_jobs_cleanly_and_the_daemon_keeps_serving(
    small_volume: Path, short_tmp: Path, aws: Callable[[str], Any], moto_endpoint: str
) -> None:
    s3 = aws("s3")
    s3.create_bucket(Bucket=IN)
    s3.create_bucket(Bucket=OUT)
    # Writes 64 MiB of output onto a 24 MiB volume, unless the input says "small".
    filler = (
        "import sys, pathlib; data = pathlib.Path(sys.argv[1]).read_bytes();"
        "out = pathlib.Path(sys.argv[2]) / 'result.bin';"
        "n = 1 if data.startswith(b'small') else 64;"
        "f = open(out, 'wb'); [f.write(b'x' * (1 << 20)) for _ in range(n)]; f.close()"
    )
    config = write_config(short_tmp, output_bucket=OUT, endpoint=moto_endpoint,
                          command=[sys.executable, "-c", filler, "{input}", "{output_dir}"])
    config.write_text(config.read_text().replace("[logging]", "min_free_mb = 1\n[logging]"))

    def submit(key: str, body: bytes) -> str:
        etag = s3.put_object(Bucket=IN, Key=key, Body=body)["ETag"]
        done = processorctl(config, "submit", "--bucket", IN, f"--key={key}", f"--etag={etag}")
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    with daemon(config, short_tmp / "p.sock"):
        too_big = submit("too-big.bin", b"b" * (30 * MIB))
        job = wait_state(config, too_big, {"succeeded", "failed"})
        assert job["state"] == "failed" and "bytes free" in job["error"], job

        fills = submit("fills-disk.bin", b"x" * MIB)
        job = wait_state(config, fills, {"succeeded", "failed"}, stall_s=60)
        assert job["state"] == "failed", job
        assert "No space left on device" in (job["stderr_tail"] or ""), job
        failed = json.loads(s3.get_object(Bucket=OUT, Key="fills-disk.bin/_failed.json")["Body"].read())
        assert failed["job_id"] == fills

        fine = submit("small.txt", b"small input")
        job = wait_state(config, fine, {"succeeded", "failed"}, stall_s=60)
        assert job["state"] == "succeeded", job
    assert list((small_volume / "work").iterdir()) == []
