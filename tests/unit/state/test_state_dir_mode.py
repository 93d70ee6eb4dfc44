"""The state dir gets mode 0750 whoever creates it first, whatever the creator's umask (issue 19)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.support.daemon import write_config
from worker.state import statelock
from worker.state.dirs import STATE_DIR_MODE, make_dirs


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_processorctl_submit_with_a_permissive_umask_creates_the_state_dir_0750(short_tmp: Path) -> None:
    config = write_config(short_tmp)
    done = subprocess.run(
        [str(Path(sys.executable).parent / "processorctl"), "--config", str(config),
         "submit", "--bucket", "in-bucket", "--key=k"],
        capture_output=True, text=True, timeout=30, umask=0o022,
    )
    assert done.returncode == 0, done.stderr
    state = short_tmp / "state"
    assert _mode(state) == STATE_DIR_MODE and _mode(state / "ledger") == STATE_DIR_MODE


def test_the_daemon_with_a_strict_umask_creates_the_state_dir_0750(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        lock = statelock.acquire(tmp_path / "deep" / "state")
    finally:
        os.umask(old)
    try:
        assert _mode(tmp_path / "deep" / "state") == STATE_DIR_MODE
        assert _mode(tmp_path / "deep") == STATE_DIR_MODE
    finally:
        lock.release()


def test_an_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir(mode=0o700)
    os.chmod(tmp_path / "mine", 0o700)
    make_dirs(tmp_path / "mine" / "sub")
    assert _mode(tmp_path / "mine") == 0o700 and _mode(tmp_path / "mine" / "sub") == STATE_DIR_MODE
