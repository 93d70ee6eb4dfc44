"""Waiting in tests: liveness bounds, never speed bounds.

A test that waits for "1,000 jobs done within 280 s" fails on a loaded machine
although nothing is wrong. `wait_until` instead fails only when *progress
stalls*: the ``progress`` value (e.g. the count of finished jobs) has not
changed for ``stall_s`` seconds. However slow the machine, a run that keeps
moving passes; a run that is stuck fails with a message saying where it stuck.
pytest-timeout (setup.cfg) stays the last-resort hang guard.

Without ``progress`` there is nothing to measure, so ``stall_s`` bounds the
wait for the single event itself (a socket answering, a line appearing).
Throughput figures belong in bench/, not here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class Stalled(AssertionError):
    """No progress for ``stall_s`` seconds while waiting for a condition."""


def wait_until(
    predicate: Callable[[], T],
    *,
    stall_s: float,
    progress: Callable[[], object] | None = None,
    describe: Callable[[], object] | str = "",
    interval: float = 0.05,
) -> T:
    """Return ``predicate()``'s first truthy value; raise `Stalled` once progress stops.

    ``progress`` is sampled after each false predicate; any change in its value
    restarts the ``stall_s`` clock. ``describe`` (a string, or a callable for
    state worth reading only on failure) goes into the error.
    """
    last = progress() if progress is not None else None
    moved_at = time.monotonic()
    while True:
        value = predicate()
        if value:
            return value
        now = time.monotonic()
        if progress is not None:
            current = progress()
            if current != last:
                last, moved_at = current, now
        if now - moved_at > stall_s:
            what = describe() if callable(describe) else describe
            where = f"; progress stuck at {last!r}" if progress is not None else ""
            raise Stalled(f"no progress for {stall_s:g} s{where}: {what}")
        time.sleep(interval)


def cpu_seconds(pid: int) -> float:
    """CPU time used so far by ``pid`` and its descendants (Linux /proc); 0.0 once gone.

    The progress of a process that prints nothing while it works — start-up
    (imports, the emulator, the stack) on a loaded machine can be silent for
    a minute: as long as it keeps burning CPU it is slow, not stuck.
    """
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        # After the command name: state, ppid, … utime (12th), stime (13th).
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    family, total = {pid}, 0.0
    for _ in range(len(stats)):  # grow the tree until it stops growing
        grown = family | {p for p, (ppid, _cpu) in stats.items() if ppid in family}
        if grown == family:
            break
        family = grown
    for member in family:
        total += stats.get(member, (0, 0.0))[1]
    return total
