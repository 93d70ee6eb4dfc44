"""The result layout (processor_shared.layout): <output prefix><key>/, or _by-id/<job id>/ when that cannot
hold the results; and the pipeline and the reconciler following it (issue 13 item 2)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

import processor_shared.layout as layout
from processor_shared.lost import Verdict
from tests.support.pipeline import COPY_UPPER, OUT, claim, make, script
from worker.ctl.lost import plan, result_index
from worker.jobs.identity import Identity
from worker.jobs.states import JobState
from worker.storage.base import Listed

REPO = Path(__file__).resolve().parents[3]
ROOM = 1024 - len("/_manifest.json")  # the longest <prefix><key> whose results fit
#: Output prefixes the layout is tried with: none, one level, two levels.
PREFIXES = ["", "out/", "a/b/"]
#: A real job id (of a key too long for its results: one that does live at the fallback).
JOB = Identity("in", "k" * 1100, None, "e").job_id()


@pytest.mark.parametrize("key,fallback", [
    ("a.csv", False),
    ("k" * ROOM, False),
    ("k" * (ROOM + 1), True),
    ("é" * (ROOM // 2) + "k", False),  # bytes count, not characters
    ("é" * (ROOM // 2) + "kk", True),
    ("\U0001F4C4" * 256, True),  # the longest S3 key
    ("_by-id/j-0123456789abcdef0123", True),  # could name another job's fallback
    ("_by-id", True),  # its prefix would be the parent of every fallback
    ("_by-idx", False),
    ("x/_by-id/y", False),
])
def test_result_prefix_falls_back_when_the_reserved_names_would_not_fit(key: str, fallback: bool) -> None:
    prefix = layout.result_prefix("", key, "j-1")
    assert prefix == ("_by-id/j-1/" if fallback else key + "/")
    assert layout.is_fallback("", prefix) is fallback
    assert all(len((prefix + name).encode()) <= 1024 for name in layout.RESERVED_NAMES)


@pytest.mark.parametrize("output_prefix", PREFIXES)
@pytest.mark.parametrize("key", ["_by-id", "_by-id/x", f"_by-id/{JOB}", f"_by-id/{JOB}/f", "_by-idx"])
def test_a_by_id_key_never_lands_on_a_jobs_fallback_whatever_the_output_prefix(
    output_prefix: str, key: str,
) -> None:
    """The guard was checked on <output prefix><key>/, so with any output prefix a key
    ``_by-id/<job id>/...`` landed in that job's fallback (and ``_by-id`` on the parent of all)."""
    own = Identity("in", key, None, "e").job_id()
    prefix = layout.result_prefix(output_prefix, key, own)
    every_fallback = output_prefix + layout.FALLBACK_DIR
    if key == "_by-idx":  # an ordinary key
        assert prefix == f"{output_prefix}_by-idx/" and not layout.is_fallback(output_prefix, prefix)
        assert layout.marker_source(output_prefix, prefix + layout.MANIFEST_NAME) == key
        assert layout.marker_job_id(output_prefix, prefix + layout.MANIFEST_NAME) is None
        return
    # Its own fallback, never another job's nor a place under one: read back, it is its own job's.
    assert prefix == layout.fallback_prefix(output_prefix, own) and layout.is_fallback(output_prefix, prefix)
    assert not prefix.startswith(layout.fallback_prefix(output_prefix, JOB))
    assert prefix != every_fallback
    for marker in layout.RESERVED_NAMES:
        assert layout.marker_job_id(output_prefix, prefix + marker) == own
        assert layout.marker_source(output_prefix, prefix + marker) is None
    # With outputs too, and its failure records: all at its own fallback.
    assert layout.result_prefix(output_prefix, key, own, ["o.txt", "d/p.bin"]) == prefix
    assert layout.failure_record_keys(output_prefix, key, own) == [prefix + layout.FAILED_NAME]


@pytest.mark.parametrize("output_prefix", PREFIXES)
def test_no_normal_prefix_lies_in_the_fallback_space(output_prefix: str) -> None:
    """Against the rule written independently of the module: ``<prefix><key>/_manifest.json``
    over 1,024 bytes, or a key ``_by-id`` / ``_by-id/...``: results under ``<prefix>_by-id/<job id>/``."""
    rng = random.Random(12)
    alphabet = "abc/._-+%\t\n\u00e9\u65e5\U0001f600_by-id"
    room = 1024 - len(f"{output_prefix}/_manifest.json".encode())
    keys = ["x" * room, "x" * (room + 1), "x" * (room - 2) + "\u00e9", "x" * (room - 1) + "\u00e9",
            "_by-id", "_by-id/", "_by-id/x", "_by-idx", "_by-id_", "a/_by-id/b", "/_by-id", "_BY-ID/x"]
    keys += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(300)]
    keys += ["_by-id" + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20))) for _ in range(300)]
    for key in keys:
        job = Identity("b", key, None, "e").job_id()
        normal = f"{output_prefix}{key}/"
        too_long = len(f"{normal}_manifest.json".encode()) > 1024
        names_fallback = key == "_by-id" or key.startswith("_by-id/")
        expected = f"{output_prefix}_by-id/{job}/" if too_long or names_fallback else normal
        assert layout.result_prefix(output_prefix, key, job) == expected, key
        got = layout.result_prefix(output_prefix, key, job)
        assert layout.is_fallback(output_prefix, got) is (got != normal), key


def test_the_output_prefix_counts() -> None:
    key = "k" * (ROOM - 4)
    assert layout.result_prefix("", key, "j-1") == key + "/"
    assert layout.result_prefix("out/", key, "j-1") == f"out/{key}/"
    assert layout.result_prefix("outs/", key, "j-1") == "outs/_by-id/j-1/"
    assert layout.is_fallback("outs/", "outs/_by-id/j-1/") and not layout.is_fallback("outs/", "outs/k/")


def test_an_output_too_long_for_the_normal_prefix_moves_the_whole_job() -> None:
    key = "k" * 900
    assert layout.result_prefix("", key, "j-1", ["short.txt"]) == key + "/"
    assert layout.result_prefix("", key, "j-1", ["short.txt", "o" * 200]) == "_by-id/j-1/"


def test_failure_records_are_looked_for_at_both_places_only_when_they_differ() -> None:
    assert layout.failure_record_keys("r/", "a", "j-1") == ["r/a/_failed.json", "r/_by-id/j-1/_failed.json"]
    assert layout.failure_record_keys("r/", "k" * 1024, "j-1") == ["r/_by-id/j-1/_failed.json"]


def test_the_layout_is_the_one_home_of_the_reserved_names() -> None:
    """No other module of the worker or the Lambda spells them (the example command may: it is a consumer)."""
    for package in ("worker", "lambda_trigger"):
        for module in (REPO / package).rglob("*.py"):
            if module.parent.name != "examples":
                text = module.read_text()
                assert '"_manifest.json"' not in text and '"_failed.json"' not in text, module
                assert '"_by-id/"' not in text, module


# -- the pipeline ----------------------------------------------------------------------


def test_a_key_too_long_for_its_results_succeeds_at_the_fallback(tmp_path: Path) -> None:
    pipeline, ledger, store = make(tmp_path, COPY_UPPER)  # output prefix "results/"
    key = "é" * 512  # 1,024 bytes: the longest S3 key
    job = claim(ledger, store, key)
    done = pipeline.run(job)
    prefix = f"results/_by-id/{job.id}/"
    assert done.state is JobState.SUCCEEDED and done.result_prefix == prefix
    manifest = store.json(OUT, prefix + layout.MANIFEST_NAME)
    assert manifest["source"]["key"] == key and manifest["job_id"] == job.id
    assert {o["key"] for o in manifest["outputs"]} == {prefix + "upper.txt", prefix + "nested/n.txt"}
    assert all(len(k.encode()) <= 1024 for _, k in store.objects)


def test_a_key_too_long_for_its_results_fails_at_the_fallback(tmp_path: Path) -> None:
    pipeline, ledger, store = make(tmp_path, script("import sys; sys.exit(3)"))
    key = "k" * 1024
    job = claim(ledger, store, key)
    done = pipeline.run(job)
    prefix = f"results/_by-id/{job.id}/"
    assert done.state is JobState.FAILED and done.result_prefix == prefix
    failed = store.json(OUT, prefix + layout.FAILED_NAME)
    assert failed["source"]["key"] == key and failed["exit_code"] == 3


def test_a_key_naming_another_jobs_fallback_succeeds_at_its_own(tmp_path: Path) -> None:
    pipeline, ledger, store = make(tmp_path, COPY_UPPER)  # output prefix "results/"
    job = claim(ledger, store, f"_by-id/{JOB}")
    done = pipeline.run(job)
    prefix = f"results/_by-id/{job.id}/"
    assert done.state is JobState.SUCCEEDED and done.result_prefix == prefix
    assert store.json(OUT, prefix + layout.MANIFEST_NAME)["source"]["key"] == f"_by-id/{JOB}"
    assert [k for _, k in store.objects if k.startswith(f"results/_by-id/{JOB}")] == []


def test_an_output_that_does_not_fit_moves_the_whole_job_to_the_fallback(tmp_path: Path) -> None:
    long_name = "o" * 150
    pipeline, ledger, store = make(tmp_path, script(
        f"import sys, pathlib; o = pathlib.Path(sys.argv[2]); (o / 'a.txt').write_text('a');"
        f"(o / {long_name!r}).write_text('b')"))
    key = "k" * 900  # its own results fit; results/<key>/<long name> does not
    job = claim(ledger, store, key)
    done = pipeline.run(job)
    prefix = f"results/_by-id/{job.id}/"
    assert done.state is JobState.SUCCEEDED and done.result_prefix == prefix
    assert {k for _, k in store.objects if k.startswith("results/")} == {
        prefix + "a.txt", prefix + long_name, prefix + layout.MANIFEST_NAME}


def test_an_output_too_long_even_for_the_fallback_fails_the_job_naming_it(tmp_path: Path) -> None:
    pipeline, ledger, store = make(tmp_path, script(
        "import sys, pathlib; o = pathlib.Path(sys.argv[2]);"
        "[o := o / ('d' * 200) for _ in range(6)]; o.mkdir(parents=True); (o / 'x').write_text('x')"))
    job = claim(ledger, store, "short.csv")
    done = pipeline.run(job)
    assert done.state is JobState.FAILED and "1024-byte key limit" in (done.error or "")
    assert "dddd" in (done.error or "")
    # The key itself fits: the failure record is at the normal prefix.
    assert store.json(OUT, "results/short.csv/" + layout.FAILED_NAME)["error"] == done.error


def test_a_success_after_a_failure_removes_the_record_wherever_it_is(tmp_path: Path) -> None:
    pipeline, ledger, store = make(tmp_path, COPY_UPPER)
    job = claim(ledger, store, "k" * 1024)
    fallback = f"results/_by-id/{job.id}/"
    store.put(OUT, fallback + layout.FAILED_NAME, b"{}")  # an earlier attempt's record
    ledger.transition(job.id, JobState.FAILED, expect=JobState.RUNNING, reason="x", error="x")
    ledger.transition(job.id, JobState.QUEUED, expect=JobState.FAILED, reason="retry")
    again = ledger.claim_next()
    assert again is not None
    assert pipeline.run(again).state is JobState.SUCCEEDED
    assert (OUT, fallback + layout.FAILED_NAME) not in store.objects
    assert (OUT, fallback + layout.MANIFEST_NAME) in store.objects


# -- the reconciler ----------------------------------------------------------------------


def test_reconcile_counts_a_fallback_result_as_a_result(tmp_path: Path) -> None:
    _, ledger, _ = make(tmp_path, COPY_UPPER)
    long_key, other = "k" * 1024, "m" * 1024
    done_id = Identity("in", long_key, None, "e1").job_id()
    results = result_index([f"results/_by-id/{done_id}/_manifest.json", "results/a/_failed.json"],
                           "results/")
    listed = [Listed(long_key, None, "e1", 1, 0.0), Listed(other, None, "e2", 1, 0.0),
              Listed("a", None, "e3", 1, 0.0)]
    verdicts = [d.verdict for d in plan(listed, bucket="in", ledger=ledger, results=results,
                                        now=1000.0, older_than_s=10)]
    assert verdicts == [Verdict.HAS_RESULT, Verdict.SUBMIT, Verdict.HAS_RESULT]


@pytest.mark.parametrize("key", ["a\nb.csv", "line\n", "../../etc/passwd", "a/../../b", "..", "\t../\x7f"],
                         ids=repr)
def test_keys_moto_cannot_carry_are_processed_as_data(tmp_path: Path, key: str) -> None:
    """moto's server 404s keys with a newline and normalises pure ".." segments, so the e2e
    test cannot upload these: the pipeline gets them here, on the fake store."""
    pipeline, ledger, store = make(tmp_path, COPY_UPPER)
    job = claim(ledger, store, key)
    done = pipeline.run(job)
    assert done.state is JobState.SUCCEEDED and done.result_prefix == f"results/{key}/"
    assert store.json(OUT, f"results/{key}/" + layout.MANIFEST_NAME)["source"]["key"] == key
    assert not (tmp_path / "etc").exists() and not (tmp_path.parent / "b").exists()
