"""Start-up recovery: undo what a crash, ``kill -9`` or power loss left behind.

Runs once per start, after the state dir's lock is taken and before the daemon
serves (worker.daemon.lifecycle ``Daemon.start``), so it only ever touches this daemon's
own leftovers: commands still running from the previous daemon are killed by
process group, local jobs it left running go back to the queue (the attempt
counts), and queue jobs are recorded as handed back -- their messages return
through the work queue, not from this ledger.
"""

from __future__ import annotations

from pathlib import Path

import structlog

from worker.runner.process import reap_orphans
from worker.state.ledger import Ledger
from worker.state.queue import QueueLedger

log = structlog.get_logger("processor.daemon")


def recover(work_dir: Path, ledger: Ledger) -> None:
    """Kill orphaned commands under ``work_dir``, then requeue / hand back interrupted jobs."""
    for group in reap_orphans(work_dir):
        log.warning("orphan_killed", pgid=group,
                    reason="a processing command outlived the previous daemon")
    for job in ledger.requeue_interrupted("interrupted: daemon restarted"):
        log.warning("job_requeued", job_id=job.id, key=job.key, state=job.state.value,
                    attempt=job.attempts, reason="interrupted by a previous stop or crash")
    for job in QueueLedger(ledger).hand_back(
            "handed back: daemon restarted; its message returns through the work queue"):
        log.warning("job_handed_back", job_id=job.id, key=job.key, attempt=job.attempts,
                    reason="a queue job is not re-run from the ledger after a restart")
