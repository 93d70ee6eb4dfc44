"""Processing commands that try to outlive their job, and how a test sees what is left."""

from __future__ import annotations

from pathlib import Path

#: Starts three escapees that sleep for 10 minutes, records their PIDs in argv[3], then
#: exits 0 ("ok"), exits 3 ("fail") or sleeps ("hang").
ESCAPE = r"""
import os, subprocess, sys, time
out, pids, mode = sys.argv[2], sys.argv[3], sys.argv[4]
def note(pid): open(pids, "a").write(f"{pid}\n")
if os.fork() == 0:               # double fork + setsid: a daemon, reparented away from us
    os.setsid()
    if os.fork() == 0:
        note(os.getpid())
        os.closerange(0, 3)
        time.sleep(600)
    os._exit(0)
# setsid, holding our stdout (the log pipe) open
note(subprocess.Popen(["sleep", "600"], start_new_session=True).pid)
note(subprocess.Popen(["nohup", "sleep", "600"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)
while len(open(pids).read().split()) < 3:
    time.sleep(0.01)
open(os.path.join(out, "r.txt"), "w").write("done")
if mode == "fail":
    sys.exit(3)
if mode == "hang":
    time.sleep(600)
"""


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its reaper)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def kill_listed(pids: Path) -> None:
    """Kill the escapees a test's command listed (by PID, theirs only): after a failed test."""
    import os
    import signal

    for pid in (int(p) for p in pids.read_text().split()) if pids.exists() else ():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if b"PROCESSOR_INPUT=" in environ:  # still the escapee, not a recycled PID
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
