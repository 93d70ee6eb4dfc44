"""The daemon's slots (worker.daemon.slots.Slots) on their own: reservations, the lock's condition, the table.

A fake ledger stands in for claim_next so a claim can be held mid-way; the
daemon's and the consumer's use of the same slots is tested in test_daemon.py
and test_queue_consumer.py.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from worker.daemon.slots import Slot, Slots
from worker.jobs.job import Job
from worker.jobs.states import JobState
from worker.runner.process import StopToken


class _HeldLedger:
    """claim_next blocks until released, then finds no due job."""

    def __init__(self) -> None:
        self.asked = threading.Event()
        self.release = threading.Event()

    def claim_next(self) -> Job | None:
        self.asked.set()
        self.release.wait(10)
        return None


def _job(job_id: str) -> Job:
    return Job(job_id, "in", job_id, None, "e", JobState.RUNNING, 1, 0.0, 0.0)


def _slots(ledger: Any, concurrency: int = 1) -> tuple[Slots, list[str]]:
    wakes: list[str] = []
    return Slots(concurrency, ledger, pipeline=None, wake=lambda: wakes.append("wake")), wakes  # type: ignore[arg-type]


def test_a_dropped_reservation_wakes_a_receiver_waiting_for_a_slot() -> None:
    """The lost wake-up: a claim that found no job gives its slot back under the lock and
    notifies, so a receiver waiting for a slot hears of it at once, not after its wait."""
    ledger = _HeldLedger()
    slots, _ = _slots(ledger)
    claimer = threading.Thread(target=slots.claim)
    claimer.start()
    assert ledger.asked.wait(5)
    assert slots.busy() == 1 and slots.free() == 0 and slots.reserve_for_poll(1) == 0
    waited: list[float] = []

    def receiver() -> None:
        started = time.monotonic()
        slots.wait_for_slot(30.0)
        waited.append(time.monotonic() - started)

    waiter = threading.Thread(target=receiver)
    waiter.start()
    time.sleep(0.2)  # the receiver is waiting on the condition by now
    ledger.release.set()
    claimer.join(5)
    waiter.join(5)
    assert waited and waited[0] < 5.0
    assert slots.busy() == 0 and slots.reserve_for_poll(1) == 1


def test_a_drain_takes_no_new_job_and_reports_what_runs() -> None:
    ledger = _HeldLedger()
    ledger.release.set()
    slots, _ = _slots(ledger, concurrency=2)
    assert slots.reserve_for_poll(1) == 1
    job = _job("j1")
    running = slots.begin_drain()
    assert running == [] and slots.draining
    assert slots.reserve_for_poll(1) == 0 and slots.claim() is None
    assert not slots.start_queue_job(job, lambda j, _t: j)
    assert not slots.cancel("j1") and slots.stop_running("test") == 0


def test_stop_running_skips_jobs_already_told_to_stop() -> None:
    slots, _ = _slots(_HeldLedger(), concurrency=2)
    tokens = []
    for job_id in ("a", "b"):
        token = StopToken()
        slots._table[job_id] = Slot(_job(job_id), token, time.monotonic())
        tokens.append(token)
    assert slots.cancel("a") and tokens[0].is_set()
    assert slots.stop_running("drain timeout") == 1 and tokens[1].is_set()
