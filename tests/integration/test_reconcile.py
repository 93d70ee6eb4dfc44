"""`processorctl reconcile`: objects whose events were lost get submitted, nothing twice."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.daemon import daemon, processorctl, wait_state, write_config
from tests.support.emulator import CREDENTIALS, with_buckets
from worker.jobs.identity import Identity
from worker.state.ledger import Ledger

IN, OUT = "recon-in", "recon-out"


def test_reconcile_submits_only_what_has_neither_job_nor_result(
    short_tmp: Path, aws: Callable[[str], Any], moto_endpoint: str
) -> None:
    s3 = with_buckets(aws("s3"), IN, OUT)
    s3.put_bucket_versioning(Bucket=IN, VersioningConfiguration={"Status": "Enabled"})
    # No notification on the bucket: these uploads' events are "lost".
    lost = {f"lost/{n}.txt": f"lost words {n}" for n in range(3)}
    versions = {k: s3.put_object(Bucket=IN, Key=k, Body=v.encode())["VersionId"] for k, v in lost.items()}
    has_job = s3.put_object(Bucket=IN, Key="queued.txt", Body=b"queued")["VersionId"]
    s3.put_object(Bucket=IN, Key="done.txt", Body=b"done")
    s3.put_object(Bucket=OUT, Key="done.txt/_manifest.json", Body=b"{}")
    s3.put_object(Bucket=IN, Key="folder/", Body=b"")
    config = write_config(short_tmp, output_bucket=OUT, endpoint=moto_endpoint)
    with Ledger(short_tmp / "state/ledger/ledger.db") as ledger:
        ledger.submit(Identity(IN, "queued.txt", has_job))

    too_new = processorctl(config, "reconcile", "--input-bucket", IN, "--older-than", "1h", "--json",
                           env=CREDENTIALS)
    assert too_new.returncode == 0, too_new.stderr
    assert json.loads(too_new.stdout)["counts"]["too_new"] == 5  # + the folder marker

    dry = processorctl(config, "reconcile", "--input-bucket", IN, "--older-than", "0", "--dry-run",
                       env=CREDENTIALS)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("would submit j-") == 3 and "would submit 3," in dry.stdout
    with Ledger(short_tmp / "state/ledger/ledger.db") as ledger:
        assert len(ledger.list_jobs()) == 1

    done = processorctl(config, "reconcile", "--input-bucket", IN, "--older-than", "0", "--json",
                        env=CREDENTIALS)
    report = json.loads(done.stdout)
    assert sorted(item["key"] for item in report["submitted"]) == sorted(lost)
    assert report["counts"] == {"submit": 3, "has_job": 1, "has_result": 1, "too_new": 0,
                                "folder": 1}
    again = json.loads(processorctl(config, "reconcile", "--input-bucket", IN, "--older-than", "0",
                                    "--json", env=CREDENTIALS).stdout)
    assert again["submitted"] == [] and again["counts"]["has_job"] == 4

    with daemon(config, short_tmp / "p.sock"):
        for item in report["submitted"]:
            job = wait_state(config, item["job_id"], {"succeeded", "failed"})
            assert job["state"] == "succeeded" and job["version_id"] == versions[job["key"]]
    for key in lost:
        assert s3.get_object(Bucket=OUT, Key=f"{key}/_manifest.json")


def test_reconcile_without_a_bucket_is_a_usage_error(short_tmp: Path) -> None:
    config = write_config(short_tmp)
    done = processorctl(config, "reconcile")
    assert done.returncode == 2 and "--input-bucket" in done.stderr
    bad = processorctl(config, "reconcile", "--input-bucket", "b", "--older-than", "soon")
    assert bad.returncode == 2 and "not a duration" in bad.stderr


def test_every_instance_reconciles_globally_and_long_keys_count_their_by_id_results(
    short_tmp: Path, aws: Callable[[str], Any], moto_endpoint: str
) -> None:
    """No ownership: each instance's pass submits every lost object into its own ledger
    (overlap is harmless: the daemon's manifest check), and a key too long for
    ``<key>/_manifest.json`` counts as done by its result under ``_by-id/<job id>/``."""
    s3 = with_buckets(aws("s3"), IN, OUT)
    keys = [f"fleet/{n:02d}.txt" for n in range(6)]
    for key in keys:
        s3.put_object(Bucket=IN, Key=key, Body=key.encode())
    long_key = "L" * 1015  # 1015 + len("/_manifest.json") > 1024
    etag = s3.put_object(Bucket=IN, Key=long_key, Body=b"long")["ETag"].strip('"')
    s3.put_object(Bucket=OUT, Key=f"_by-id/{Identity(IN, long_key, None, etag).job_id()}/_manifest.json",
                  Body=b"{}")
    env = {**CREDENTIALS, "AWS_ENDPOINT_URL": moto_endpoint}
    for n in range(2):
        node = short_tmp / f"n{n}"
        node.mkdir()
        config = write_config(node, output_bucket=OUT, endpoint=moto_endpoint)
        done = processorctl(config, "reconcile", "--input-bucket", IN, "--older-than", "0", "--json",
                            env=env)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert sorted(item["key"] for item in report["submitted"]) == keys
        assert report["counts"]["has_result"] == 1


def test_the_fleet_options_are_gone(short_tmp: Path) -> None:
    config = write_config(short_tmp)
    done = processorctl(config, "reconcile", "--input-bucket", "b", "--fleet-tag", "k=v")
    assert done.returncode == 2 and "--fleet-tag" in done.stderr
