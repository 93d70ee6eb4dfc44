"""A fleet of real daemons (`processor run`) sharing one SQS work queue on the emulator.

Every daemon is a child process with its own state dir; they share one moto
SQS queue (with a DLQ by redrive policy) and one moto S3. Messages are sent
with boto3 directly. The processing command is a small shell script: it reads
"<seconds> <exit code>" from the object, appends one line per run to a shared
file (key, start time, work dir - so which daemon ran it), sleeps, writes one
output and exits with the code. Every wait is a liveness bound.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import waiting
from tests.support.daemon import daemon as support_daemon
from tests.support.daemon import log_events as events
from tests.support.daemon import processorctl, submit, write_config
from tests.support.report import REPORT
from worker.ctl.control_client import request
from worker.fleet.dynamo import table_definition
from worker.runner.process import reap_orphans

IN, OUT = "fleet-in", "fleet-out"
#: The fleet's job record table (DynamoDB on the emulator).
TABLE = "fleet-jobs"
#: The lease of the tests' daemons (and the queue's default visibility).
LEASE_S = 10
#: How long a wait may go without progress before a test fails.
STALL_S = 60


@dataclass
class Fleet:
    s3: Any
    sqs: Any
    queue_url: str
    dlq_url: str
    endpoint: str
    root: Path
    runs: Path
    script: Path
    dynamodb: Any = None
    table: str = TABLE

    def config(self, name: str, *, processing: dict[str, Any] | None = None, s3_endpoint: str = "",
               **queue: Any) -> Path:
        directory = self.root / name
        directory.mkdir(exist_ok=True)
        config = write_config(
            directory, output_bucket=OUT, endpoint=s3_endpoint or self.endpoint,
            command=["/bin/sh", str(self.script), "{input}", "{output_dir}"],
            **{"concurrency": 2, "max_attempts": 3, "kill_grace_s": 2, "retry_base_s": 1,
               "retry_max_s": 2, "drain_timeout_s": 30, **(processing or {})},
        )
        settings = {"url": self.queue_url, "endpoint_url": self.endpoint, "visibility_s": LEASE_S,
                    "wait_s": 2, "table": self.table, "holder": name, **queue}
        with config.open("a") as fh:
            fh.write("[queue]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))
        return config

    def put(self, key: str, seconds: float, code: int = 0) -> str:
        etag: str = self.s3.put_object(Bucket=IN, Key=key, Body=f"{seconds} {code}\n".encode())["ETag"]
        return etag.strip('"')

    def send(self, key: str, etag: str | None = None, **extra: Any) -> None:
        body = {"bucket": IN, "key": key, "version_id": None, "etag": etag, **extra}
        self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=json.dumps(body))

    def send_raw(self, body: str) -> None:
        self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=body)

    def run_lines(self) -> list[tuple[str, float, str]]:
        """(key, start time, daemon dir name) per command run."""
        if not self.runs.exists():
            return []
        lines = []
        for line in self.runs.read_text().splitlines():
            key, started, cwd = line.split(" ", 2)
            daemon_dir = Path(cwd).relative_to(self.root).parts[0]
            lines.append((key, float(started), daemon_dir))
        return lines

    def done(self) -> set[str]:
        """The keys whose _manifest.json is in the output bucket."""
        found = set()
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=OUT):
            for obj in page.get("Contents", []):
                if obj["Key"].endswith("/_manifest.json"):
                    found.add(obj["Key"][: -len("/_manifest.json")])
        return found

    def manifests(self) -> dict[str, dict[str, Any]]:
        return {
            key: json.loads(self.s3.get_object(Bucket=OUT, Key=f"{key}/_manifest.json")["Body"].read())
            for key in self.done()
        }

    def queue_counts(self, url: str | None = None) -> tuple[int, int]:
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=url or self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])


@pytest.fixture
def fleet(aws: Callable[[str], Any], moto_endpoint: str, short_tmp: Path) -> Fleet:
    s3, sqs = aws("s3"), aws("sqs")
    s3.create_bucket(Bucket=IN)
    s3.create_bucket(Bucket=OUT)
    dlq = sqs.create_queue(QueueName="fleet-dlq")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    # maxReceiveCount above processing.max_attempts (3), as the README requires.
    queue = sqs.create_queue(QueueName="fleet-work", Attributes={
        "VisibilityTimeout": str(LEASE_S),
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": "5"}),
    })["QueueUrl"]
    runs = short_tmp / "runs.txt"
    script = short_tmp / "job.sh"
    script.write_text(
        'read -r secs code < "$1"\n'
        f'printf "%s %s %s\\n" "$PROCESSOR_SOURCE_KEY" "$(date +%s.%N)" "$PWD" >> {runs}\n'
        'sleep "$secs"\n'
        'echo ok > "$2/out.txt"\n'
        'exit "${code:-0}"\n'
    )
    dynamodb = aws("dynamodb")
    dynamodb.create_table(**table_definition(TABLE))
    return Fleet(s3, sqs, queue, dlq, moto_endpoint, short_tmp, runs, script, dynamodb)


def daemon(config: Path, timeout: float = 30) -> AbstractContextManager[subprocess.Popen[bytes]]:
    """`processor run` on ``config`` (its socket beside it): tests/support/daemon.py's."""
    return support_daemon(config, config.parent / "p.sock", stall_s=timeout)


def wait_until(what: str, check: Callable[[], Any], progress: Callable[[], Any] = lambda: None,
               stall_s: float = STALL_S) -> Any:
    """Poll ``check`` until truthy; fail when ``progress()`` has not changed for ``stall_s``."""
    return waiting.wait_until(check, stall_s=stall_s, progress=progress, interval=0.1,
                              describe=f"waiting for {what}")


def greedy_makespan(durations: list[float], slots: int) -> float:
    """Each job, in order, to the slot that frees first."""
    free = [0.0] * slots
    for d in durations:
        free.sort()
        free[0] += d
    return max(free)


def test_three_daemons_balance_exactly_once_and_ignore_duplicates(fleet: Fleet) -> None:
    rng = random.Random(12)
    long_s, jobs = 20.0, []
    for n in range(4):
        jobs.append((f"long/{n}", long_s))
    for n in range(26):
        jobs.append((f"short/{n:02d}", round(rng.uniform(1.5, 2.5), 2)))
    etags = {key: fleet.put(key, seconds) for key, seconds in jobs}
    configs = [fleet.config(f"d{n}") for n in range(3)]
    duplicates = [key for key, _ in jobs[4:]][:6]  # 20 % extra messages
    with ExitStack() as stack:
        for config in configs:
            stack.enter_context(daemon(config))
        started, started_wall = time.monotonic(), time.time()
        for key, _ in jobs:
            fleet.send(key, etags[key])
        sent_dup: set[str] = set()

        def all_done() -> bool:
            done = fleet.done()
            # A duplicate goes out once its original's result is there (the
            # reconciler's double send); the manifest check must absorb it.
            for key in duplicates:
                if key in done and key not in sent_dup:
                    fleet.send(key, etags[key], note="duplicate")
                    sent_dup.add(key)
            return len(done) == len(jobs)

        wait_until("every manifest", all_done, lambda: len(fleet.run_lines()))
        makespan = time.monotonic() - started
        wait_until("the duplicates to be deleted", lambda: fleet.queue_counts() == (0, 0),
                   lambda: fleet.queue_counts())
    # The ideal: the same jobs, each taking as long as it took here (its command
    # plus its download and upload), greedily on 6 slots in the order sent.
    took: dict[str, float] = {}
    for config in configs:
        for e in events(config, "job_finished"):
            took[e["key"]] = max(took.get(e["key"], 0.0), e["duration_s"])
    ideal = greedy_makespan([took[key] for key, _ in jobs], 6)
    nominal = greedy_makespan([s for _, s in jobs], 6)
    timeline = sorted((round(t - started_wall, 1), who, key) for key, t, who in fleet.run_lines())
    REPORT.append(f"queue fleet 3x2: makespan {makespan:.1f}s, ideal {ideal:.1f}s "
                  f"(commands alone {nominal:.1f}s), ratio {makespan / ideal:.2f}")
    assert makespan <= 1.15 * ideal + 5.0, (makespan, ideal, timeline)
    runs = [key for key, _, _ in fleet.run_lines()]
    assert sorted(runs) == sorted(key for key, _ in jobs), "each object ran exactly once"
    manifests = fleet.manifests()
    assert set(manifests) == {key for key, _ in jobs}
    assert all(m["source"]["etag"] == etags[k] for k, m in manifests.items())
    assert {daemon_dir for _, _, daemon_dir in fleet.run_lines()} == {"d0", "d1", "d2"}
    # Each duplicate ended at a manifest check: on another daemon (job_already_processed)
    # or on the one whose ledger holds the job as succeeded (queue_duplicate_dropped).
    already = {e["job_id"] for c in configs for e in events(c, "job_already_processed")}
    dropped = {e["job_id"] for c in configs for e in events(c, "queue_duplicate_dropped")}
    assert len(already) + len(dropped) == len(duplicates)
    assert already | dropped == {m["job_id"] for k, m in manifests.items() if k in duplicates}
    assert fleet.queue_counts(fleet.dlq_url) == (0, 0)


def test_kill_9_of_a_daemon_loses_nothing(fleet: Fleet) -> None:
    keys = [f"k9/{n}" for n in range(6)]
    etags = {key: fleet.put(key, 6) for key in keys}
    configs = [fleet.config(f"d{n}") for n in range(3)]
    with ExitStack() as stack:
        procs = [stack.enter_context(daemon(config)) for config in configs]
        for key in keys:
            fleet.send(key, etags[key])
        victim = wait_until(
            "a daemon running two jobs",
            lambda: next((d for d in ("d0", "d1", "d2")
                          if sum(1 for _, _, who in fleet.run_lines() if who == d) == 2), None),
            lambda: len(fleet.run_lines()),
        )
        interrupted = {key for key, _, who in fleet.run_lines() if who == victim}
        index = int(victim[1:])
        procs[index].kill()
        killed_at = time.time()
        procs[index].wait(timeout=10)
        # The instance is gone: so are its commands.
        reap_orphans(configs[index].parent / "state" / "work")
        wait_until("every manifest", lambda: len(fleet.done()) == len(keys),
                   lambda: len(fleet.run_lines()))
    runs = fleet.run_lines()
    for key in interrupted:
        reruns = [t for k, t, who in runs if k == key and who != victim]
        assert len(reruns) == 1, (key, runs)
        late = reruns[0] - killed_at
        assert late <= LEASE_S + 5, f"{key} restarted {late:.1f}s after the kill"
    assert sorted(k for k, _, _ in runs) == sorted(keys + list(interrupted))
    assert set(fleet.manifests()) == set(keys)


def test_sigterm_hands_unfinished_jobs_to_the_others_within_seconds(fleet: Fleet) -> None:
    keys = ["term/a", "term/b"]
    etags = {key: fleet.put(key, 8) for key in keys}
    first, *others = [fleet.config(f"d{n}") for n in range(3)]
    with ExitStack() as stack:
        proc = stack.enter_context(daemon(first))
        for key in keys:
            fleet.send(key, etags[key])
        wait_until("both jobs running on d0", lambda: len(fleet.run_lines()) == 2,
                   lambda: len(fleet.run_lines()))
        for config in others:
            stack.enter_context(daemon(config))
        proc.send_signal(signal.SIGTERM)
        termed_at = time.time()
        wait_until("the others to start both jobs",
                   lambda: sum(1 for _, _, who in fleet.run_lines() if who != "d0") == 2,
                   lambda: len(fleet.run_lines()))
        assert proc.wait(timeout=60) == 0
        wait_until("every manifest", lambda: len(fleet.done()) == len(keys),
                   lambda: len(fleet.run_lines()))
    taken = [t - termed_at for _, t, who in fleet.run_lines() if who != "d0"]
    assert max(taken) <= 5.0, taken
    # Handed back as fresh messages, visible at once: a drain spends no receive.
    released = events(first, "queue_message_handed_back")
    assert len(released) == 2 and all(e["visible_in_s"] == 0 for e in released)
    assert not events(first, "queue_message_released")
    shown = json.loads(processorctl(first, "list", "--json").stdout)
    assert {j["state"] for j in shown} == {"queued"} and {j["origin"] for j in shown} == {"queue"}


def test_malformed_messages_go_to_the_dlq_and_never_stop_a_daemon(fleet: Fleet) -> None:
    # A short default visibility so the malformed ones come back (and reach the DLQ) fast.
    fleet.sqs.set_queue_attributes(QueueUrl=fleet.queue_url, Attributes={
        "VisibilityTimeout": "1",
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": fleet.sqs.get_queue_attributes(
            QueueUrl=fleet.dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"],
            "maxReceiveCount": "2"}),
    })
    bad = {
        "not JSON": "{not json",
        "not an object": json.dumps(["fleet-in", "k"]),
        "missing key": json.dumps({"bucket": IN}),
        "key not a string": json.dumps({"bucket": IN, "key": 7}),
        "empty key": json.dumps({"bucket": IN, "key": ""}),
        "another bucket": json.dumps({"bucket": "someone-else", "key": "x"}),
        "etag not a string": json.dumps({"bucket": IN, "key": "x", "etag": 5}),
    }
    keys = [f"good/{n}" for n in range(4)]
    etags = {key: fleet.put(key, 0.5) for key in keys}
    configs = [fleet.config(f"d{n}", input_bucket=IN) for n in range(2)]
    with ExitStack() as stack:
        procs = [stack.enter_context(daemon(config)) for config in configs]
        for body in bad.values():
            fleet.send_raw(body)
        for key in keys:
            fleet.send(key, etags[key])
        wait_until("every good job", lambda: len(fleet.done()) == len(keys),
                   lambda: len(fleet.run_lines()))
        wait_until("the malformed messages in the DLQ",
                   lambda: fleet.queue_counts(fleet.dlq_url)[0] == len(bad),
                   lambda: fleet.queue_counts(fleet.dlq_url))
        # Sent there by the daemons at their first receive, each with its reason.
        dead = fleet.sqs.receive_message(QueueUrl=fleet.dlq_url, MaxNumberOfMessages=10,
                                         MessageAttributeNames=["All"], VisibilityTimeout=30)["Messages"]
        reasons = {m["Body"]: m["MessageAttributes"]["reason"]["StringValue"] for m in dead}
        assert set(reasons) == set(bad.values())
        assert reasons[bad["empty key"]] == "malformed message: key: must not be empty"
        assert all(p.poll() is None for p in procs)
        for config in configs:
            assert request(config.parent / "p.sock", "ping", timeout=5)["pid"]
    assert fleet.queue_counts() == (0, 0)
    logged = [e for c in configs for e in events(c, "queue_message_malformed")]
    assert {e["field"] for e in logged} >= {"body", "key", "bucket", "etag"}
    assert all(e["message_id"] for e in logged)


def test_exit_75_retries_across_instances_and_fails_at_max_attempts(fleet: Fleet) -> None:
    etag = fleet.put("retry/x", 0.3, 75)
    # d0's backoff (3-6 s) outlasts its last long poll (2 s), so d0 never receives
    # the message again while it drains.
    first = fleet.config("d0", processing={"retry_base_s": 6, "retry_max_s": 6})
    second = fleet.config("d1")
    with daemon(first) as proc:
        fleet.send("retry/x", etag)
        job_id = wait_until(
            "the first attempt to be handed back",
            lambda: next((j["id"] for j in json.loads(processorctl(first, "list", "--json").stdout)
                          if j["state"] == "queued" and j["attempts"] == 1), None),
            lambda: len(fleet.run_lines()))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    released = events(first, "queue_message_handed_back")
    assert len(released) == 1 and 3 <= released[0]["visible_in_s"] <= 6, released
    with daemon(second):
        wait_until("_failed.json", lambda: _exists(fleet.s3, OUT, "retry/x/_failed.json"),
                   lambda: len(fleet.run_lines()))
        wait_until("the message to be deleted", lambda: fleet.queue_counts() == (0, 0),
                   lambda: fleet.queue_counts())
        job = json.loads(processorctl(second, "show", job_id, "--json").stdout)
    failed = json.loads(fleet.s3.get_object(Bucket=OUT, Key="retry/x/_failed.json")["Body"].read())
    assert failed["attempts"] == 3 and "gave up after 3 attempts" in failed["error"]
    assert job["state"] == "failed" and job["attempts"] == 3
    assert [who for _, _, who in fleet.run_lines()] == ["d0", "d1", "d1"]
    # Failed for good: its message is in the DLQ, with the reason.
    (dead,) = fleet.sqs.receive_message(QueueUrl=fleet.dlq_url, MessageAttributeNames=["All"],
                                        VisibilityTimeout=30)["Messages"]
    assert "gave up after 3 attempts" in dead["MessageAttributes"]["reason"]["StringValue"]
    assert dead["MessageAttributes"]["job_id"]["StringValue"] == job_id


def test_restart_hands_queue_jobs_back_instead_of_rerunning_them(fleet: Fleet) -> None:
    etag = fleet.put("restart/x", 8)
    config = fleet.config("d0")
    with daemon(config) as proc:
        fleet.send("restart/x", etag)
        wait_until("the job to run", lambda: len(fleet.run_lines()) == 1, lambda: 0)
        proc.kill()
        killed_at = time.monotonic()
        proc.wait(timeout=10)
    with daemon(config):
        job = json.loads(processorctl(config, "list", "--json").stdout)[0]
        assert job["state"] == "queued" and job["origin"] == "queue"
        reasons = [t["reason"] for t in json.loads(processorctl(config, "show", job["id"], "--json").stdout)
                   ["transitions"]]
        assert any(r and r.startswith("handed back: daemon restarted") for r in reasons), reasons
        # It waits in the queue, not here: no local backlog to report.
        live = json.loads(processorctl(config, "status", "--json").stdout)["daemon"]
        assert live["oldest_queued_age_s"] is None
        # Not re-run from the ledger: nothing starts while the message is still leased ...
        while time.monotonic() - killed_at < LEASE_S * 2 / 3 - 1:
            assert len(fleet.run_lines()) == 1
            time.sleep(0.2)
        # ... and it runs again once the message comes back through the queue.
        wait_until("the rerun", lambda: len(fleet.run_lines()) == 2, lambda: 0)
        status = processorctl(config, "status")
        assert f"work queue: {fleet.queue_url}, 1 message(s) held, receiving" in status.stdout, status.stdout
        held = json.loads(processorctl(config, "status", "--json").stdout)["daemon"]["queue"]
        assert held["url"] == fleet.queue_url and held["held"] == 1
        wait_until("the manifest", lambda: "restart/x" in fleet.done(), lambda: len(fleet.run_lines()))
    assert len(fleet.run_lines()) == 2
    assert events(config, "job_handed_back")


def _exists(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except s3.exceptions.ClientError:
        return False
    return True


def test_an_unreachable_queue_never_stops_the_daemon_or_its_local_jobs(fleet: Fleet) -> None:
    import socket

    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    config = fleet.config("d0", url=f"{dead}/123456789012/gone", endpoint_url=dead)
    etag = fleet.put("local/x", 0)
    with daemon(config) as proc:
        submit(config, IN, "local/x", etag)
        wait_until("the local job", lambda: "local/x" in fleet.done(), lambda: len(fleet.run_lines()))
        wait_until("a failed receive logged", lambda: events(config, "queue_receive_failed"), lambda: 0)
        assert proc.poll() is None
        assert "work queue:" in processorctl(config, "status").stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    failed = events(config, "queue_receive_failed")
    assert "transport error" in failed[0]["error"]


def test_a_spot_notice_drains_the_daemon_and_the_others_take_its_jobs(fleet: Fleet) -> None:
    """`processor run` builds the instance guard from [instance]: a Spot interruption
    notice in the instance metadata service drains the daemon like SIGTERM would."""
    from tests.support.servers import Imds

    keys = ["spot/a", "spot/b"]
    etags = {key: fleet.put(key, 8) for key in keys}
    with Imds({"instance-id": "i-0123456789abcdef0", "placement/region": "us-east-1"}) as imds:
        first = fleet.config("d0")
        with first.open("a") as fh:
            fh.write(f'[instance]\nwatch_spot_interruption = true\nimds_url = "{imds.endpoint}"\n'
                     "poll_s = 1\n")
        other = fleet.config("d1")
        with ExitStack() as stack:
            proc = stack.enter_context(daemon(first))
            for key in keys:
                fleet.send(key, etags[key])
            wait_until("both jobs running on d0", lambda: len(fleet.run_lines()) == 2,
                       lambda: len(fleet.run_lines()))
            stack.enter_context(daemon(other))
            assert proc.poll() is None and not events(first, "drain_started")
            imds.items["spot/instance-action"] = '{"action": "terminate", "time": "2026-12-02T10:00:00Z"}'
            noticed_at = time.time()
            wait_until("d1 to start both jobs",
                       lambda: sum(1 for _, _, who in fleet.run_lines() if who == "d1") == 2,
                       lambda: len(fleet.run_lines()))
            assert proc.wait(timeout=60) == 0  # drained, then stopped cleanly
            wait_until("every manifest", lambda: len(fleet.done()) == len(keys),
                       lambda: len(fleet.run_lines()))
    taken = [t - noticed_at for _, t, who in fleet.run_lines() if who == "d1"]
    # The guard polls every second; the messages are handed back as soon as each command stopped.
    assert max(taken) <= 10.0, taken
    (drain,) = events(first, "drain_started")
    assert "spot interruption notice: terminate at 2026-12-02T10:00:00Z" in drain["reason"]
    assert {m["source"]["key"] for m in fleet.manifests().values()} == set(keys)


# -- the fleet's job record (issue 18): attempts are the job's, not the queue's ----------

#: How long S3 stays down in the outage test. 30 s in the suite (the old code had
#: moved every message to the DLQ within ~20 s: four hand-backs at 1-4 s each);
#: PROCESSOR_TEST_OUTAGE_S=150 for issue 18's full figure (2 min more suite time).
OUTAGE_S = float(os.environ.get("PROCESSOR_TEST_OUTAGE_S", "30"))


def _record(fleet: Fleet, key: str, etag: str) -> dict[str, Any]:
    from worker.fleet.dynamo import from_item
    from worker.jobs.identity import Identity

    job_id = Identity(IN, key, None, etag).job_id()
    item = fleet.dynamodb.get_item(TableName=fleet.table, Key={"job_id": {"S": job_id}}).get("Item")
    assert item, f"no fleet record for {key}"
    record = from_item(item)
    return {"job_id": record.job_id, "state": record.state.value, "attempts": record.attempts,
            "counted_attempts": record.counted_attempts, "error": record.error, "holder": record.holder}


def _status(config: Path) -> dict[str, Any]:
    shown = processorctl(config, "status", "--json")
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)["daemon"]  # type: ignore[no-any-return]


@pytest.mark.timeout(int(OUTAGE_S) + 240)
def test_an_s3_outage_pauses_the_fleet_and_fails_nothing(fleet: Fleet) -> None:
    from tests.support.faultproxy import FaultProxy

    keys = [f"outage/{n}" for n in range(6)]
    etags = {key: fleet.put(key, 0.5) for key in keys}
    with FaultProxy(fleet.endpoint, rate=0.0) as proxy:
        # Only S3 goes through the proxy; SQS and the job records stay up.
        configs = [fleet.config(f"d{n}", s3_endpoint=proxy.endpoint,
                                processing={"retry_base_s": 1, "retry_max_s": 4}) for n in range(2)]
        with ExitStack() as stack:
            procs = [stack.enter_context(daemon(config)) for config in configs]
            proxy.outage.set()
            down_at = time.monotonic()
            for key in keys:
                fleet.send(key, etags[key])
            wait_until("both daemons to pause",
                       lambda: all(_status(c)["queue"]["paused"] for c in configs),
                       lambda: sum(len(events(c, "queue_message_handed_back")) for c in configs))
            pause = _status(configs[0])["queue"]["paused"]
            assert pause.startswith("paused: storage unavailable since"), pause
            assert "receiving paused: storage unavailable" in processorctl(configs[0], "status").stdout
            while time.monotonic() - down_at < OUTAGE_S:
                assert all(p.poll() is None for p in procs)
                time.sleep(1)
            proxy.outage.clear()
            wait_until("every manifest", lambda: len(fleet.done()) == len(keys),
                       lambda: (len(fleet.run_lines()), proxy.counts["forward"]))
            # A daemon whose probe has not come round yet resumes within retry_max_s.
            wait_until("both daemons to resume",
                       lambda: all(_status(c)["queue"]["paused"] is None for c in configs))
            assert all(p.poll() is None for p in procs)
    runs = [k for k, _, _ in fleet.run_lines()]
    assert sorted(runs) == sorted(keys)  # every job exactly once (the outage came before any run)
    assert not [k for k in keys if _exists(fleet.s3, OUT, f"{k}/_failed.json")]
    assert fleet.queue_counts(fleet.dlq_url) == (0, 0) and fleet.queue_counts() == (0, 0)
    assert all(_record(fleet, k, etags[k])["counted_attempts"] == 0 for k in keys)
    paused = [e for c in configs for e in events(c, "queue_receiving_paused")]
    resumed = [e for c in configs for e in events(c, "queue_receiving_resumed")]
    assert paused and resumed
    REPORT.append(f"fleet S3 outage {OUTAGE_S:.0f}s: 2 daemons paused and resumed; {len(keys)}/{len(keys)} "
                  f"succeeded once, DLQ empty; hand-backs during the outage: "
                  f"{sum(len(events(c, 'queue_message_handed_back')) for c in configs)}")


def test_three_drains_spend_no_attempt(fleet: Fleet) -> None:
    etag = fleet.put("drain/x", 6)
    config = fleet.config("d0")
    for n in range(3):
        with daemon(config) as proc:
            if n == 0:
                fleet.send("drain/x", etag)
            wait_until(f"run {n + 1}", lambda n=n: len(fleet.run_lines()) == n + 1, lambda: 0)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
    with daemon(config):
        wait_until("the manifest", lambda: "drain/x" in fleet.done(), lambda: len(fleet.run_lines()))
    assert len(fleet.run_lines()) == 4
    assert not _exists(fleet.s3, OUT, "drain/x/_failed.json")
    assert fleet.queue_counts(fleet.dlq_url) == (0, 0)
    record = _record(fleet, "drain/x", etag)
    assert record["state"] == "succeeded" and record["counted_attempts"] == 0 and record["attempts"] == 4
    # Each drain handed the running job back (a receive in flight may hand one more back).
    assert len(events(config, "queue_message_handed_back")) >= 3
    assert not events(config, "queue_message_released")  # never by spending a receive


def test_holder_deaths_count_and_fail_the_job_at_max_attempts(fleet: Fleet) -> None:
    etag = fleet.put("death/x", 60)
    config = fleet.config("d0", processing={"max_attempts": 3})
    for n in range(3):
        with daemon(config) as proc:
            if n == 0:
                fleet.send("death/x", etag)
            wait_until(f"run {n + 1}", lambda n=n: len(fleet.run_lines()) == n + 1,
                       lambda: fleet.queue_counts(), stall_s=LEASE_S * 3 + STALL_S)
            proc.kill()
            proc.wait(timeout=10)
            reap_orphans(config.parent / "state" / "work")
    with daemon(config):
        wait_until("_failed.json", lambda: _exists(fleet.s3, OUT, "death/x/_failed.json"),
                   lambda: fleet.queue_counts(), stall_s=LEASE_S * 3 + STALL_S)
        wait_until("the message to leave the queue", lambda: fleet.queue_counts() == (0, 0),
                   lambda: fleet.queue_counts())
    assert len(fleet.run_lines()) == 3  # never run a 4th time
    failed = json.loads(fleet.s3.get_object(Bucket=OUT, Key="death/x/_failed.json")["Body"].read())
    assert "holder died during 3 attempts" in failed["error"], failed
    record = _record(fleet, "death/x", etag)
    assert record["state"] == "failed" and record["counted_attempts"] == 3
    (dead,) = fleet.sqs.receive_message(QueueUrl=fleet.dlq_url, MessageAttributeNames=["All"],
                                        VisibilityTimeout=30)["Messages"]
    assert "holder died during 3 attempts" in dead["MessageAttributes"]["reason"]["StringValue"]


def test_concurrent_duplicates_run_nothing_extra(fleet: Fleet) -> None:
    keys = [f"dup/{n}" for n in range(10)]
    etags = {key: fleet.put(key, 8) for key in keys}
    configs = [fleet.config(f"d{n}", processing={"concurrency": 4}) for n in range(3)]
    with ExitStack() as stack:
        for config in configs:
            stack.enter_context(daemon(config))
        for key in keys:
            fleet.send(key, etags[key])
        wait_until("all ten running", lambda: len(fleet.run_lines()) == len(keys),
                   lambda: len(fleet.run_lines()))
        for _ in range(2):
            for key in keys:
                fleet.send(key, etags[key])
        wait_until("every manifest", lambda: len(fleet.done()) == len(keys), lambda: len(fleet.run_lines()))
        wait_until("the queue to empty", lambda: fleet.queue_counts() == (0, 0), lambda: fleet.queue_counts())
    runs = [k for k, _, _ in fleet.run_lines()]
    assert sorted(runs) == sorted(keys), runs  # 0 extra command runs
    assert set(fleet.manifests()) == set(keys)
    dropped = [e for c in configs for e in events(c, "queue_duplicate_dropped")]
    assert len(dropped) == 2 * len(keys)
    assert fleet.queue_counts(fleet.dlq_url) == (0, 0)


def _ctl_json(config: Path, *args: str) -> Any:
    done = processorctl(config, *args, "--json")
    assert done.returncode == 0, (args, done.stderr)
    return json.loads(done.stdout)


def test_the_fleet_view_answers_for_every_instance(fleet: Fleet) -> None:
    quick = {"view/ok": (0.2, 0), "view/bad": (0.2, 2), "view/wait": (0.2, 75)}
    long_keys = [f"view/long/{n}" for n in range(3)]
    etags = {key: fleet.put(key, *quick[key]) for key in quick}
    etags.update({key: fleet.put(key, 120) for key in [*long_keys, "view/queued"]})
    # One slot each; exit 75's backoff is minutes, so that job waits while we look.
    processing = {"concurrency": 1, "retry_base_s": 600, "retry_max_s": 600}
    configs = [fleet.config(f"d{n}", processing=processing) for n in range(3)]
    with ExitStack() as stack:
        for config in configs:
            stack.enter_context(daemon(config))
        for key in quick:
            fleet.send(key, etags[key])
        wait_until("the quick jobs", lambda: len(fleet.run_lines()) == 3 and "view/ok" in fleet.done()
                   and _exists(fleet.s3, OUT, "view/bad/_failed.json")
                   and fleet.queue_counts(fleet.dlq_url)[0] == 1, lambda: len(fleet.run_lines()))
        for key in long_keys:
            fleet.send(key, etags[key])
        wait_until("three long jobs running", lambda: len(fleet.run_lines()) == 6,
                   lambda: len(fleet.run_lines()))
        # A fourth daemon takes one more, then drains: every slot is busy, so it stays queued.
        extra = fleet.config("d3", processing=processing)
        with daemon(extra) as proc:
            fleet.send("view/queued", etags["view/queued"])
            wait_until("d3 to run it", lambda: len(fleet.run_lines()) == 7, lambda: 0)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        looker = configs[0]

        def show(key: str) -> dict[str, Any]:
            return _ctl_json(looker, "show", f"s3://{IN}/{key}")  # type: ignore[no-any-return]

        ok, bad, waiting, queued = show("view/ok"), show("view/bad"), show("view/wait"), show("view/queued")
        running = [show(k) for k in long_keys]
        assert ok["state"] == "succeeded" and ok["result"] == f"s3://{OUT}/view/ok/"
        assert ok["duration_s"] is not None and "results at s3://" in ok["summary"]
        assert bad["state"] == "failed" and bad["result"] == f"s3://{OUT}/view/bad/_failed.json"
        assert "exit" in bad["error"] and "_failed.json at" in bad["summary"]
        assert waiting["state"] == "waiting" and waiting["counted_attempts"] == 1
        assert waiting["waiting_until"] > time.time() + 200 and waiting["summary"].startswith("waiting until")
        assert queued["state"] == "queued" and queued["counted_attempts"] == 0 and not queued["holder"]
        assert {r["state"] for r in running} == {"running"}
        assert sorted(r["holder"] for r in running) == ["d0", "d1", "d2"]
        assert all(r["attempts"] == 1 and "running on d" in r["summary"] for r in running)
        # By job id too, from an instance that never ran it.
        elsewhere = next(r for r in running if r["holder"] != "d0")
        assert _ctl_json(looker, "show", elsewhere["job_id"], "--fleet")["holder"] == elsewhere["holder"]
        never = processorctl(looker, "show", f"s3://{IN}/view/never-uploaded")
        assert never.returncode == 3 and "never seen by the fleet" in never.stderr
        human = processorctl(looker, "show", f"s3://{IN}/view/wait").stdout
        assert "state:     waiting" in human and "1 counted" in human

        view = _ctl_json(looker, "fleet")
        assert sorted(view["running"]) == ["d0", "d1", "d2"]
        assert all(len(jobs) == 1 for jobs in view["running"].values())
        assert view["queue"]["visible"] == 1 and view["queue"]["delayed"] == 1
        assert view["queue"]["dead_letters"] == 1 and view["waiting"] == 1
        assert view["failed_last_hour"] == 1 and view["stale_leases"] == []
        text = processorctl(looker, "fleet").stdout
        assert "queue: 1 visible" in text and "dead letters: 1" in text and "d1: 1 running" in text

        failed = _ctl_json(looker, "list", "--fleet", "--state", "failed", "--since", "1h")
        assert [r["key"] for r in failed] == ["view/bad"]
        everything = _ctl_json(looker, "list", "--fleet")
        assert sorted(r["key"] for r in everything) == sorted([*quick, *long_keys, "view/queued"])
        assert _ctl_json(looker, "list", "--fleet", "--state", "running,waiting", "--limit", "2") \
            and len(_ctl_json(looker, "list", "--fleet", "--state", "running,waiting")) == 4

        letters = _ctl_json(looker, "dlq", "list")
        assert len(letters) == 1 and letters[0]["job_id"] == bad["job_id"]
        assert "exit" in letters[0]["reason"]
        moved = _ctl_json(looker, "dlq", "redrive")
        assert moved == {"moved": 1, "records_reset": 1}
        assert fleet.queue_counts(fleet.dlq_url)[0] == 0
        again = show("view/bad")
        assert again["state"] in ("queued", "running", "failed") and again["error"]
