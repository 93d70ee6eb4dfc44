"""The daemon's side of a fleet: slots for the work queue, and the instance guard.

Mixed into ``worker.daemon.Daemon``, whose slot bookkeeping (``_slots``,
``_reserved``, ``_polling`` under ``_slots_lock``) it shares: the queue
consumer's receiver reserves free slots for each receive (so it never asks for
more messages than it can start) and turns a reservation into a running slot
per message; local claims count the same reservations.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import structlog

from worker.job import Job
from worker.process import StopToken

if TYPE_CHECKING:
    import queue
    from collections.abc import Callable

    from worker.config import Settings
    from worker.fleet.consumer import Runner

log = structlog.get_logger("processor.daemon")


class InstanceGuard(Protocol):
    """What the instance this daemon runs on may ask of it (worker.fleet.instance)."""

    def set_busy(self, busy: bool) -> None:
        """Whether the daemon holds at least one job; called on change; must not block."""

    def interruption(self) -> str | None:
        """Non-blocking: a reason once the instance is being taken away, else None."""

    def close(self) -> None: ...


@dataclass
class _Slot:
    job: Job
    token: StopToken
    #: When the slot was taken, on the daemon's clock.
    started: float
    #: A work-queue job: a drain stops it at once so its message goes back.
    queued_from_queue: bool = False


class FleetSlots:
    """``worker.fleet.consumer.SlotHost`` on the daemon's slots, and the guard's hooks."""

    if TYPE_CHECKING:
        settings: Settings
        _clock: Callable[[], float]
        _slots: dict[str, _Slot]
        _slots_lock: threading.Lock
        _slot_freed: threading.Condition
        _reserved: int
        _polling: int
        _draining: bool
        _guard: InstanceGuard | None
        _guard_busy: bool | None
        _work: queue.SimpleQueue[tuple[Job, StopToken, Runner] | None]

        def wake(self) -> None: ...
        def _claim_quietly(self) -> tuple[Job, StopToken, Runner] | None: ...
        def _busy(self) -> int: ...
        def _start_drain(self, reason: str) -> None: ...

    def _free_slots_locked(self) -> int:
        return self.settings.processing.concurrency - len(self._slots) - self._reserved - self._polling

    def _check_guard(self) -> None:
        if self._guard is None:
            return
        busy = self._busy() > 0
        if busy != self._guard_busy:
            self._guard.set_busy(busy)
            self._guard_busy = busy
        if not self._draining and (reason := self._guard.interruption()) is not None:
            self._start_drain(reason)

    def reserve_for_poll(self, wanted: int) -> int:
        with self._slots_lock:
            if self._draining:
                return 0
            n = max(0, min(wanted, self._free_slots_locked()))
            self._polling += n
            return n

    def end_poll(self, unused: int) -> None:
        with self._slots_lock:
            self._polling -= unused
            self._slot_freed.notify_all()
        # Local jobs due now take the slots first: left to the main loop, they
        # would race the receiver's next reservation, and lose every time.
        while (claimed := self._claim_quietly()) is not None:
            self._work.put(claimed)

    def start_queue_job(self, job: Job, run: Runner) -> bool:
        with self._slots_lock:
            if self._draining:
                return False
            self._polling -= 1
            token = StopToken()
            self._slots[job.id] = _Slot(job, token, self._clock(), queued_from_queue=True)
        log.info("job_started", job_id=job.id, bucket=job.bucket, key=job.key,
                 state=job.state.value, attempt=job.attempts, origin="queue")
        self._work.put((job, token, run))
        self.wake()
        return True

    def wait_for_slot(self, timeout: float) -> None:
        with self._slot_freed:
            if self._free_slots_locked() <= 0 and not self._draining:
                self._slot_freed.wait(timeout)

