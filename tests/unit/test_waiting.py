"""The shared wait helper: slow but moving passes, stuck fails with a useful message."""

from __future__ import annotations

import pytest

from tests.waiting import Stalled, wait_until


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
