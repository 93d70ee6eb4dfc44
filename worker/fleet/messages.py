"""What the consumer does with a message once it knows how its job ended: logged, never raised.

Every call here is a single SQS request whose failure the claim absorbs (a
message not deleted comes back and finds its job ended; one not handed back
comes back after its lease), so a failure is logged and the daemon carries on.
"""

from __future__ import annotations

import structlog

from worker.config.settings import SQS_MAX_INVISIBLE_S
from worker.fleet.workqueue import MAX_DELAY_S, QueueError, WorkQueue

log = structlog.get_logger("processor.queue")


class Messages:
    def __init__(self, queue: WorkQueue) -> None:
        self._queue = queue

    def delete(self, receipt: str, message_id: str, job_id: str | None) -> bool:
        try:
            self._queue.delete(receipt)
        except QueueError as exc:
            log.warning("queue_delete_failed", job_id=job_id, message_id=message_id, error=str(exc))
            return False
        log.info("queue_message_deleted", job_id=job_id, message_id=message_id)
        return True

    def hand_back(self, receipt: str, message_id: str, body: str, delay_s: int, reason: str,
                  job_id: str | None) -> None:
        """The message again after ``delay_s``, as a fresh message: no receive is spent."""
        if delay_s <= MAX_DELAY_S:
            try:
                new_id = self._queue.send(body, delay_s)
            except QueueError as exc:
                log.warning("queue_send_failed", job_id=job_id, message_id=message_id, error=str(exc))
            else:
                if self.delete(receipt, message_id, job_id):
                    log.info("queue_message_handed_back", job_id=job_id, message_id=message_id,
                             new_message_id=new_id, visible_in_s=delay_s, reason=reason)
                return
        # Longer than SQS's 15-minute delay (or the send failed): the old
        # message's visibility carries the wait; that spends one receive.
        self.release(receipt, message_id, delay_s, reason, job_id)

    def dead_letter(self, receipt: str, message_id: str, body: str, reason: str,
                    job_id: str | None) -> None:
        """To the dead-letter queue with ``reason``, then deleted here."""
        try:
            sent = self._queue.dead_letter(body, reason, job_id)
        except QueueError as exc:
            log.warning("queue_dead_letter_failed", job_id=job_id, message_id=message_id, error=str(exc))
            return  # back after its lease; tried again then
        if not sent:
            # No dead-letter queue known: the redrive policy moves it after its receives.
            log.warning("queue_message_kept", job_id=job_id, message_id=message_id,
                        reason="no dead-letter queue to send it to")
            return
        if self.delete(receipt, message_id, job_id):
            log.info("queue_message_dead_lettered", job_id=job_id, message_id=message_id, reason=reason)

    def release(self, receipt: str, message_id: str, delay_s: int, reason: str,
                job_id: str | None = None) -> None:
        """Visible again after ``delay_s`` (the same message: one more receive)."""
        try:
            self._queue.set_visibility(receipt, min(delay_s, SQS_MAX_INVISIBLE_S))
        except QueueError as exc:
            log.warning("queue_release_failed", job_id=job_id, message_id=message_id, error=str(exc))
        else:
            log.info("queue_message_released", job_id=job_id, message_id=message_id,
                     visible_in_s=delay_s, reason=reason)
