"""The child process: argv substitution, process groups, and reaping orphans."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.support.waiting import wait_until
from worker.runner.process import StopToken, reap_orphans, render_argv, run_command


def test_placeholders_are_whole_arguments_only() -> None:
    argv = render_argv(["/bin/p", "{input}", "--out={output_dir}", "{output_dir}"],
                       {"{input}": "-rf /", "{output_dir}": "/w/out"})
    assert argv == ["/bin/p", "-rf /", "--out={output_dir}", "/w/out"]


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild"
    code = ("import subprocess, sys, time;"
            f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            f"open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    result = run_command([sys.executable, "-c", code], cwd=tmp_path, env=dict(os.environ),
                         log_path=tmp_path / "log", timeout_s=1, kill_grace_s=1)
    assert result.timed_out and not result.cancelled
    grandchild = int(pidfile.read_text())
    def gone() -> bool:
        try:  # a zombie is dead, merely not reaped yet
            return "Z" in Path(f"/proc/{grandchild}/stat").read_text().split()[2]
        except OSError:
            return True

    wait_until(gone, stall_s=30, describe=f"grandchild {grandchild} outlived the timeout kill")


def test_cancel_token_stops_the_command(tmp_path: Path) -> None:
    token = StopToken()
    token.stop(StopToken.CANCEL)
    result = run_command([sys.executable, "-c", "import time; time.sleep(60)"], cwd=tmp_path,
                         env=dict(os.environ), log_path=tmp_path / "log", timeout_s=60, kill_grace_s=1,
                         cancel=token)
    assert result.cancelled and result.duration_s < 30


def test_output_goes_to_the_log_and_stderr_tail_is_kept(tmp_path: Path) -> None:
    code = "import sys; print('to stdout'); sys.stderr.write('x' * 10000 + 'END'); sys.exit(5)"
    result = run_command([sys.executable, "-c", code], cwd=tmp_path, env=dict(os.environ),
                         log_path=tmp_path / "log", timeout_s=30, kill_grace_s=1)
    assert result.returncode == 5 and result.stderr_tail.endswith("END")
    assert len(result.stderr_tail) <= 4096
    log = (tmp_path / "log").read_text()
    # Both streams, each whole (they reach the log through two pipes: their order may mix).
    assert "to stdout\n" in log and ("x" * 10000 + "END") in log


def test_reap_orphans_kills_only_commands_of_this_work_dir(tmp_path: Path) -> None:
    ours = tmp_path / "work"
    theirs = tmp_path / "other-work"
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    orphan = subprocess.Popen(sleep, env={**os.environ, "PROCESSOR_INPUT": f"{ours}/j-1/input"},
                              start_new_session=True)
    bystander = subprocess.Popen(sleep, env={**os.environ, "PROCESSOR_INPUT": f"{theirs}/j-1/input"},
                                 start_new_session=True)
    try:
        killed = reap_orphans(ours)
        assert killed == [orphan.pid]
        assert orphan.wait(timeout=10) != 0
        assert bystander.poll() is None
    finally:
        for proc in (orphan, bystander):
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "wait-fallback"])
def test_exit_status_timeout_and_cancel_with_and_without_pidfds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pidfd: bool
) -> None:
    """The exit is noticed through a pidfd where the kernel has them, else by Popen.wait."""
    if pidfd and not hasattr(os, "pidfd_open"):
        pytest.fail("this kernel/Python has no pidfd_open: the fast path is untested here")
    opened: list[int] = []
    real = getattr(os, "pidfd_open", None)

    def pidfd_open(pid: int, flags: int = 0) -> int:
        if not pidfd or real is None:
            raise OSError(38, "Function not implemented")
        opened.append(pid)
        return real(pid, flags)

    monkeypatch.setattr(os, "pidfd_open", pidfd_open, raising=False)
    run = functools.partial(run_command, cwd=tmp_path, env=dict(os.environ), log_path=tmp_path / "log",
                            kill_grace_s=1)
    assert run(["/bin/sh", "-c", "exit 7"], timeout_s=30).returncode == 7
    slow = run(["/bin/sleep", "30"], timeout_s=0.3)
    assert slow.timed_out and slow.returncode == -signal.SIGTERM
    token = StopToken()
    threading.Timer(0.2, token.stop, args=(StopToken.CANCEL,)).start()
    assert run(["/bin/sleep", "30"], timeout_s=30, cancel=token).cancelled
    assert len(opened) == (3 if pidfd else 0)
