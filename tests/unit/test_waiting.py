"""The shared wait helper: slow but moving passes, stuck fails with a useful message."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support.waiting import Stalled, cpu_seconds, wait_until


def test_waiting_helper_passes_slow_progress_and_fails_a_stall() -> None:
    # The shared helper itself: slow but moving is fine; stuck is not.
    ticks = iter(range(1000))
    assert wait_until(lambda: next(ticks) >= 20, stall_s=0.5, progress=lambda: 0, interval=0.001)
    counter = {"n": 0}

    def step() -> bool:
        counter["n"] += 1
        return counter["n"] >= 40

    assert wait_until(step, stall_s=0.2, progress=lambda: counter["n"], interval=0.02)
    with pytest.raises(Stalled, match=r"no progress for 0\.2 s; progress stuck at 7: stuck job"):
        wait_until(lambda: False, stall_s=0.2, progress=lambda: 7, describe=lambda: "stuck job")
    assert wait_until(lambda: "value", stall_s=0.1) == "value"


def test_cpu_seconds_grows_for_a_busy_process_tree_and_not_for_a_sleeping_one() -> None:
    # The busy loop is a grandchild: start-up work often happens in a child of the child.
    busy = subprocess.Popen(["bash", "-c", f"{sys.executable} -c 'while True: pass' & wait"],
                            start_new_session=True)
    idle = subprocess.Popen(["sleep", "30"])
    try:
        first = cpu_seconds(busy.pid)
        wait_until(lambda: cpu_seconds(busy.pid) > first + 0.2, stall_s=30, interval=0.1,
                   describe="a busy loop used no CPU")
        before = cpu_seconds(idle.pid)
        time.sleep(0.5)
        assert cpu_seconds(idle.pid) - before < 0.05
    finally:
        os.killpg(busy.pid, signal.SIGKILL)
        idle.kill()
        busy.wait(timeout=10)
        idle.wait(timeout=10)
    assert cpu_seconds(busy.pid) == 0.0  # gone
