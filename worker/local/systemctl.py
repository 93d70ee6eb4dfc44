"""`processor local`'s stand-in for ``systemctl``, on its SSM agent's PATH.

The DrainDocument runs ``systemctl stop processor``; on AWS that stops the
unit, whose daemon drains on SIGTERM. Under `processor local` the daemon is a
child process, not a unit, so this does what systemd would: SIGTERM to the
daemon (its pid is in the state dir's lock file, worker.state.statelock), then wait
until it has exited, which the released lock shows (the kernel drops an
``flock`` when its holder exits). ``is-active processor`` answers like
systemd (exit 3 when inactive). Anything else is refused with the reason:
``start`` cannot be rehearsed here (restart `processor local`).

    python -m worker.local.systemctl STATE_DIR stop processor
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from worker.state.statelock import LOCK_NAME, read_holder

#: The units this stand-in knows.
_UNITS = frozenset({"processor", "processor.service"})


def main(argv: Sequence[str] | None = None) -> int:
    state_dir, *rest = list(sys.argv[1:] if argv is None else argv)
    words = [word for word in rest if not word.startswith("-")]
    lock = Path(state_dir) / LOCK_NAME
    if len(words) == 2 and words[1] in _UNITS and words[0] == "stop":
        return _stop(lock)
    if len(words) == 2 and words[1] in _UNITS and words[0] == "is-active":
        active = _held(lock)
        print("active" if active else "inactive")
        return 0 if active else 3
    print(f"systemctl {' '.join(rest)}: not available under `processor local` (its daemon is a child "
          "process, not a systemd unit); stop and start `processor local` instead", file=sys.stderr)
    return 1


def _stop(lock: Path) -> int:
    pid = read_holder(lock)
    if pid is None or not _held(lock):
        return 0  # already stopped: systemctl stop succeeds too
    os.kill(pid, signal.SIGTERM)
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # returns once the daemon has drained and exited
    finally:
        os.close(fd)
    return 0


def _held(lock: Path) -> bool:
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
