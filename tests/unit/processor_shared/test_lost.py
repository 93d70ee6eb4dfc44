"""processor_shared.lost: the reconciler's shared decision (the Lambda's and processorctl's).

The job id and the result layout it judges by are processor_shared.layout's, the one
module both sides ship (tests/unit/processor_shared/test_layout.py holds the layout itself).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from processor_shared import lost
from processor_shared.layout import job_id, result_prefix
from processor_shared.lost import Results, Verdict, index_results, plan
from worker.jobs.identity import Identity

NOW = 1_000_000.0


@dataclass(frozen=True)
class Obj:
    key: str
    version_id: str | None = None
    etag: str | None = "e"
    last_modified: float = NOW - 3600


@pytest.mark.parametrize("prefix", ["", "out/", "a/b/"])
def test_a_key_that_looks_like_a_fallback_prefix_is_never_a_jobs_result(prefix: str) -> None:
    """Results listed under <prefix>_by-id/<job id>/ are that job's; no source key is credited
    with them, so an object named ``_by-id/<job id>`` is not taken for done by another job's result."""
    other = job_id("in", "k" * 1100, None, "e")
    listing = [f"{prefix}_by-id/{other}/_manifest.json", f"{prefix}_by-id/_manifest.json",
               f"{prefix}_by-id/x/_failed.json", f"{prefix}_by-id/{other}/f/_manifest.json",
               f"{prefix}_by-idx/_manifest.json"]

    results = index_results(listing, prefix)

    assert results.job_ids == {other, "x"}
    assert results.keys == {"_by-idx"}
    objects = [Obj(key) for key in ("_by-id", "_by-id/x", f"_by-id/{other}", f"_by-id/{other}/f", "_by-idx")]
    verdicts = {d.listed.key: d.verdict for d in plan(objects, bucket="in", results=results, now=NOW,
                                                       older_than_s=0)}
    assert verdicts == {"_by-id": Verdict.SUBMIT, "_by-id/x": Verdict.SUBMIT,
                        f"_by-id/{other}": Verdict.SUBMIT, f"_by-id/{other}/f": Verdict.SUBMIT,
                        "_by-idx": Verdict.HAS_RESULT}


def test_a_fallback_result_of_a_by_id_key_counts_for_it() -> None:
    """Such a key's own results are at its own fallback, and the plan finds them there."""
    for prefix in ("", "out/", "a/b/"):
        key = "_by-id/x"
        job = job_id("in", key, None, "e")
        results = index_results([result_prefix(prefix, key, job) + "_manifest.json"], prefix)
        (decision,) = plan([Obj(key)], bucket="in", results=results, now=NOW, older_than_s=0)
        assert decision.verdict is Verdict.HAS_RESULT, prefix


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
    assert lost.count(decisions) == {"submit": 2, "has_job": 1, "has_result": 3,
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
