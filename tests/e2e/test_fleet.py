"""A local fleet (`processor local --instances 3`) on the shared SQS work queue.

The Lambda sends one message per upload to the work queue; three daemons pull
from it (config ``[queue]``). Every object must end with exactly one manifest
and one run of the command, whichever daemon took it, and duplicate messages
(anyone may send one) must not run anything again: the daemon finds the
manifest of the same object version first.

Needs the daemon's queue consumer (worker, ``[queue]``) as well as the local
stack's queue wiring.
"""

from __future__ import annotations

import json
import random
import re
import shlex
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.support.local import Running, running_local
from tests.support.waiting import wait_until
from worker.jobs.states import JobState
from worker.state.ledger import Ledger

pytestmark = pytest.mark.e2e

INSTANCES = 3
OBJECTS = 60
#: Liveness bound: fail when nothing moved for this long.
STALL_S = 90.0

#: A processing command that records each run (one JSON line per run, appended
#: with O_APPEND so lines from concurrent daemons do not interleave). The path
#: is written into the script: the daemon passes the command only the
#: environment its config names.
RECORDER = '''
import json, os, pathlib, sys
line = json.dumps({"key": os.environ["PROCESSOR_SOURCE_KEY"], "job": os.environ["PROCESSOR_JOB_ID"]})
fd = os.open({runs!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
os.write(fd, (line + "\\n").encode())
os.close(fd)
pathlib.Path(sys.argv[2], "copy.bin").write_bytes(pathlib.Path(sys.argv[1]).read_bytes())
'''


def _ledgers(state: Path) -> list[Path]:
    return [state / f"node-{n}" / "ledger" / "ledger.db" for n in range(1, INSTANCES + 1)]


def _jobs(path: Path) -> list[Any]:
    if not path.exists():
        return []
    with Ledger(path) as ledger:
        return ledger.list_jobs()


def _runs(path: Path) -> Counter[str]:
    if not path.exists():
        return Counter()
    return Counter(json.loads(line)["key"] for line in path.read_text().splitlines() if line)


def _queue_depth(sqs: Any, url: str) -> int:
    attributes = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages",
                                      "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"])


def _manifests(s3: Any) -> dict[str, dict[str, Any]]:
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="processor-output"):
        for item in page.get("Contents", []):
            if item["Key"].endswith("/_manifest.json"):
                body = s3.get_object(Bucket="processor-output", Key=item["Key"])
                found[item["Key"]] = {"etag": body["ETag"], **json.loads(body["Body"].read())}
    return found


def _wait_until_settled(stack: Running, keys: set[str], runs_file: Path, url: str) -> None:
    """Until every key has a manifest and the work queue is empty; fail on a stall."""
    s3, sqs = stack.client("s3"), stack.client("sqs")
    now: tuple[int, int, int] = (-1, -1, -1)

    def settled() -> bool:
        nonlocal now
        done = {m["source"]["key"] for m in _manifests(s3).values()}
        now = (len(done & keys), sum(_runs(runs_file).values()), _queue_depth(sqs, url))
        if done >= keys and now[2] == 0:
            return True
        assert stack.proc.poll() is None, stack.output()[-3000:]
        return False

    wait_until(settled, stall_s=STALL_S, progress=lambda: now, interval=0.5,
               describe=lambda: (now, stack.output()[-3000:]))


# A hang guard only: the waits inside fail on a stall (STALL_S), never on total time.
@pytest.mark.timeout(900)
def test_every_upload_runs_once_on_one_of_the_fleet_and_duplicates_run_nothing(
    tmp_path: Path,
) -> None:
    runs_file = tmp_path / "runs.jsonl"
    recorder = tmp_path / "recorder.py"
    recorder.write_text(RECORDER.replace("{runs!r}", repr(str(runs_file))))
    command = shlex.join([sys.executable, str(recorder), "{input}", "{output_dir}"])
    with running_local(tmp_path, "--instances", str(INSTANCES), "--command", command) as stack:
        match = re.search(r"work queue\s+(\S+)", stack.output())
        assert match, stack.output()
        url = match.group(1)
        dlq = re.search(r"dead-letter queue\s+(\S+)", stack.output())
        assert dlq, stack.output()
        s3, sqs = stack.client("s3"), stack.client("sqs")
        keys = {f"fleet/{n:03d}.bin" for n in range(OBJECTS)} | {"fleet/a b+c %25 \u65e5.bin"}
        for key in sorted(keys):
            s3.put_object(Bucket="processor-input", Key=key, Body=key.encode() * 50)

        _wait_until_settled(stack, keys, runs_file, url)

        # Exactly once: one run per object, one manifest per object.
        runs = _runs(runs_file)
        assert runs == Counter({key: 1 for key in keys}), runs
        manifests = _manifests(s3)
        assert sorted(m["source"]["key"] for m in manifests.values()) == sorted(keys)
        # Each object is a succeeded job in a daemon's ledger, with the manifest's job id.
        ran_on: dict[str, dict[str, int]] = {}
        for n, path in enumerate(_ledgers(tmp_path / "state"), start=1):
            for job in _jobs(path):
                if job.state is JobState.SUCCEEDED:
                    ran_on.setdefault(job.key, {})[job.id] = n
        assert set(ran_on) == keys
        by_key = {m["source"]["key"]: m for m in manifests.values()}
        for key, jobs in ran_on.items():
            assert by_key[key]["job_id"] in jobs, (key, jobs)
        # The queue spread the work: more than one daemon ran jobs.
        assert len({n for jobs in ran_on.values() for n in jobs.values()}) > 1, ran_on

        # 20 % duplicate messages, as anyone may send them: nothing runs again.
        rng = random.Random(7)
        duplicates = rng.sample(sorted(keys), len(keys) // 5)
        for key in duplicates:
            source = by_key[key]["source"]
            sqs.send_message(QueueUrl=url, MessageBody=json.dumps(
                {"bucket": "processor-input", "key": key, "version_id": source["version_id"],
                 "etag": source["etag"]}))
        _wait_until_settled(stack, keys, runs_file, url)
        assert _runs(runs_file) == runs
        after = _manifests(s3)
        assert {k: m["etag"] for k, m in after.items()} == {k: m["etag"] for k, m in manifests.items()}
        assert _queue_depth(sqs, dlq.group(1)) == 0
