"""A job stays inside its box (issue 19), in the fallback mode (no delegated cgroup): real
commands that escape their process group — a double fork with setsid, a setsid child holding
stdout, a nohup child — leave no process behind after success, failure, cancel, timeout or a
drain (checked in /proc), and what the command used is recorded."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from pathlib import Path

import pytest

from processor_shared.layout import MANIFEST_NAME
from tests.support.escapees import ESCAPE, alive, kill_listed
from tests.support.pipeline import OUT, claim, make
from tests.support.waiting import wait_until
from worker.jobs.identity import Identity
from worker.jobs.states import JobState
from worker.runner.process import StopToken, sweep


def _command(pids: Path, mode: str) -> list[str]:
    return [sys.executable, "-c", ESCAPE, "{input}", "{output_dir}", str(pids), mode]


def _carrying(marker: bytes) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.parametrize("mode,ending", [
    ("ok", "success"), ("fail", "failure"), ("hang", "cancel"), ("hang", "timeout"), ("hang", "drain"),
])
def test_no_process_of_the_job_remains(tmp_path: Path, mode: str, ending: str) -> None:
    pids = tmp_path / "pids"
    pids.touch()
    timeout = {"timeout_s": 3} if ending == "timeout" else {}
    pipeline, ledger, store = make(tmp_path, _command(pids, mode), **timeout)
    job = claim(ledger, store, "k")
    token = StopToken()
    if ending in ("cancel", "drain"):
        def stop_when_started() -> None:
            wait_until(lambda: len(pids.read_text().split()) >= 3, stall_s=30,
                       describe="the escapees did not start")
            token.stop(StopToken.CANCEL if ending == "cancel" else StopToken.SHUTDOWN)
        threading.Thread(target=stop_when_started, daemon=True).start()
    try:
        done = pipeline.run(job, token)
    finally:
        survivors = [int(p) for p in pids.read_text().split() if alive(int(p))]
        kill_listed(pids)  # a failing run must not leave them for 10 minutes
    expected = {"success": JobState.SUCCEEDED, "failure": JobState.FAILED, "cancel": JobState.CANCELLED,
                "timeout": JobState.FAILED, "drain": JobState.QUEUED}[ending]
    assert done.state is expected, done.error
    assert len(pids.read_text().split()) == 3 and survivors == []
    marker = f"PROCESSOR_INPUT={pipeline.settings.paths.work / job.id / 'input'}".encode()
    assert _carrying(marker) == []


def test_what_the_command_used_is_in_the_ledger_and_the_manifest(tmp_path: Path) -> None:
    burn = [sys.executable, "-c",
            "import sys, time, pathlib; block = bytearray(48 << 20);"
            "end = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
            "pathlib.Path(sys.argv[2], 'r.txt').write_text('x')", "{input}", "{output_dir}"]
    pipeline, ledger, store = make(tmp_path, burn)
    done = pipeline.run(claim(ledger, store, "k"))
    assert done.state is JobState.SUCCEEDED, done.error
    assert done.cpu_s is not None and done.cpu_s >= 0.3
    assert done.peak_memory_bytes is not None and done.peak_memory_bytes >= 48 << 20
    shown = ledger.get(done.id).to_dict()
    assert (shown["cpu_s"], shown["peak_memory_bytes"]) == (done.cpu_s, done.peak_memory_bytes)
    manifest = json.loads(store.objects[(OUT, "results/k/" + MANIFEST_NAME)])
    assert manifest["resources"] == {"cpu_s": done.cpu_s, "peak_memory_bytes": done.peak_memory_bytes}


SECRET = b"outside the job\n"


def test_a_leftover_that_swaps_outputs_for_links_uploads_nothing_outside(tmp_path: Path) -> None:
    """The issue's case: a setsid child of the command swaps not-yet-uploaded outputs for links
    to a file outside the job while the uploads run. It is killed when the command ends, and
    a link would be refused anyway: no object holds the outside file."""
    outside = tmp_path / "secret.txt"
    outside.write_bytes(SECRET)
    swapper = (
        "import os, sys, time, subprocess\n"
        "out = sys.argv[2]\n"
        "for n in range(300): open(os.path.join(out, f'{n:03}.txt'), 'w').write(str(n))\n"
        "code = ('import os, sys, time\\n'\n"
        "        'while True:\\n'\n"
        "        '    for n in range(300):\\n'\n"
        "        '        p = os.path.join(sys.argv[1], f\"{n:03}.txt\")\\n'\n"
        "        '        try: os.unlink(p); os.symlink(sys.argv[2], p)\\n'\n"
        "        '        except OSError: pass\\n'\n"
        "        '    time.sleep(0.001)\\n')\n"
        f"subprocess.Popen([sys.executable, '-c', code, out, {str(outside)!r}], start_new_session=True)\n"
    )
    pipeline, ledger, store = make(tmp_path, [sys.executable, "-c", swapper, "{input}", "{output_dir}"])
    job_id = Identity("in", "k", None, hashlib.md5(b"hello").hexdigest()).job_id()  # claim()'s job
    marker = f"PROCESSOR_INPUT={pipeline.settings.paths.work / job_id / 'input'}"
    try:
        done = pipeline.run(claim(ledger, store, "k"))
        left = _carrying(marker.encode())
    finally:
        sweep(marker)  # a failing run must not leave the swapper looping
    assert done.id == job_id
    assert left == []
    assert SECRET not in store.objects.values()
    if done.state is JobState.SUCCEEDED:  # the swapper died before it touched a file
        manifest = json.loads(store.objects[(OUT, "results/k/" + MANIFEST_NAME)])
        assert len(manifest["outputs"]) == 300
    else:
        assert done.state is JobState.FAILED and done.error is not None and "symlink" in done.error
    assert os.path.exists(outside)
