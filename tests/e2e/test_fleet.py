"""A local fleet (`processor local --instances 3`): spread, duplicates, failover.

The Lambda targets the fleet by tag and picks an instance per object by
rendezvous hashing; the local SSM front delivers each command to exactly the
addressed instance, as SSM does.
"""

from __future__ import annotations

import json
import queue
import re
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from lambda_trigger.targeting import rendezvous_order
from tests.e2e.test_local import running_local
from tests.waiting import wait_until
from worker.job import Identity, JobState
from worker.ledger import Ledger

pytestmark = pytest.mark.e2e

OBJECTS = 300


def ledgers_by_instance(state: Path, instances: list[str]) -> dict[str, Path]:
    return {instance: state / f"node-{n}" / "ledger" / "ledger.db"
            for n, instance in enumerate(instances, start=1)}


def jobs_of(path: Path) -> list[Any]:
    with Ledger(path) as ledger:
        return ledger.list_jobs()


# Hang guard only: a whole fleet on 2 shared cores can be 2-3x slower than alone.
@pytest.mark.timeout(900)
def test_300_objects_spread_over_3_instances_and_a_duplicate_lands_on_the_same_one(
    tmp_path: Path,
) -> None:
    with running_local(tmp_path, "--instances", "3") as stack:
        match = re.search(r"instance\(s\)\s+(\S+), (\S+), (\S+);", stack.output())
        assert match, stack.output()
        instances = list(match.groups())
        s3 = stack.client("s3")
        etags = {}
        for n in range(OBJECTS):
            key = f"fleet/{n:03d}.txt"
            etags[key] = s3.put_object(Bucket="processor-input", Key=key, Body=f"w{n} x".encode())["ETag"]
        paths = ledgers_by_instance(tmp_path / "state", instances)

        def done() -> int:
            return sum(1 for p in paths.values() for j in jobs_of(p) if j.state is JobState.SUCCEEDED)

        wait_until(lambda: done() >= OBJECTS, stall_s=60, progress=done, interval=0.5,
                   describe=lambda: (done(), stack.output()[-3000:]))
        placed = {instance: {j.key: j for j in jobs_of(path)} for instance, path in paths.items()}
        counts = Counter({instance: len(jobs) for instance, jobs in placed.items()})
        assert sum(counts.values()) == OBJECTS, counts
        # Each object ran where rendezvous hashing puts it, and nowhere else.
        for instance, jobs in placed.items():
            for job in jobs.values():
                assert rendezvous_order(job.identity.framed(), instances)[0] == instance
        # moto's instance ids are random, so allow more than the seeded Lambda test's ±20%.
        assert all(abs(c - OBJECTS / 3) <= 0.35 * OBJECTS / 3 for c in counts.values()), counts

        # A duplicate delivery of one event: same instance, same job, nothing new.
        key = "fleet/007.txt"
        owner = next(i for i, jobs in placed.items() if key in jobs)
        head = s3.head_object(Bucket="processor-input", Key=key)
        event = {"Records": [{
            "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
            "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": "processor-input"},
                   "object": {"key": key, "size": head["ContentLength"], "eTag": head["ETag"].strip('"'),
                              "sequencer": "0A1B2C3D4E5F678901"}}}]}
        sqs = stack.client("sqs")
        url = sqs.get_queue_url(QueueName="processor-events")["QueueUrl"]
        job_id = placed[owner][key].id
        assert stack.output().count(f"ran processor-SubmitDocument: {job_id}") == 1
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps(event))
        # The whole chain ran again (Lambda -> SSM -> agent -> processorctl) and the
        # owner's ledger answered with the existing job.
        wait_until(lambda: stack.output().count(f"ran processor-SubmitDocument: {job_id}") >= 2,
                   stall_s=60, progress=lambda: len(stack.output()), interval=0.2,
                   describe=lambda: stack.output()[-2000:])
        after = {instance: len(jobs_of(path)) for instance, path in paths.items()}
        assert after == dict(counts)
        assert placed[owner][key].attempts == 1


# Hang guard only: a whole fleet on 2 shared cores can be 2-3x slower than alone.
@pytest.mark.timeout(900)
def test_with_one_agent_down_its_objects_fail_over_and_all_complete(
    tmp_path: Path, aws: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In-process: the same building blocks as `processor local --instances 3`, one agent stopped."""
    from worker.local.agent import parse_content
    from worker.local.emulator import Emulator, provision
    from worker.local.node import start_node
    from worker.local.pump import EventPump
    from worker.local.ssmfront import SsmFront
    from worker.local.stack import _command

    results: queue.SimpleQueue[Any] = queue.SimpleQueue()
    with ExitStack() as stack:
        emulator = Emulator(_free_port())
        stack.callback(emulator.stop)
        res = provision(emulator, input_bucket="failover-in", output_bucket="failover-out", instances=3)
        ssm = emulator.client("ssm")
        front = SsmFront(res.endpoint, lambda name, version: parse_content(ssm.get_document(Name=name)))
        front.start()
        stack.callback(front.stop)
        nodes = [start_node(stack, emulator, res, front, instance_id=instance,
                            state_dir=tmp_path / f"node-{n}", command=_command(None),
                            on_result=results.put)
                 for n, instance in enumerate(res.instance_ids)]
        assert all(nodes)
        down = nodes[0]
        assert down is not None
        down.agent.stop(10)
        for name, value in {**emulator.env(), "AWS_ENDPOINT_URL_SSM": front.endpoint,
                            "DOCUMENT_NAME": res.submit_document,
                            "TARGET_TAG": "=".join(res.fleet_tag),
                            "TARGET_CACHE_SECONDS": "0"}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("TARGET_INSTANCE_ID", raising=False)
        from lambda_trigger import handler

        handler.cached_directory.cache_clear()
        pump = EventPump(emulator.client("sqs"), res.queue_url)
        pump.start()
        stack.callback(pump.stop)
        s3 = emulator.client("s3")
        keys = [f"fo/{n:02d}.txt" for n in range(30)]
        for key in keys:
            s3.put_object(Bucket="failover-in", Key=key, Body=key.encode())
        identities = {key: Identity("failover-in", key, None,
                                    s3.head_object(Bucket="failover-in", Key=key)["ETag"].strip('"'))
                      for key in keys}
        wanted_on_down = [k for k, i in identities.items()
                          if rendezvous_order(i.framed(), list(res.instance_ids))[0] == down.instance_id]
        assert wanted_on_down, "no object hashed to the stopped instance; pick more objects"
        live = [n for n in nodes[1:] if n is not None]
        def live_jobs() -> list[Any]:
            return [j for node in live for j in jobs_of(node.ledger_path)]

        def succeeded() -> int:
            return sum(1 for j in live_jobs() if j.state is JobState.SUCCEEDED)

        wait_until(lambda: succeeded() == len(keys), stall_s=60, progress=succeeded, interval=0.3,
                   describe=lambda: [(j.key, j.state) for j in live_jobs()])
        jobs = live_jobs()
        assert not down.ledger_path.exists() or jobs_of(down.ledger_path) == []
        assert {j.key for j in jobs} == set(keys)
        # Failed-over objects went to their second choice.
        for key in wanted_on_down:
            second = rendezvous_order(identities[key].framed(), list(res.instance_ids))[1]
            owner = next(n for n in live if any(j.key == key for j in jobs_of(n.ledger_path)))
            assert owner.instance_id == second, key
        handler.cached_directory.cache_clear()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
