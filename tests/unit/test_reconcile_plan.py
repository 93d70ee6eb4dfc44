"""lambda_trigger.reconcile_plan: the reconciler's shared decision, and its agreement with worker/.

The Lambda cannot import worker/, so the job id and the result-location rule
are restated in lambda_trigger/reconcile_plan.py; these tests hold the copies to
the worker's (the job id to worker/identity.py for many keys, the layout to
the rule "``<prefix><key>/_manifest.json`` over 1,024 bytes: results under
``<prefix>_by-id/<job id>/``").
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from lambda_trigger import reconcile_plan
from lambda_trigger.reconcile_plan import Results, Verdict, index_results, job_id, plan, result_prefix
from worker.identity import Identity
from worker.storage.layout import FAILED_NAME, MANIFEST_NAME

NOW = 1_000_000.0


@dataclass(frozen=True)
class Obj:
    key: str
    version_id: str | None = None
    etag: str | None = "e"
    last_modified: float = NOW - 3600


def _keys(count: int) -> list[str]:
    """Keys of every shape S3 allows: unicode, controls, JSON-hostile characters, long ones."""
    rng = random.Random(12)
    alphabet = ("abcXYZ019 /._-+%=&?#\"\\'$`;|<>*~\t\n\x01\x7f\u00e9\u65e5\u0130\ufeff\uffff"
                "\U0001f600\u2028")
    keys = ["", "/", "a", "a/", "\"", "\\", "null", "[]", "%2525", "k" * 1024]
    while len(keys) < count:
        keys.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 300))))
    return keys


@pytest.mark.parametrize("version", [(None, None), ("3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY", None),
                                     (None, "0f343b0931126a20f133d67c2b018a3b-3"),
                                     ("null-ish", "etag"), ("", "etag"), (None, "")])
def test_job_id_is_the_workers_for_many_keys(version: tuple[str | None, str | None]) -> None:
    version_id, etag = version
    for key in _keys(400):
        for bucket in ("processor-input", "b.with.dots"):
            expected = Identity(bucket, key, version_id, etag).job_id()
            assert job_id(bucket, key, version_id, etag) == expected, (bucket, key)


def test_result_names_are_the_pipelines() -> None:
    assert (reconcile_plan.MANIFEST_NAME, reconcile_plan.FAILED_NAME) == (MANIFEST_NAME, FAILED_NAME)


def _layout_rule(output_prefix: str, key: str, job: str) -> str:
    """The fallback rule as the issue states it, written independently of the module
    (plus: a normal prefix that would read as a ``_by-id/`` one is not used)."""
    normal = f"{output_prefix}{key}/"
    if len(f"{normal}_manifest.json".encode()) > 1024 or normal.startswith("_by-id/"):
        return f"{output_prefix}_by-id/{job}/"
    return normal


@pytest.mark.parametrize("prefix", ["", "results/", "r\u00e9sultats/\u65e5/"])
def test_result_prefix_follows_the_by_id_rule(prefix: str) -> None:
    keys = _keys(200)
    # The boundary, byte-exact: 1024 bytes fit, 1025 do not; a multi-byte
    # character is what makes bytes and characters differ.
    room = 1024 - len(f"{prefix}/_manifest.json".encode())
    keys += ["x" * room, "x" * (room + 1), "x" * (room - 2) + "\u00e9", "x" * (room - 1) + "\u00e9",
             "_by-id", "_by-id/j-0123", "_by-idx", "a/_by-id/b"]
    for key in keys:
        job = job_id("b", key, None, "e")
        assert result_prefix(prefix, key, job) == _layout_rule(prefix, key, job), key
    assert result_prefix(prefix, "x" * room, "j-1") == f"{prefix}{'x' * room}/"
    assert result_prefix(prefix, "x" * (room + 1), "j-1") == f"{prefix}_by-id/j-1/"


@pytest.mark.parametrize("prefix", ["", "results/"])
def test_result_prefix_is_worker_layouts_for_a_result_without_long_outputs(prefix: str) -> None:
    """Against the worker's own rule, where this branch has it (worker/storage/layout.py)."""
    layout = pytest.importorskip("worker.storage.layout")
    for key in [*_keys(300), "_by-id", "_by-id/j-0123", "y" * 1009, "y" * 1010]:
        job = job_id("b", key, None, "e")
        assert result_prefix(prefix, key, job) == layout.result_prefix(prefix, key, job), key


def test_index_finds_results_at_both_locations_and_ignores_other_files() -> None:
    listing = ["out/a.txt/_manifest.json", "out/a.txt/summary.json", "out/b/c.txt/_failed.json",
               "out/d.txt/sub/_manifest.json", "elsewhere/e.txt/_manifest.json",
               "out/_by-id/j-0123/_manifest.json", "out/_by-id/j-0456/_failed.json",
               "out/_by-id/j-0789/part.bin", "out/f.txt/_manifest.json.tmp"]

    results = index_results(listing, "out/")

    assert {"a.txt", "b/c.txt", "d.txt/sub"} <= results.keys
    assert "e.txt" not in results.keys and "f.txt" not in results.keys
    assert results.job_ids == {"j-0123", "j-0456"}


def test_plan_judges_each_object() -> None:
    long_key = "L" * 1100
    long_done = "D" * 1100
    objects = [Obj("lost.txt"), Obj("new.txt", last_modified=NOW - 10), Obj("folder/"),
               Obj("done.txt"), Obj("failed.txt"), Obj("queued.txt"), Obj(long_key),
               Obj(long_done, version_id="v9")]
    results = Results(keys=frozenset({"done.txt", "failed.txt"}),
                      job_ids=frozenset({job_id("in", long_done, "v9", "e")}))

    decisions = list(plan(objects, bucket="in", results=results, now=NOW, older_than_s=900,
                          has_job=lambda listed: listed.key == "queued.txt"))

    assert [(d.listed.key[:12], d.verdict) for d in decisions] == [
        ("lost.txt", Verdict.SUBMIT), ("new.txt", Verdict.TOO_NEW), ("folder/", Verdict.FOLDER),
        ("done.txt", Verdict.HAS_RESULT), ("failed.txt", Verdict.HAS_RESULT),
        ("queued.txt", Verdict.HAS_JOB), ("L" * 12, Verdict.SUBMIT), ("D" * 12, Verdict.HAS_RESULT)]
    assert decisions[0].job_id == Identity("in", "lost.txt", None, "e").job_id()
    assert reconcile_plan.count(decisions) == {"submit": 2, "has_job": 1, "has_result": 3,
                                          "too_new": 1, "folder": 1}


def test_a_result_by_id_of_another_version_does_not_count() -> None:
    key = "K" * 1100
    results = Results(job_ids=frozenset({job_id("in", key, "v1", None)}))

    (decision,) = plan([Obj(key, version_id="v2")], bucket="in", results=results, now=NOW,
                       older_than_s=0)

    assert decision.verdict is Verdict.SUBMIT


def test_a_result_by_key_counts_for_every_version_of_the_key() -> None:
    results = Results(keys=frozenset({"k.txt"}))

    (decision,) = plan([Obj("k.txt", version_id="v2")], bucket="in", results=results, now=NOW,
                       older_than_s=0)

    assert decision.verdict is Verdict.HAS_RESULT
