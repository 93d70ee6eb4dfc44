"""The daemon on a work queue, in-process: a real Daemon, Ledger and Pipeline (running a
small shell command), on an in-memory queue, fleet record store and object store
(tests.support.fakes: FakeQueue, FakeRecords, FakeStore)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from tests.support.daemon_thread import WAIT_S, started
from tests.support.fakes import FakeQueue, FakeRecords, FakeStore
from tests.support.waiting import wait_until
from worker import exitcodes
from worker.config.settings import Settings, settings_from_mapping
from worker.daemon.lifecycle import Daemon
from worker.fleet.consumer import ALREADY_PROCESSED, QueueConsumer
from worker.fleet.record import FleetJob, FleetState
from worker.fleet.workqueue import QueueError
from worker.jobs.identity import Identity
from worker.jobs.job import Job
from worker.jobs.states import JobState
from worker.runner.pipeline import Pipeline
from worker.state.ledger import Ledger
from worker.state.queue import QueueLedger

IN, OUT = "in", "out"


def settings(tmp: Path, *, concurrency: int = 2, visibility_s: int = 30, **processing: Any) -> Settings:
    # The object's body is "<seconds> <exit code>".
    script = 'read -r s c < "$1"; sleep "$s"; echo ok > "$2/out.txt"; exit "${c:-0}"'
    return settings_from_mapping({
        "s3": {"output_bucket": OUT},
        "processing": {"command": ["/bin/sh", "-c", script, "job", "{input}", "{output_dir}"],
                       "concurrency": concurrency, "retry_base_s": 4, "retry_max_s": 4, **processing},
        "paths": {"state_dir": str(tmp / "state"), "socket": str(tmp / "d.sock")},
        "queue": {"url": "https://sqs.eu-west-1.amazonaws.com/1/q", "visibility_s": visibility_s,
                  "wait_s": 0, "table": "jobs"},
    }, {})


@dataclass
class FakeGuard:
    busy: list[bool] = field(default_factory=list)
    reason: str | None = None
    closed: bool = False

    def set_busy(self, busy: bool) -> None:
        self.busy.append(busy)

    def interruption(self) -> str | None:
        return self.reason

    def close(self) -> None:
        self.closed = True


@dataclass
class Rig:
    daemon: Daemon
    ledger: Ledger
    store: FakeStore
    queue: FakeQueue
    guard: FakeGuard
    records: FakeRecords

    def put(self, key: str, seconds: float = 0, code: int = 0) -> str:
        return self.store.put(IN, key, f"{seconds} {code}\n".encode())

    def send(self, key: str, etag: str | None, **extra: Any) -> str:
        return self.queue.send(json.dumps({"bucket": IN, "key": key, "etag": etag, **extra}))

    def job(self, key: str, etag: str | None) -> Any:
        return self.ledger.find(Identity(IN, key, None, etag))


@contextmanager
def rig(tmp: Path, **kwargs: Any) -> Iterator[Rig]:
    conf = settings(tmp, **kwargs)
    for directory in (conf.paths.work, conf.paths.job_logs):
        directory.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(conf.paths.ledger)
    store = FakeStore()
    queue = FakeQueue(journal=store.calls)  # type: ignore[arg-type]
    guard = FakeGuard()
    records = FakeRecords()
    daemon = Daemon(conf, ledger, Pipeline(conf, store, ledger), idle_wake_s=0.05,
                    work_queue=queue, job_records=records, holder="test-1", guard=guard)
    try:
        with started(daemon, conf):
            yield Rig(daemon, ledger, store, queue, guard, records)
    finally:
        ledger.close()


def until(check: Callable[[], Any], what: str) -> Any:
    # In-process and event-driven: nothing at all for this long is a hang, not a slow machine.
    return wait_until(check, stall_s=max(WAIT_S, 60.0), describe=f"waiting for {what}", interval=0.01)


def test_the_message_is_deleted_only_after_the_manifest_is_written(short_tmp: Path) -> None:
    with rig(short_tmp) as r:
        etag = r.put("a.txt")
        message = r.send("a.txt", etag)
        until(lambda: ("delete", message) in r.queue.calls, "the delete")
        job = r.job("a.txt", etag)
        assert job.state is JobState.SUCCEEDED and job.origin == "queue" and job.attempts == 1
        assert job.id == Identity(IN, "a.txt", None, etag).job_id()
    order = [c for c in r.store.calls if c[0] in ("put_json", "queue_delete")]
    assert order == [("put_json", OUT, "a.txt/_manifest.json"), ("queue_delete", message, "")]
    assert True in r.guard.busy and r.guard.busy[-1] is False and r.guard.closed


def test_it_receives_only_as_many_messages_as_it_has_free_slots(short_tmp: Path) -> None:
    with rig(short_tmp, concurrency=3) as r:
        # A local job (processorctl submit) holds one of the three slots.
        local = r.put("local.txt", 1.0)
        r.ledger.submit(Identity(IN, "local.txt", None, local))
        r.daemon.wake()
        until(lambda: r.job("local.txt", local).state is JobState.RUNNING, "the local job")
        time.sleep(0.1)  # a receive in flight when the local job started has ended
        since = len(r.queue.calls)
        etags = {f"q{n}": r.put(f"q{n}", 0.3) for n in range(5)}
        for key, etag in etags.items():
            r.send(key, etag)
        until(lambda: r.job("q0", etags["q0"]) is not None, "the first claim")
        asked_while_local_ran = [n for call, n in r.queue.calls[since:] if call == "receive"]
        until(lambda: not r.queue.messages, "every message deleted")
        assert asked_while_local_ran and max(asked_while_local_ran) <= 2, asked_while_local_ran
        asked = [n for call, n in r.queue.calls if call == "receive"]
        assert max(asked) <= 3 and min(asked) >= 1
        assert r.job("local.txt", local).state is JobState.SUCCEEDED


def test_a_malformed_message_goes_to_the_dead_letter_queue_at_once_with_its_reason(short_tmp: Path) -> None:
    with capture_logs() as logs, rig(short_tmp, concurrency=1) as r:
        bad = r.queue.send('{"bucket": "in", "key": ""}')
        etag = r.put("good.txt")
        good = r.send("good.txt", etag)
        until(lambda: ("delete", good) in r.queue.calls, "the good job")
        assert ("delete", bad) in r.queue.calls and not r.queue.messages
        assert r.queue.dead_letters == [('{"bucket": "in", "key": ""}',
                                         "malformed message: key: must not be empty", None)]
        assert not [c for c in r.queue.calls if c[0] == "set_visibility" and c[1][0] == bad]
    malformed = [e for e in logs if e["event"] == "queue_message_malformed"]
    assert malformed[0]["message_id"] == bad and malformed[0]["field"] == "key"


def test_an_existing_manifest_of_the_same_version_means_already_processed(short_tmp: Path) -> None:
    with rig(short_tmp) as r:
        etag = r.put("done.txt")
        r.store.put_json(OUT, "done.txt/_manifest.json",
                         {"source": {"bucket": IN, "key": "done.txt", "version_id": None, "etag": etag}})
        message = r.send("done.txt", etag)
        until(lambda: ("delete", message) in r.queue.calls, "the delete")
        job = r.job("done.txt", etag)
        assert job.state is JobState.SUCCEEDED
        assert r.ledger.history(job.id)[-1]["reason"] == ALREADY_PROCESSED
        assert ("download", IN, "done.txt") not in r.store.calls  # the command never ran


def test_a_manifest_of_an_older_version_does_not_stop_the_job(short_tmp: Path) -> None:
    with rig(short_tmp) as r:
        r.store.put_json(OUT, "v.txt/_manifest.json",
                         {"source": {"bucket": IN, "key": "v.txt", "version_id": None, "etag": "old"}})
        etag = r.put("v.txt")
        message = r.send("v.txt", etag)
        until(lambda: ("delete", message) in r.queue.calls, "the delete")
        assert ("download", IN, "v.txt") in r.store.calls
        assert r.store.json(OUT, "v.txt/_manifest.json")["source"]["etag"] == etag


def _sent(queue: FakeQueue) -> list[tuple[str, int]]:
    return [c[1] for c in queue.calls if c[0] == "send"]


def test_exit_75_hands_the_message_back_as_a_fresh_delayed_one_and_counts_in_the_record(
    short_tmp: Path,
) -> None:
    with rig(short_tmp) as r:
        etag = r.put("t.txt", 0, 75)
        message = r.send("t.txt", etag)
        until(lambda: ("delete", message) in r.queue.calls, "the hand-back")
        (fresh, delay), = _sent(r.queue)[1:]  # the first send is the test's own
        assert fresh != message and 2 <= delay <= 4  # backoff of 4 s, jittered
        assert not [c for c in r.queue.calls if c[0] == "set_visibility"]  # no receive spent
        job = r.job("t.txt", etag)
        assert job.state is JobState.QUEUED and job.origin == "queue"
        assert r.ledger.history(job.id)[-1]["reason"] == \
            "command asked for a retry (exit 75); handed back to the work queue"
        record = r.records.items[job.id]
        assert record.state.value == "waiting" and record.counted_attempts == 1 and not record.holder
        assert record.waiting_until is not None
        # Not locally due: the local dispatch never claims it on its own.
        assert r.ledger.claim_next() is None and r.ledger.next_due_at() is None


def test_counted_attempts_travel_in_the_fleet_record_so_the_last_one_fails(short_tmp: Path) -> None:
    with rig(short_tmp, max_attempts=3) as r:
        etag = r.put("p.txt", 0, 75)
        identity = Identity(IN, "p.txt", None, etag)
        # Two attempts spent on other instances (exit 75 each), now waiting.
        r.records.items[identity.job_id()] = FleetJob(
            identity.job_id(), IN, "p.txt", None, etag, FleetState.WAITING, rev=4, attempts=2,
            counted_attempts=2)
        message = r.send("p.txt", etag)
        until(lambda: r.queue.dead_letters, "the dead letter")
        job = r.job("p.txt", etag)
        assert job.state is JobState.FAILED and job.attempts == 3
        assert "gave up after 3 attempts" in r.store.json(OUT, "p.txt/_failed.json")["error"]
        assert ("delete", message) in r.queue.calls and not r.queue.messages
        body, reason, job_id = r.queue.dead_letters[0]
        assert job_id == job.id and "gave up after 3 attempts" in reason
        assert r.records.items[job.id].state is FleetState.FAILED


def test_the_receive_count_decides_nothing(short_tmp: Path) -> None:
    with rig(short_tmp, max_attempts=3) as r:
        etag = r.put("many.txt")
        message = r.send("many.txt", etag)
        r.queue.messages[0].receive_count = 9  # received often before (drains, outages)
        until(lambda: ("delete", message) in r.queue.calls, "the delete")
        job = r.job("many.txt", etag)
        assert job.state is JobState.SUCCEEDED and job.counted_attempts == 0 and job.attempts == 1


def test_a_duplicate_of_a_job_that_ended_here_is_deleted_without_running(short_tmp: Path) -> None:
    with rig(short_tmp) as r:
        etag = r.put("d.txt")
        first = r.send("d.txt", etag)
        until(lambda: ("delete", first) in r.queue.calls, "the first delete")
        downloads = r.store.calls.count(("download", IN, "d.txt"))
        second = r.send("d.txt", etag)
        until(lambda: ("delete", second) in r.queue.calls, "the duplicate's delete")
        assert r.store.calls.count(("download", IN, "d.txt")) == downloads == 1


def test_a_failing_receive_is_retried_and_never_stops_the_daemon(short_tmp: Path) -> None:
    with capture_logs() as logs, rig(short_tmp) as r:
        r.queue.fail_receive.extend([QueueError("receive: Transport", retryable=True, code="Transport")] * 2)
        etag = r.put("later.txt")
        message = r.send("later.txt", etag)
        until(lambda: ("delete", message) in r.queue.calls, "the delete after the outage")
    assert len([e for e in logs if e["event"] == "queue_receive_failed"]) == 2


def test_the_lease_is_extended_while_the_job_runs(short_tmp: Path) -> None:
    with rig(short_tmp, visibility_s=3) as r:
        etag = r.put("slow.txt", 2.5)
        message = r.send("slow.txt", etag)
        until(lambda: ("delete", message) in r.queue.calls, "the delete")
        extended = [c[1] for c in r.queue.calls if c[0] == "set_visibility"]
        assert (message, 3) in extended


def test_a_drain_hands_running_queue_jobs_back_at_once(short_tmp: Path) -> None:
    with rig(short_tmp, drain_timeout_s=60) as r:
        etag = r.put("long.txt", 30)
        message = r.send("long.txt", etag)
        until(lambda: r.daemon.status()["busy"] == 1, "the job to run")
        started = time.monotonic()
        r.daemon.drain()
        until(lambda: ("delete", message) in r.queue.calls, "the hand-back")
        assert [d for _, d in _sent(r.queue)[1:]] == [0]  # a fresh message, visible at once
        assert time.monotonic() - started < 15  # the command's stop, not the 60 s drain timeout
        assert r.records.items[r.job("long.txt", etag).id].counted_attempts == 0
        assert r.job("long.txt", etag).state is JobState.QUEUED
        assert r.daemon.wait(WAIT_S) == exitcodes.OK  # handing queue jobs back is no interruption


def test_the_guards_interruption_notice_starts_the_drain(short_tmp: Path) -> None:
    with capture_logs() as logs, rig(short_tmp) as r:
        etag = r.put("spot.txt", 30)
        message = r.send("spot.txt", etag)
        until(lambda: r.daemon.status()["busy"] == 1, "the job to run")
        r.guard.reason = "spot interruption notice: terminate at 12:00"
        until(lambda: ("delete", message) in r.queue.calls, "the hand-back")
        assert r.daemon.wait(WAIT_S) == exitcodes.OK
    drain = [e for e in logs if e["event"] == "drain_started"]
    assert drain[0]["reason"] == "spot interruption notice: terminate at 12:00"


def test_queue_jobs_left_running_are_handed_back_at_start_not_rerun(short_tmp: Path) -> None:
    conf = settings(short_tmp)
    with Ledger(conf.paths.ledger) as ledger:
        job, claimed = QueueLedger(ledger).claim_for_message(Identity(IN, "x.txt", None, "e"), 1, 0)
        assert claimed and job.state is JobState.RUNNING
    with rig(short_tmp) as r:
        until(lambda: r.ledger.get(job.id).state is JobState.QUEUED, "the hand-back")
        time.sleep(0.3)
        assert r.ledger.get(job.id).state is JobState.QUEUED  # not claimed from the ledger
        assert r.ledger.history(job.id)[-1]["reason"].startswith("handed back: daemon restarted")
        # A later message for the same identity claims the same row.
        r.store.put(IN, "x.txt", b"0 0\n")
        r.queue.send(json.dumps({"bucket": IN, "key": "x.txt", "etag": "e", "version_id": "v1"}))
        r.queue.send(json.dumps({"bucket": IN, "key": "x.txt", "etag": "e"}))
        until(lambda: r.ledger.get(job.id).state is not JobState.QUEUED, "the message's claim")
        assert r.ledger.get(job.id).attempts == 1


def test_slot_accounting_shares_the_slots_between_receives_and_local_claims(short_tmp: Path) -> None:
    conf = settings(short_tmp, concurrency=3)
    with Ledger(conf.paths.ledger) as ledger:
        daemon = Daemon(conf, ledger, Pipeline(conf, FakeStore(), ledger),
                        work_queue=FakeQueue(), job_records=FakeRecords(), holder="h")
        try:
            slots = daemon.slots
            assert slots.reserve_for_poll(10) == 3  # every free slot, never more
            assert slots.reserve_for_poll(10) == 0
            ledger.submit(Identity(IN, "local", None, "e"))
            assert slots.claim() is None  # the slots are reserved for the receive in flight
            job, claimed = QueueLedger(ledger).claim_for_message(Identity(IN, "q", None, "e"), 1, 0)
            assert claimed and slots.start_queue_job(job, lambda j, _t: j)
            # The receive brought one message fewer than it could take: the freed
            # slot goes to the local job at once, before the next receive can reserve it.
            slots.end_poll(1)
            assert ledger.find(Identity(IN, "local", None, "e")).state is JobState.RUNNING  # type: ignore[union-attr]
            assert slots.free() == 0 and slots.reserve_for_poll(10) == 0
            slots.end_poll(1)
            daemon._start_drain("test")
            assert slots.reserve_for_poll(10) == 0  # a drain receives nothing more
            job2, _ = QueueLedger(ledger).claim_for_message(Identity(IN, "q2", None, "e"), 1, 0)
            assert not slots.start_queue_job(job2, lambda j, _t: j)
        finally:
            daemon.slots.stop_threads(timeout_s=1)


class _DrainingSlots:
    """A daemon that reserved a slot for the receive, then began a drain before the start."""

    def reserve_for_poll(self, wanted: int) -> int:
        return wanted

    def end_poll(self, unused: int) -> None:
        pass

    def start_queue_job(self, job: Job, run: Any) -> bool:
        return False

    def wait_for_slot(self, timeout: float) -> None:
        pass


def test_a_drain_between_claim_and_start_hands_the_job_back_through_the_outcome_policy(
    short_tmp: Path,
) -> None:
    conf = settings(short_tmp)
    store, queue = FakeStore(), FakeQueue()
    with Ledger(conf.paths.ledger) as ledger, capture_logs() as logs:
        records = FakeRecords()
        consumer = QueueConsumer(conf, ledger, Pipeline(conf, store, ledger), queue, _DrainingSlots(),
                                 records, holder="h")
        etag = store.put(IN, "late.txt", b"0 0\n")
        message_id = queue.send(json.dumps({"bucket": IN, "key": "late.txt", "etag": etag}))
        received = queue.receive(1, 0)[0]
        assert consumer._take(received) == 0  # not started: no slot held
        job = ledger.find(Identity(IN, "late.txt", None, etag))
        assert job is not None and job.state is JobState.QUEUED and job.counted_attempts == 0
        assert ledger.history(job.id)[-1]["reason"] == "daemon draining; handed back to the work queue"
        # ... and its message is back at once (a fresh one), for another instance.
        assert ("delete", message_id) in queue.calls and [d for _, d in _sent(queue)[1:]] == [0]
        assert records.items[job.id].state is FleetState.QUEUED and not records.items[job.id].holder
    events = [e["event"] for e in logs if e.get("job_id") == job.id]
    assert events.index("job_requeued") < events.index("queue_message_handed_back")


def _record(key: str, etag: str, **fields: Any) -> FleetJob:
    identity = Identity(IN, key, None, etag)
    return FleetJob(identity.job_id(), IN, key, None, etag, **fields)


def test_a_duplicate_while_a_live_holder_runs_the_job_is_dropped_without_running(short_tmp: Path) -> None:
    with rig(short_tmp) as r:
        etag = r.put("busy.txt")
        r.records.items[_record("busy.txt", etag, state=FleetState.WAITING).job_id] = _record(
            "busy.txt", etag, state=FleetState.RUNNING, rev=2, holder="i-other", token="t",
            message_id="m-elsewhere", lease_until=time.time() + 300, attempts=1)
        duplicate = r.send("busy.txt", etag)
        until(lambda: ("delete", duplicate) in r.queue.calls, "the drop")
        assert ("download", IN, "busy.txt") not in r.store.calls
        assert r.records.items[r.records.newest_for_object(IN, "busy.txt")[0].job_id].holder == "i-other"


def test_the_holders_own_message_back_early_is_deferred_not_run(short_tmp: Path) -> None:
    with rig(short_tmp) as r:
        etag = r.put("own.txt")
        message = r.send("own.txt", etag)
        rec = _record("own.txt", etag, state=FleetState.RUNNING, rev=2, holder="i-other", token="t",
                      message_id=message, lease_until=time.time() + 100, attempts=1)
        r.records.items[rec.job_id] = rec
        until(lambda: any(c[0] == "set_visibility" for c in r.queue.calls), "the deferral")
        (mid, delay), = [c[1] for c in r.queue.calls if c[0] == "set_visibility"]
        assert mid == message and 95 <= delay <= 105
        assert ("download", IN, "own.txt") not in r.store.calls


def test_a_dead_holders_job_is_taken_over_and_the_last_death_fails_it(short_tmp: Path) -> None:
    with capture_logs() as logs, rig(short_tmp, max_attempts=3) as r:
        etag = r.put("poison.txt")
        rec = _record("poison.txt", etag, state=FleetState.RUNNING, rev=7, holder="i-gone", token="t",
                      message_id="m-old", lease_until=time.time() - 1, attempts=3, counted_attempts=2)
        r.records.items[rec.job_id] = rec
        message = r.send("poison.txt", etag)
        until(lambda: r.queue.dead_letters, "the dead letter")
        assert ("download", IN, "poison.txt") not in r.store.calls  # never run again
        job = r.job("poison.txt", etag)
        assert job.state is JobState.FAILED and "holder died during 3 attempts" in (job.error or "")
        assert "holder died during 3 attempts" in r.store.json(OUT, "poison.txt/_failed.json")["error"]
        assert ("delete", message) in r.queue.calls and not r.queue.messages
        assert r.records.items[rec.job_id].state is FleetState.FAILED
    assert [e for e in logs if e["event"] == "job_holder_died"]


def test_while_s3_is_down_the_daemon_stops_receiving_then_resumes(short_tmp: Path) -> None:
    with rig(short_tmp, concurrency=1, retry_base_s=1, retry_max_s=1) as r:
        etag = r.put("o.txt")
        r.store.down = True
        first = r.send("o.txt", etag)
        until(lambda: ("delete", first) in r.queue.calls, "the hand-back")
        until(lambda: r.daemon.status()["queue"]["paused"], "the pause")
        assert "storage unavailable since" in r.daemon.status()["queue"]["paused"]
        assert "receiving paused" in r.daemon._report.text()
        receives = len([c for c in r.queue.calls if c[0] == "receive"])
        time.sleep(2.5)  # two probe intervals: probes, but no receive
        assert len([c for c in r.queue.calls if c[0] == "receive"]) == receives
        r.store.down = False
        until(lambda: r.job("o.txt", etag).state is JobState.SUCCEEDED, "the job after the outage")
        assert r.daemon.status()["queue"]["paused"] is None
        job = r.job("o.txt", etag)
        assert job.counted_attempts == 0 and r.records.items[job.id].counted_attempts == 0
        assert ("o.txt/_failed.json") not in {k for _, k in r.store.objects}


def test_a_freed_slot_reaches_the_receiver_without_a_timed_wait(short_tmp: Path, monkeypatch: Any) -> None:
    import worker.fleet.consumer as consumer

    # A lost wake-up would now stall for an hour (and the liveness bound fail).
    monkeypatch.setattr(consumer, "SLOT_WAIT_S", 3600.0)
    with rig(short_tmp, concurrency=1) as r:
        claim_next = r.ledger.claim_next

        def slow_claim_next() -> Any:
            # The slot thread's look for a local job holds the freed slot a moment:
            # the receiver wakes meanwhile, finds no slot and waits again.
            time.sleep(0.05)
            return claim_next()

        monkeypatch.setattr(r.ledger, "claim_next", slow_claim_next)
        sent = []
        for n in range(6):
            etag = r.put(f"seq{n}.txt")
            sent.append(r.send(f"seq{n}.txt", etag))
        until(lambda: all(("delete", m) in r.queue.calls for m in sent), "every message")


def test_a_lost_claim_stops_the_job_and_leaves_the_message_to_the_new_holder(short_tmp: Path) -> None:
    from dataclasses import replace

    with capture_logs() as logs, rig(short_tmp, visibility_s=3) as r:
        etag = r.put("lost.txt", 30)
        message = r.send("lost.txt", etag)
        until(lambda: r.daemon.status()["busy"] == 1, "the job to run")
        job_id = Identity(IN, "lost.txt", None, etag).job_id()
        # Another instance took the claim over (this one's renewals did not land).
        r.records.items[job_id] = replace(r.records.items[job_id], holder="i-other", token="t-other")
        until(lambda: r.job("lost.txt", etag).state is JobState.QUEUED, "the job to stop")
        until(lambda: r.daemon.status()["busy"] == 0, "the slot to free")
        assert ("delete", message) not in r.queue.calls and len(_sent(r.queue)) == 1  # untouched
        assert r.records.items[job_id].holder == "i-other"
    assert [e for e in logs if e["event"] == "job_claim_lost"]
    assert [e for e in logs if e["event"] == "queue_message_left"]


def test_a_queue_job_expires_old_job_logs_as_a_local_one_does(short_tmp: Path) -> None:
    import os

    with rig(short_tmp) as r:
        old = r.daemon.settings.paths.job_log("j-00000000000000000000")
        old.parent.mkdir(parents=True, exist_ok=True)
        old.write_text("an old job's output\n")
        forty_days_ago = time.time() - 40 * 86400  # past the default retention (30 days)
        os.utime(old, (forty_days_ago, forty_days_ago))
        etag = r.put("e.txt")
        message = r.send("e.txt", etag)
        until(lambda: ("delete", message) in r.queue.calls, "the delete")
        assert not old.exists()


def test_a_stop_that_escapes_the_attempt_hands_the_message_back_uncounted(short_tmp: Path) -> None:
    """Interrupted is a BaseException: should one get past Pipeline._attempt, the consumer's
    slot path takes it as the stop it is (handed back, nothing counted), never as a crash."""
    from worker.errors import Interrupted
    from worker.jobs.outcome import Attempt
    from worker.runner.process import StopToken

    with capture_logs() as logs, rig(short_tmp) as r:
        pipeline = r.daemon.pipeline
        real, escaped = pipeline.attempt, []

        def attempt(job: Job, cancel: StopToken | None = None, log: Any = None) -> Attempt:
            if not escaped:
                escaped.append(job.id)
                raise Interrupted(StopToken.SHUTDOWN)
            return real(job, cancel, log)

        pipeline.attempt = attempt  # type: ignore[method-assign]
        etag = r.put("stop.txt")
        message = r.send("stop.txt", etag)
        until(lambda: ("delete", message) in r.queue.calls, "the hand-back")
        fresh, delay = _sent(r.queue)[1]
        assert fresh != message and delay == 0  # visible at once, like a drain's hand-back
        job_id = Identity(IN, "stop.txt", None, etag).job_id()
        # The fresh message runs the job (the stop escaped once): nothing was counted.
        until(lambda: ("delete", fresh) in r.queue.calls, "the fresh message's delete")
        requeued = [h["reason"] for h in r.ledger.history(job_id) if h["to_state"] == "queued"]
        assert requeued[-1].startswith("interrupted by daemon shutdown")
        assert r.job("stop.txt", etag).state is JobState.SUCCEEDED
        assert r.records.items[job_id].counted_attempts == 0
    assert escaped == [job_id]
    assert not [e for e in logs if e["event"] == "job_crashed"]
    assert [e["reason"] for e in logs if e["event"] == "job_stop_escaped_attempt"] == [StopToken.SHUTDOWN]
