"""What the daemon reports: systemd's STATUS line and `processorctl status`.

``StatusReport`` is given what it reads (the settings, the ledger, the
daemon's ``Slots`` and its queue consumer, if any) and the ``Notifier`` it
sends the STATUS line through: ``worker.telemetry.systemd`` in production, a
recorder in the lifecycle tests, which check READY=1 comes only once the
socket is bound and STOPPING=1 when a drain begins.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from worker import __version__
from worker.errors import LedgerError
from worker.jobs.activity import activity, in_words
from worker.jobs.states import JobState
from worker.state.schema import ORIGIN_LOCAL

if TYPE_CHECKING:
    from worker.config.settings import Settings
    from worker.daemon.slots import Slots
    from worker.fleet.consumer import QueueConsumer
    from worker.state.ledger import Ledger

#: At most this often the loop recounts the ledger for systemd's STATUS line
#: (a GROUP BY over every job the ledger keeps), not on every wake-up.
STATUS_INTERVAL_S = 1.0


class Notifier(Protocol):
    """sd_notify's messages the daemon sends (the ``worker.telemetry.systemd`` module is one)."""

    def ready(self, status: str) -> bool: ...
    def status(self, text: str) -> bool: ...
    def stopping(self, text: str) -> bool: ...
    def watchdog(self) -> bool: ...


class StatusReport:
    """The daemon's reports, over its slots, its ledger and its queue consumer."""

    def __init__(self, settings: Settings, ledger: Ledger, slots: Slots,
                 consumer: QueueConsumer | None, notifier: Notifier,
                 clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._ledger = ledger
        self._slots = slots
        self._consumer = consumer
        self._notify = notifier
        self._clock = clock
        self._last_status = ""
        self._status_at = -STATUS_INTERVAL_S
        #: A recount was skipped as too soon: the loop wakes when it is due.
        self._status_stale = False

    def text(self) -> str:
        """The STATUS line: job counts, the work queue, what the running jobs are doing."""
        counts = self._ledger.counts()
        text = (
            f"{counts['running']} running, {counts['queued']} queued, "
            f"{counts['succeeded']} succeeded, {counts['failed']} failed"
        )
        if self._consumer is not None:
            text += f"; work queue: {self._consumer.holding} message(s) held"
            if (pause := self._consumer.breaker.pause) is not None:
                text += f"; receiving {pause.describe()}"
        # The phase of each running job, in `processorctl status`'s words (worker.jobs.activity).
        doing = [f"{job['job_id']} {job['phase'] or 'starting'}" for job in self.running()[:3]]
        return text + (f"; {', '.join(doing)}" if doing else "")

    def running(self) -> list[dict[str, Any]]:
        """The jobs in the daemon's slots, with what each is doing now (worker.jobs.activity)."""
        slots = [(s.job.id, s.job.key, s.job.attempts, s.started) for s in self._slots.running()]
        now = self._clock()
        running = []
        for job_id, key, attempt, started in slots:
            entry: dict[str, Any] = {"job_id": job_id, "key": key, "attempt": attempt,
                                     "running_s": round(max(0.0, now - started), 1), "phase": ""}
            try:
                job = self._ledger.get(job_id)
            except LedgerError:
                running.append(entry)
                continue
            facts = activity(job, now=now, timeout_s=self._settings.processing.timeout_s)
            entry.update(phase=facts.get("phase", ""), activity=facts,
                         activity_text=in_words(job, facts, now=now))
            running.append(entry)
        return running

    def due_in(self) -> float | None:
        """Seconds until a skipped recount is due; None when none was skipped."""
        if not self._status_stale:
            return None
        return self._status_at + STATUS_INTERVAL_S - self._clock()

    def publish(self) -> None:
        """Send the STATUS line if it changed, at most every STATUS_INTERVAL_S."""
        now = self._clock()
        if 0.0 <= now - self._status_at < STATUS_INTERVAL_S:  # a clock stepped back: recount now
            self._status_stale = True  # the loop's sleep ends when it is due (due_in)
            return
        self._status_at, self._status_stale = now, False
        text = self.text()
        if text != self._last_status:
            self._notify.status(("draining: " if self._slots.draining else "") + text)
            self._last_status = text

    def status(self) -> dict[str, Any]:
        """`processorctl status`'s reply."""
        counts = self._ledger.counts()
        # Local jobs only: a queue job handed back waits in its queue, not here.
        queued = self._ledger.list_jobs(JobState.QUEUED, limit=1, origin=ORIGIN_LOCAL)
        running = self.running()
        return {
            "pid": os.getpid(),
            "version": __version__,
            "draining": self._slots.draining,
            "slots": self._settings.processing.concurrency,
            "busy": len(running),
            "running": running,
            "counts": counts,
            "oldest_queued_age_s": round(self._clock() - queued[0].created_at, 1) if queued else None,
            "queue": self._consumer.status() if self._consumer is not None else None,
        }
