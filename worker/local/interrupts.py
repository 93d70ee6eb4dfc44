"""Ctrl-C and SIGTERM for `processor local`: the first stops gracefully, a second forces.

The handler only records the signal and signals the daemons (no printing: the
main thread may hold the console's lock); what was left is said once the
stack has stopped (``leftover``). The daemons run in their own process groups
(worker.local.node), so a terminal's Ctrl-C reaches only this process, which
then drives them like systemd: SIGTERM drains; a second SIGTERM stops at once,
leaving running jobs queued; a third Ctrl-C kills them.
"""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from types import FrameType

from worker.jobs.job import Job
from worker.jobs.states import TERMINAL


class Interrupts:
    """Counts stop signals; ``stop`` is set by the first."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.count = 0
        #: The first signal received (SIGINT or SIGTERM), None until then.
        self.signum: int | None = None
        self.daemons: list[subprocess.Popen[bytes]] = []
        #: A second signal came: the daemons were told to stop at once.
        self.forced = False

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        self.count += 1
        if self.signum is None:
            self.signum = signum
        self.stop.set()
        if self.count < 2:
            return
        self.forced = True
        for proc in list(self.daemons):
            if proc.poll() is None:
                # The stack sends the first SIGTERM as it unwinds; these are the
                # daemon's "second stop signal" (stop at once), then a kill.
                proc.send_signal(signal.SIGTERM if self.count == 2 else signal.SIGKILL)

    @property
    def exit_code(self) -> int | None:
        """128 + SIGINT (130) after a Ctrl-C, as shells report it; None otherwise."""
        return 128 + signal.SIGINT if self.signum == signal.SIGINT else None


@contextmanager
def installed(interrupts: Interrupts) -> Iterator[Interrupts]:
    """Route SIGINT and SIGTERM to ``interrupts`` for the block; the previous handlers after."""
    previous = {sig: signal.signal(sig, interrupts.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield interrupts
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def leftover(jobs: Iterable[Job]) -> str:
    """What a stop left unfinished, in one line ('' when every job had ended)."""
    unfinished = [job for job in jobs if job.state not in TERMINAL]
    if not unfinished:
        return ""
    ids = ", ".join(f"{job.id} ({job.state.value}: {job.key})" for job in unfinished[:10])
    more = f" and {len(unfinished) - 10} more" if len(unfinished) > 10 else ""
    return (f"left {len(unfinished)} job(s) unfinished: {ids}{more}; "
            "the state dir is reset at the next start, so upload them again then")
