"""Pause receiving while storage is down: a circuit breaker with a probe.

When an attempt ends waiting for S3 (or the fleet record cannot be written),
the consumer ``open``s the breaker: it stops receiving new messages (which
would only be handed back) and says so (``processorctl status``, the
sd_notify STATUS line, a ``ReceivingPaused`` metric). Every probe interval
(``retry_base_s`` doubling up to ``retry_max_s``: ``backoff_ceiling``, no jitter) it tries the probe, a cheap
read of the output bucket; the first probe that answers closes the breaker, so
receiving resumes within ``retry_max_s`` of S3 answering. Thread-safe; time
injected.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from processor_shared.aws_edge import backoff_ceiling
from worker.telemetry import metrics

log = structlog.get_logger("processor.queue")


@dataclass(frozen=True)
class Pause:
    what: str
    since: float
    error: str

    def describe(self) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since))
        return f"paused: {self.what} unavailable since {stamp}"


class Breaker:
    def __init__(self, probe: Callable[[], None], first_s: float, max_s: float,
                 *, clock: Callable[[], float] = time.time) -> None:
        #: Raises when the dependency is still down.
        self._probe = probe
        self._first_s = max(0.2, first_s)
        self._max_s = max(self._first_s, max_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._pause: Pause | None = None
        #: Probes failed since the breaker opened.
        self._failed_probes = 0

    def _interval(self) -> float:
        """The wait before the next probe (the caller holds the lock)."""
        return backoff_ceiling(self._failed_probes + 1, self._first_s, self._max_s)

    @property
    def pause(self) -> Pause | None:
        with self._lock:
            return self._pause

    def open(self, what: str, error: str) -> None:
        with self._lock:
            if self._pause is not None:
                return
            self._pause = Pause(what, self._clock(), error)
            self._failed_probes = 0
        log.warning("queue_receiving_paused", reason=f"{what} unavailable", error=error)
        metrics.receiving_paused(True, what)

    def wait_and_probe(self, stop: threading.Event) -> bool:
        """While open: wait one probe interval (or until ``stop``), probe; True once closed."""
        with self._lock:
            if self._pause is None:
                return True
            interval = self._interval()
        if stop.wait(interval):
            return False
        try:
            self._probe()
        except Exception as exc:  # noqa: BLE001 - any failure of the probe keeps it open
            with self._lock:
                self._failed_probes += 1
                interval = self._interval()
            log.info("storage_probe_failed", error=str(exc), next_probe_in_s=round(interval, 1))
            return False
        with self._lock:
            pause, self._pause = self._pause, None
        if pause is not None:
            log.info("queue_receiving_resumed", reason=f"{pause.what} answers again",
                     paused_s=round(self._clock() - pause.since, 1))
            metrics.receiving_paused(False, pause.what)
        return True
