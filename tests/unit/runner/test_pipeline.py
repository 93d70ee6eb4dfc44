"""One job through download -> command -> upload, on a fake store and a real SQLite ledger."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import structlog

from processor_shared.layout import FAILED_NAME, MANIFEST_NAME
from tests.support.pipeline import COPY_UPPER, OUT, claim, make, script
from worker.errors import StorageError
from worker.jobs.identity import Identity
from worker.jobs.states import JobState
from worker.runner.pipeline import OVERLAP_HASH_BYTES
from worker.runner.process import StopToken


def test_success_uploads_outputs_then_the_manifest_last(tmp_path: Path) -> None:
    pipeline, ledger, store = make(tmp_path, COPY_UPPER)
    # An earlier version of the key failed here and left its failure record.
    old, _ = ledger.submit(Identity("in", "a/b.txt", None, "0" * 32))
    ledger.claim_next()
    ledger.transition(old.id, JobState.FAILED, expect=JobState.RUNNING, error="bad")
    store.put(OUT, "results/a/b.txt/_failed.json", b"{}")
    job = claim(ledger, store, "a/b.txt")
    with structlog.testing.capture_logs() as logs:
        done = pipeline.run(job)
    assert done.state is JobState.SUCCEEDED and done.result_prefix == "results/a/b.txt/"
    assert store.objects[(OUT, "results/a/b.txt/upper.txt")] == b"HELLO"
    assert store.objects[(OUT, "results/a/b.txt/nested/n.txt")] == b"n"
    assert (OUT, "results/a/b.txt/_failed.json") not in store.objects
    writes = [c for c in store.calls if c[0] in {"upload", "put_json", "delete"}]
    assert writes[-1] == ("put_json", OUT, "results/a/b.txt/_manifest.json")
    manifest = store.json(OUT, "results/a/b.txt/" + MANIFEST_NAME)
    assert manifest["job_id"] == job.id and manifest["attempts"] == 1
    assert manifest["source"]["key"] == "a/b.txt" and manifest["source"]["size"] == 5
    by_path = {o["path"]: o for o in manifest["outputs"]}
    assert by_path["upper.txt"]["sha256"] == hashlib.sha256(b"HELLO").hexdigest()
    assert by_path["upper.txt"]["size"] == 5 and set(by_path) == {"upper.txt", "nested/n.txt"}
    assert {"download_s", "process_s", "upload_s", "started_at"} <= set(manifest["timings"])
    assert not (tmp_path / "state" / "work" / job.id).exists()
    assert any(e["event"] == "upload_finished" for e in logs)
    # For job_finished and the EMF metrics: bytes downloaded, and uploaded (HELLO + n).
    assert (done.bytes_in, done.bytes_out) == (5, 6)
    assert (ledger.get(job.id).bytes_in, ledger.get(job.id).bytes_out) == (5, 6)  # in the ledger too


def test_a_key_that_never_failed_costs_no_failure_record_delete(tmp_path: Path) -> None:
    """Only a failure writes _failed.json: a first success makes no DELETE request, and
    the download is told the HEAD's size and ETag (no second HEAD in the store)."""
    pipeline, ledger, store = make(tmp_path, COPY_UPPER)
    job = claim(ledger, store, "fresh.txt")
    assert pipeline.run(job).state is JobState.SUCCEEDED
    assert [c[0] for c in store.calls] == ["head", "download", "upload", "upload", "put_json"]
    assert store.download_hints == [(5, hashlib.md5(b"hello").hexdigest())]


def test_large_outputs_are_hashed_while_they_upload(tmp_path: Path) -> None:
    """An output above OVERLAP_HASH_BYTES is hashed in a thread during its upload; the
    manifest's SHA-256 is the same as for a small one hashed first."""
    pipeline, ledger, store = make(tmp_path, COPY_UPPER)
    body = bytes(range(97, 123)) * (OVERLAP_HASH_BYTES // 26 + 1)
    job = claim(ledger, store, "big.txt", body)
    assert pipeline.run(job).state is JobState.SUCCEEDED
    outputs = {o["path"]: o for o in store.json(OUT, "results/big.txt/" + MANIFEST_NAME)["outputs"]}
    assert outputs["upper.txt"]["size"] == len(body) >= OVERLAP_HASH_BYTES
    assert outputs["upper.txt"]["sha256"] == hashlib.sha256(body.upper()).hexdigest()
    assert outputs["nested/n.txt"]["sha256"] == hashlib.sha256(b"n").hexdigest()


def test_permanent_failure_is_recorded_with_exit_code_and_stderr(tmp_path: Path) -> None:
    failing = script("import sys; sys.stderr.write('bad row 7\\n'); sys.exit(3)")
    pipeline, ledger, store = make(tmp_path, failing)
    job = claim(ledger, store, "x.csv")
    done = pipeline.run(job)
    assert done.state is JobState.FAILED and done.exit_code == 3
    assert "bad row 7" in (done.stderr_tail or "")
    failed = store.json(OUT, "results/x.csv/" + FAILED_NAME)
    assert failed["exit_code"] == 3 and "bad row 7" in failed["stderr_tail"]
    assert failed["source"]["key"] == "x.csv" and failed["job_id"] == job.id
    assert (OUT, "results/x.csv/" + MANIFEST_NAME) not in store.objects
    assert (done.bytes_in, done.bytes_out) == (5, 0)  # nothing uploaded
    log = (tmp_path / "state" / "logs" / "jobs" / f"{job.id}.log").read_text()
    assert "bad row 7" in log
    assert not (tmp_path / "state" / "work" / job.id).exists()


def test_exit_75_retries_with_backoff_then_gives_up(tmp_path: Path) -> None:
    pipeline, ledger, store = make(tmp_path, script("import sys; sys.exit(75)"), max_attempts=2)
    job = claim(ledger, store, "t.csv")
    before = time.time()
    again = pipeline.run(job)
    assert again.state is JobState.QUEUED
    assert before + 5 <= again.next_attempt_at <= time.time() + 10  # equal jitter of 10 s
    assert (OUT, "results/t.csv/" + FAILED_NAME) not in store.objects
    assert ledger.claim_next() is None  # not due yet
    pipeline.clock.offset += 11  # type: ignore[attr-defined]
    second = ledger.claim_next()
    assert second is not None and second.attempts == 2
    final = pipeline.run(second)
    assert final.state is JobState.FAILED and "gave up after 2 attempts" in (final.error or "")
    assert store.json(OUT, "results/t.csv/" + FAILED_NAME)["attempts"] == 2


def test_missing_object_fails_at_once_naming_the_key(tmp_path: Path) -> None:
    pipeline, ledger, store = make(tmp_path, COPY_UPPER)
    job = claim(ledger, store, "gone.csv")
    del store.objects[("in", "gone.csv")]
    done = pipeline.run(job)
    assert done.state is JobState.FAILED and "gone.csv" in (done.error or "")
    assert "not found" in (done.error or "")


def test_retryable_storage_error_requeues(tmp_path: Path) -> None:
    pipeline, ledger, store = make(tmp_path, COPY_UPPER)
    job = claim(ledger, store, "k")
    store.fail_head = StorageError("head s3://in/k: SlowDown", retryable=True, code="SlowDown")
    done = pipeline.run(job)
    assert done.state is JobState.QUEUED and "SlowDown" in (done.error or "")


def test_overwritten_object_is_cancelled_as_superseded(tmp_path: Path) -> None:
    pipeline, ledger, store = make(tmp_path, COPY_UPPER)
    job = claim(ledger, store, "k", b"v1")
    store.put("in", "k", b"v2 is newer")
    done = pipeline.run(job)
    assert done.state is JobState.CANCELLED and "superseded" in (done.error or "")
    assert (OUT, "results/k/" + FAILED_NAME) not in store.objects


@pytest.mark.parametrize("body,fragment", [
    ("import sys, pathlib; (pathlib.Path(sys.argv[2]) / '_manifest.json').write_text('{}')", "reserved"),
    ("import sys, os; os.symlink('/etc/passwd', os.path.join(sys.argv[2], 'leak'))", "not a regular file"),
])
def test_outputs_that_break_the_contract_fail_the_job(tmp_path: Path, body: str, fragment: str) -> None:
    pipeline, ledger, store = make(tmp_path, script(body))
    job = claim(ledger, store, "k")
    done = pipeline.run(job)
    assert done.state is JobState.FAILED and fragment in (done.error or "")
    assert (OUT, "results/k/" + MANIFEST_NAME) not in store.objects


def test_hostile_key_never_reaches_a_path_or_an_option(tmp_path: Path) -> None:
    record = tmp_path / "argv.json"
    body = (
        "import sys, os, json; json.dump({'argv': sys.argv[1:], 'cwd': os.getcwd(),"
        " 'key': os.environ['PROCESSOR_SOURCE_KEY'], 'input': os.environ['PROCESSOR_INPUT']},"
        f" open({str(record)!r}, 'w'))"
    )
    pipeline, ledger, store = make(tmp_path, script(body))
    key = "--help ../../etc/$(touch pwned);`id`|&\n\x1b[2J日本/" + "x" * 900
    job = claim(ledger, store, key)
    done = pipeline.run(job)
    assert done.state is JobState.SUCCEEDED
    seen = json.loads(record.read_text())
    work = tmp_path / "state" / "work" / job.id
    assert seen["argv"] == [str(work / "input"), str(work / "output")]
    assert seen["key"] == key and seen["cwd"] == str(work)
    assert not (tmp_path / "pwned").exists() and not list(tmp_path.glob("**/pwned"))


def test_timeout_stops_the_command_and_is_recorded(tmp_path: Path) -> None:
    pipeline, ledger, store = make(tmp_path, script("import time; time.sleep(60)"), timeout_s=1)
    job = claim(ledger, store, "slow")
    started = time.monotonic()
    done = pipeline.run(job)
    assert time.monotonic() - started < 20
    assert done.state is JobState.FAILED and "timed out after 1s" in (done.error or "")


def test_cancel_and_shutdown_tokens(tmp_path: Path) -> None:
    pipeline, ledger, store = make(tmp_path, script("import time; time.sleep(60)"))
    for reason, expected in ((StopToken.CANCEL, JobState.CANCELLED), (StopToken.SHUTDOWN, JobState.QUEUED)):
        job = claim(ledger, store, f"k-{reason}")
        token = StopToken()
        token.stop(reason)
        assert pipeline.run(job, token).state is expected


def test_command_that_cannot_start_fails_clearly(tmp_path: Path) -> None:
    pipeline, ledger, store = make(tmp_path, ["/nonexistent/processor-bin", "{input}"])
    job = claim(ledger, store, "k")
    done = pipeline.run(job)
    assert done.state is JobState.FAILED and "/nonexistent/processor-bin" in (done.error or "")


def test_damaged_download_is_retried_not_processed(tmp_path: Path) -> None:
    record = tmp_path / "ran"
    pipeline, ledger, store = make(tmp_path, script(f"open({str(record)!r}, 'w').write('ran')"))
    job = claim(ledger, store, "k", b"original bytes")
    real_download = store.download

    def corrupting(bucket: str, key: str, dest: Path, **kw: object) -> None:
        real_download(bucket, key, dest, **kw)  # type: ignore[arg-type]
        dest.write_bytes(b"Original bytes")  # same size, one bit flipped

    store.download = corrupting  # type: ignore[method-assign]
    done = pipeline.run(job)
    assert done.state is JobState.QUEUED and "md5-etag mismatch" in (done.error or "")
    assert not record.exists()


def test_manifest_records_the_verified_input_checksum(tmp_path: Path) -> None:
    pipeline, ledger, store = make(tmp_path, COPY_UPPER)
    job = claim(ledger, store, "m.txt", b"abc")
    pipeline.run(job)
    source = store.json(OUT, "results/m.txt/_manifest.json")["source"]
    assert source["sha256"] == hashlib.sha256(b"abc").hexdigest() and source["verified_by"] == "md5-etag"


def test_stderr_is_drained_even_when_the_log_cannot_be_written(tmp_path: Path) -> None:
    # 1 MiB of stderr: far more than a pipe holds, so a stalled reader would hang the command.
    noisy = script("import sys; sys.stderr.write('e' * (1 << 20)); sys.exit(3)")
    pipeline, ledger, store = make(tmp_path, noisy, timeout_s=60)
    job = claim(ledger, store, "k")
    log_dir = tmp_path / "state" / "logs" / "jobs"
    log_dir.mkdir(parents=True)
    (log_dir / f"{job.id}.log").symlink_to("/dev/full")  # every write fails with ENOSPC
    started = time.monotonic()
    done = pipeline.run(job)
    assert time.monotonic() - started < 30
    assert done.state is JobState.FAILED and done.exit_code == 3 and (done.stderr_tail or "").endswith("eee")


@pytest.mark.parametrize("attempt,base,cap,low,high", [
    (1, 30, 900, 15, 30),
    (2, 30, 900, 30, 60),
    (4, 30, 900, 120, 240),
    (10, 30, 900, 450, 900),  # capped
])
def test_backoff_is_exponential_with_equal_jitter(
    attempt: int, base: float, cap: float, low: float, high: float
) -> None:
    from processor_shared.aws_edge import backoff_delay

    delays = [backoff_delay(attempt, base, cap) for _ in range(200)]
    assert all(low <= d <= high for d in delays)
    assert max(delays) - min(delays) > (high - low) / 4  # jittered, not constant


def test_backoff_survives_thousands_of_attempts() -> None:
    """A job waiting days for S3 or disk space keeps counting attempts: no OverflowError."""
    from processor_shared.aws_edge import backoff_delay

    assert 15 <= backoff_delay(5000, 5, 30) <= 30


def test_s3_unavailable_never_spends_the_attempt_budget(tmp_path: Path) -> None:
    pipeline, ledger, store = make(tmp_path, COPY_UPPER, max_attempts=1)
    job = claim(ledger, store, "k")
    store.fail_head = StorageError("head s3://in/k: 503", retryable=True, code="503")
    for attempt in range(1, 5):
        done = pipeline.run(job)
        assert done.state is JobState.QUEUED and done.counted_attempts == 0 and done.attempts == attempt
        pipeline.clock.offset += 10_000  # type: ignore[attr-defined]
        job = ledger.claim_next()  # type: ignore[assignment]
        assert job is not None
    store.fail_head = None
    assert pipeline.run(job).state is JobState.SUCCEEDED


def test_exit_75_spends_the_budget_and_a_manual_retry_refills_it(tmp_path: Path) -> None:
    pipeline, ledger, store = make(tmp_path, script("import sys; sys.exit(75)"), max_attempts=1)
    job = claim(ledger, store, "k")
    done = pipeline.run(job)
    assert done.state is JobState.FAILED and done.counted_attempts == 1
    again = ledger.retry(job.id)
    assert again.state is JobState.QUEUED and again.counted_attempts == 0 and again.attempts == 0


def test_a_job_that_keeps_killing_the_daemon_is_failed_not_looped(tmp_path: Path) -> None:
    pipeline, ledger, store = make(tmp_path, COPY_UPPER, max_attempts=2)
    job = claim(ledger, store, "poison")
    for _ in range(2):  # the daemon dies mid-job, twice
        requeued = ledger.requeue_interrupted("interrupted: daemon restarted")
        assert [j.id for j in requeued] == [job.id]
        job = ledger.claim_next()  # type: ignore[assignment]
    assert job.counted_attempts == 2
    done = pipeline.run(job)
    assert done.state is JobState.FAILED and "died during 2 attempts" in (done.error or "")
    assert store.json(OUT, "results/poison/_failed.json")["error"] == done.error


def test_the_command_sees_exactly_the_configured_environment(tmp_path: Path) -> None:
    """Defaults, then pass_environment (from the daemon's environment, given once), then
    environment, then the job's own variables; nothing else of the daemon's leaks in."""
    record = tmp_path / "env.json"
    dump = script(f"import os, json; json.dump(dict(os.environ), open({str(record)!r}, 'w'))")
    daemon_env = {
        "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HTTPS_PROXY": "http://proxy.internal:3128",
        "AWS_SECRET_ACCESS_KEY": "must-not-leak", "PROCESSOR_CONFIG": "/etc/processor/x.toml",
        "LD_LIBRARY_PATH": "/daemon/lib",
    }
    pipeline, ledger, store = make(
        tmp_path, dump, environ=daemon_env,
        environment={"MODEL_PATH": "/opt/models/v3", "LD_LIBRARY_PATH": "/opt/vendor/lib",
                     "PATH": "/opt/vendor/bin:/usr/bin:/bin"},
        pass_environment=["HTTPS_PROXY", "NO_PROXY", "LD_LIBRARY_PATH"],
    )
    daemon_env["HTTPS_PROXY"] = "changed after start"  # read once, when the pipeline was built
    job = claim(ledger, store, "e.txt")
    assert pipeline.run(job).state is JobState.SUCCEEDED
    work = tmp_path / "state" / "work" / job.id
    assert json.loads(record.read_text()) == {
        "PATH": "/opt/vendor/bin:/usr/bin:/bin",     # environment overrides the default
        "LANG": "C.UTF-8",
        "HTTPS_PROXY": "http://proxy.internal:3128",  # passed through; NO_PROXY unset: absent
        "LD_LIBRARY_PATH": "/opt/vendor/lib",        # environment wins over pass_environment
        "MODEL_PATH": "/opt/models/v3",
        "HOME": str(work), "TMPDIR": str(work / "tmp"),
        "PROCESSOR_JOB_ID": job.id, "PROCESSOR_INPUT": str(work / "input"),
        "PROCESSOR_OUTPUT_DIR": str(work / "output"), "PROCESSOR_SOURCE_BUCKET": "in",
        "PROCESSOR_SOURCE_KEY": "e.txt", "PROCESSOR_SOURCE_KEY_BASE64": "ZS50eHQ",
        "PROCESSOR_ATTEMPT": "1", "PROCESSOR_SOURCE_ETAG": job.etag,
    }


def test_without_configuration_the_command_gets_only_defaults_and_the_contract(tmp_path: Path) -> None:
    record = tmp_path / "env.json"
    dump = script(f"import os, json; json.dump(sorted(os.environ), open({str(record)!r}, 'w'))")
    pipeline, ledger, store = make(tmp_path, dump, environ={"SECRET": "x", "HTTPS_PROXY": "p"})
    job = claim(ledger, store, "d.txt")
    assert pipeline.run(job).state is JobState.SUCCEEDED
    assert json.loads(record.read_text()) == sorted([
        "PATH", "LANG", "HOME", "TMPDIR", "PROCESSOR_JOB_ID", "PROCESSOR_INPUT", "PROCESSOR_OUTPUT_DIR",
        "PROCESSOR_SOURCE_BUCKET", "PROCESSOR_SOURCE_KEY", "PROCESSOR_SOURCE_KEY_BASE64",
        "PROCESSOR_ATTEMPT", "PROCESSOR_SOURCE_ETAG",
    ])


def test_a_key_with_a_nul_byte_reaches_the_command_exactly_through_the_base64_variable(
        tmp_path: Path) -> None:
    # An S3 key may hold a NUL; no environment variable can (execve would refuse it).
    record = tmp_path / "env.json"
    dump = script("import os, json, base64; v = os.environ['PROCESSOR_SOURCE_KEY_BASE64']; json.dump("
                  "{'plain': os.environ['PROCESSOR_SOURCE_KEY'], 'exact': base64.urlsafe_b64decode("
                  f"v + '=' * (-len(v) % 4)).decode()}}, open({str(record)!r}, 'w'))")
    pipeline, ledger, store = make(tmp_path, dump)
    job = claim(ledger, store, "nul\x00byte")
    assert pipeline.run(job).state is JobState.SUCCEEDED
    assert json.loads(record.read_text()) == {"plain": "nul\ufffdbyte", "exact": "nul\x00byte"}
