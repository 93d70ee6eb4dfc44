"""Local access control: other users on the host can neither reach the daemon nor touch the ledger.

The daemon runs as root with its state dir 0750 root:root (the unit runs it
as the ``processor`` user; the point is the same: the owner and its group
only). An unprivileged user (``nobody``, through ``setpriv``) then tries the
control socket, the ledger file and ``processorctl``. Needs root (CI runs as
root); skips elsewhere.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemon import daemon, processorctl, write_config
from tests.support.report import REPORT
from worker import exitcodes

NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]

#: Run as nobody: try each door, print one verdict per line.
PROBE = """
import socket, sys
sock_path, ledger = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sock_path); print("socket: connected")
except OSError as exc:
    print(f"socket: {type(exc).__name__}")
try:
    open(ledger, "r+b").close(); print("ledger: opened for writing")
except OSError as exc:
    print(f"ledger: {type(exc).__name__}")
"""


@pytest.fixture
def as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("switching to another user needs root (CI runs as root)")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")


def _as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AS_NOBODY, *argv], capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/"})


def test_other_users_cannot_reach_the_socket_or_write_the_ledger(as_root: None, short_tmp: Path) -> None:
    short_tmp.chmod(0o755)  # others may traverse to the socket: its own mode must stop them
    config = write_config(short_tmp, output_bucket="out", endpoint="http://127.0.0.1:9")
    config.chmod(0o644)  # and read the config, as on a host where it is world-readable
    state = short_tmp / "state"
    state.mkdir(mode=0o750)
    socket = short_tmp / "p.sock"
    with daemon(config, socket) as proc:
        ledger = state / "ledger" / "ledger.db"
        done = processorctl(config, "submit", "--bucket", "bkt", "--key=mine.txt")
        assert done.returncode == 0, done.stderr
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (socket, state, *ledger.parent.iterdir())}
        assert all(mode & 0o002 == 0 for mode in modes.values()), modes  # nothing world-writable
        assert modes["p.sock"] & 0o007 == 0, modes

        probe = _as_nobody(sys.executable, "-c", PROBE, str(socket), str(ledger))
        assert probe.returncode == 0, probe.stderr
        assert probe.stdout.splitlines() == ["socket: PermissionError", "ledger: PermissionError"]

        listing = _as_nobody(str(Path(sys.executable).parent / "processorctl"), "--config", str(config),
                             "list")
        submit = _as_nobody(str(Path(sys.executable).parent / "processorctl"), "--config", str(config),
                            "submit", "--bucket", "bkt", "--key=intruder.txt")
        assert proc.poll() is None
    REPORT.append(f"access: as nobody, socket and ledger refused (EACCES); processorctl list exit "
                  f"{listing.returncode}: {listing.stderr.strip()[:160]}")
    for done in (listing, submit):
        assert done.returncode == exitcodes.LEDGER_UNAVAILABLE, done.stderr
        assert "Traceback" not in done.stderr and "Permission denied" in done.stderr, done.stderr
    recorded = processorctl(config, "list", "--json")
    assert "intruder" not in recorded.stdout and "mine.txt" in recorded.stdout
