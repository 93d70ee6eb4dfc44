"""What the daemon reports: systemd's STATUS line, `processorctl status`, the control-socket ops.

Mixed into ``worker.daemon.Daemon``, whose ledger, slots and consumer it reads
(declared below for the type checker). sd_notify goes through a `Notifier`:
``worker.telemetry.systemd`` in production, a recorder in the lifecycle tests,
which check READY=1 comes only once the socket is bound and STOPPING=1 when a
drain begins.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from worker import __version__
from worker.activity import activity, in_words
from worker.errors import LedgerError
from worker.ledger_schema import ORIGIN_LOCAL
from worker.states import JobState

if TYPE_CHECKING:
    from worker.config import Settings
    from worker.fleet.consumer import QueueConsumer
    from worker.fleet.slots import _Slot
    from worker.ledger import Ledger

#: At most this often the loop recounts the ledger for systemd's STATUS line
#: (a GROUP BY over every job the ledger keeps), not on every wake-up.
STATUS_INTERVAL_S = 1.0

Handler = Callable[[Mapping[str, Any]], Mapping[str, Any]]


class Notifier(Protocol):
    """sd_notify's messages the daemon sends (the ``worker.telemetry.systemd`` module is one)."""

    def ready(self, status: str) -> bool: ...
    def status(self, text: str) -> bool: ...
    def stopping(self, text: str) -> bool: ...
    def watchdog(self) -> bool: ...


class DaemonStatus:
    """The daemon's reports, over its slots and ledger."""

    if TYPE_CHECKING:
        settings: Settings
        ledger: Ledger
        _notify: Notifier
        _clock: Callable[[], float]
        _slots: dict[str, _Slot]
        _slots_lock: threading.Lock
        _draining: bool
        _consumer: QueueConsumer | None

        def wake(self) -> None: ...
        def cancel(self, job_id: str) -> bool: ...

    _last_status = ""
    _status_at = -STATUS_INTERVAL_S
    #: A recount was skipped as too soon: the loop wakes when it is due.
    _status_stale = False

    def _status_text(self) -> str:
        counts = self.ledger.counts()
        text = (
            f"{counts['running']} running, {counts['queued']} queued, "
            f"{counts['succeeded']} succeeded, {counts['failed']} failed"
        )
        if self._consumer is not None:
            text += f"; work queue: {self._consumer.holding} message(s) held"
            if (pause := self._consumer.breaker.pause) is not None:
                text += f"; receiving {pause.describe()}"
        # The phase of each running job, in `processorctl status`'s words (worker.activity).
        doing = [f"{job['job_id']} {job['phase'] or 'starting'}" for job in self._running()[:3]]
        return text + (f"; {', '.join(doing)}" if doing else "")

    def _running(self) -> list[dict[str, Any]]:
        """The jobs in this daemon's slots, with what each is doing now (worker.activity)."""
        with self._slots_lock:
            slots = [(s.job.id, s.job.key, s.job.attempts, s.started) for s in self._slots.values()]
        now = self._clock()
        running = []
        for job_id, key, attempt, started in slots:
            entry: dict[str, Any] = {"job_id": job_id, "key": key, "attempt": attempt,
                                     "running_s": round(max(0.0, now - started), 1), "phase": ""}
            try:
                job = self.ledger.get(job_id)
            except LedgerError:
                running.append(entry)
                continue
            facts = activity(job, now=now, timeout_s=self.settings.processing.timeout_s)
            entry.update(phase=facts.get("phase", ""), activity=facts,
                         activity_text=in_words(job, facts, now=now))
            running.append(entry)
        return running

    def _status_due_in(self) -> float | None:
        """Seconds until a skipped recount is due; None when none was skipped."""
        if not self._status_stale:
            return None
        return self._status_at + STATUS_INTERVAL_S - self._clock()

    def _publish_status(self) -> None:
        now = self._clock()
        if 0.0 <= now - self._status_at < STATUS_INTERVAL_S:  # a clock stepped back: recount now
            self._status_stale = True  # _sleep_for wakes the loop when it is due
            return
        self._status_at, self._status_stale = now, False
        text = self._status_text()
        if text != self._last_status:
            self._notify.status(("draining: " if self._draining else "") + text)
            self._last_status = text

    def status(self) -> dict[str, Any]:
        counts = self.ledger.counts()
        # Local jobs only: a queue job handed back waits in its queue, not here.
        queued = self.ledger.list_jobs(JobState.QUEUED, limit=1, origin=ORIGIN_LOCAL)
        running = self._running()
        return {
            "pid": os.getpid(),
            "version": __version__,
            "draining": self._draining,
            "slots": self.settings.processing.concurrency,
            "busy": len(running),
            "running": running,
            "counts": counts,
            "oldest_queued_age_s": round(self._clock() - queued[0].created_at, 1) if queued else None,
            "queue": self._consumer.status() if self._consumer is not None else None,
        }

    def _handlers(self) -> dict[str, Handler]:
        def wake(_request: Mapping[str, Any]) -> Mapping[str, Any]:
            self.wake()
            return {}

        def cancel(request: Mapping[str, Any]) -> Mapping[str, Any]:
            return {"running": self.cancel(str(request.get("job_id", "")))}

        return {
            "ping": lambda _r: {"pid": os.getpid(), "version": __version__},
            "wake": wake,
            "status": lambda _r: self.status(),
            "cancel": cancel,
        }
