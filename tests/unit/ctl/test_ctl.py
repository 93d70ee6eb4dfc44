"""processorctl: output for people and machines, exit codes, start-up without boto3."""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemon import processorctl, write_config
from tests.support.submit_path import SUBMIT_MUST_NOT_IMPORT
from worker import exitcodes
from worker.ctl.cli import main
from worker.jobs.identity import Identity
from worker.jobs.states import JobState
from worker.state.ledger import Ledger


@pytest.fixture
def config(short_tmp: Path) -> Path:
    return write_config(short_tmp)


def run(config: Path, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["--config", str(config), *args], out=out)
    return code, out.getvalue()


def test_processorctl_does_not_import_boto3() -> None:
    probe = ("import sys, worker.ctl.cli, worker.state.ledger, worker.daemon.control;"
             "bad = [m for m in ('boto3', 'botocore', 'structlog', 'moto') if m in sys.modules];"
             "print(','.join(bad))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "", done.stdout + done.stderr




@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_submit_starts_without_heavy_imports(config: Path, extra: list[str]) -> None:
    probe = ("import sys\nfrom worker.ctl.cli import main\ncode = main(sys.argv[1:])\n"
             f"print(code, [m for m in {sorted(SUBMIT_MUST_NOT_IMPORT)!r} if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", probe, "--config", str(config), "submit",
                           "--bucket", "bkt", "--key=k", "--etag", "e", *extra],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "0 []", done.stdout + done.stderr


def test_duplicate_submit_prints_the_existing_job(config: Path) -> None:
    first = processorctl(config, "submit", "--bucket", "bkt", "--key=k", "--etag", '"e"')
    assert first.returncode == 0 and first.stderr == ""
    again = processorctl(config, "submit", "--bucket", "bkt", "--key=k", "--etag", "e")
    assert again.returncode == 0 and again.stdout == first.stdout
    assert again.stderr == "processorctl: already submitted; job is queued\n"
    as_json = processorctl(config, "submit", "--bucket", "bkt", "--key=k", "--etag", "e", "--json")
    assert json.loads(as_json.stdout) == {"job_id": first.stdout.strip(), "created": False, "state": "queued"}


@pytest.mark.parametrize("columns", ["", "57", "200", "wide"])
def test_help_is_as_wide_as_argparse_would_make_it(columns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from worker.ctl import cli

    monkeypatch.setenv("COLUMNS", columns)
    assert cli._terminal_columns() == shutil.get_terminal_size().columns
    parser = cli._parser()
    reference = argparse.ArgumentParser(prog="processorctl")
    assert parser._get_formatter()._width == reference._get_formatter()._width


def test_submit_list_show(config: Path) -> None:
    code, out = run(config, "submit", "--bucket", "in-b", "--key=a b/c.csv", "--version-id", "v1")
    assert code == exitcodes.OK
    job_id = out.strip()
    code, out = run(config, "list")
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["JOB", "STATE", "ATTEMPTS", "STARTED", "DURATION", "KEY", "ERROR"]
    assert row.startswith(job_id) and "queued" in row and row.endswith("a b/c.csv")
    code, out = run(config, "show", job_id)
    assert code == 0 and "state:" in out and "s3://in-b/a b/c.csv" in out and "v1" in out
    assert "-> queued" in out
    code, out = run(config, "show", job_id, "--json")
    shown = json.loads(out)
    assert shown["key"] == "a b/c.csv" and shown["transitions"][0]["to_state"] == "queued"
    code, out = run(config, "list", "--json", "--state", "succeeded")
    assert json.loads(out) == []


def test_hostile_key_is_escaped_for_the_terminal(config: Path) -> None:
    key = "evil\x1b[2J\nrm -rf /\r.csv"
    run(config, "submit", "--bucket", "in-b", f"--key={key}")
    code, out = run(config, "list")
    assert "\x1b" not in out and "\r" not in out and len(out.splitlines()) == 2
    assert "\\x1b[2J\\nrm -rf /\\r.csv" in out
    _, out = run(config, "list", "--json")
    assert json.loads(out)[0]["key"] == key


def test_show_unknown_job_exits_3(config: Path) -> None:
    done = processorctl(config, "show", "j-doesnotexist")
    assert done.returncode == exitcodes.NOT_FOUND and "j-doesnotexist" in done.stderr


@pytest.mark.parametrize("args,fragment", [
    (["--bucket", "", "--key=k"], "--bucket"),
    (["--bucket", "bkt", "--key="], "--key"),
    (["--bucket", "bkt", "--key=" + "k" * 1025], "1025 bytes"),
    # Bucket names S3 can never have (issue 19): each once exited 0 and failed later.
    *[(["--bucket", bad, "--key=k"], "--bucket") for bad in (
        "my bucket", "a/b", "b" * 300, "../x", "../", "in\nput", ";touch x", "ab", "UPPER",
        "-dash", "dash-", "a..b", "192.168.1.1", "xn--punycode", "name-s3alias", "under_score",
    )],
])
def test_submit_rejects_bad_values_naming_the_option(config: Path, args: list[str], fragment: str) -> None:
    done = processorctl(config, "submit", *args)
    assert done.returncode == exitcodes.USAGE and fragment in done.stderr
    with Ledger(config.parent / "state" / "ledger" / "ledger.db") as ledger:
        assert ledger.list_jobs() == []


def test_keys_too_long_for_their_results_are_accepted_and_shown_at_the_fallback(config: Path) -> None:
    """Keys whose <key>/_manifest.json would pass 1,024 bytes are legal S3 keys: submit takes
    them (it used to refuse them after SendCommand had succeeded, so nothing recorded them)
    and show says their results go to _by-id/<job id>/."""
    room = 1024 - len("/_manifest.json")
    fits = "é" * (room // 2) + "k" * (room % 2)  # exactly at the limit, 2-byte characters
    for key, fallback in ((fits, False), (fits + "x", True), ("é" * 512, True), ("k" * 1024, True)):
        done = processorctl(config, "submit", "--bucket", "bkt", f"--key={key}")
        assert done.returncode == 0, done.stderr
        job_id = done.stdout.strip()
        _, out = run(config, "show", job_id, "--json")
        results = json.loads(out)["results"]
        expected = f"_by-id/{job_id}/" if fallback else key + "/"
        assert results == {"bucket": "out", "prefix": expected, "fallback": fallback,
                           "final": False}, key[:20]
        _, out = run(config, "show", job_id)
        line = next(ln for ln in out.splitlines() if ln.startswith("results:"))
        assert ("fallback" in line) is fallback and "expected" in line


def test_show_names_the_recorded_result_prefix_and_marks_the_fallback(config: Path) -> None:
    _, out = run(config, "submit", "--bucket", "bkt", "--key=" + "k" * 1024)
    job_id = out.strip()
    with Ledger(config.parent / "state" / "ledger" / "ledger.db") as ledger:
        ledger.claim_next()
        ledger.transition(job_id, JobState.FAILED, expect=JobState.RUNNING, reason="boom",
                          error="boom", result_prefix=f"_by-id/{job_id}/")
    _, out = run(config, "show", job_id)
    assert re.search(rf"results: +s3://out/_by-id/{job_id}/  \(fallback: the key is too long",
                     out), out
    assert "expected" not in out
    shown = json.loads(run(config, "show", job_id, "--json")[1])
    assert shown["results"]["final"] is True and shown["results"]["fallback"] is True


@pytest.mark.parametrize("key", ["tab\there", "new\nline", "nul\x00byte", "-rf", "日本 📄.csv",
                                 "\x7f" + "\U0001F4C4" * 255 + "abc"], ids=repr)
def test_submit_key_base64_decodes_to_the_same_job_as_key(config: Path, key: str) -> None:
    encoded = base64.urlsafe_b64encode(key.encode()).decode()
    code, out = run(config, "submit", "--bucket", "bkt", f"--key-base64={encoded.rstrip('=')}")
    assert code == 0
    job_id = out.strip()
    assert job_id == Identity("bkt", key).job_id()
    # Padded or not, the same key: the same job.
    assert run(config, "submit", "--bucket", "bkt", f"--key-base64={encoded}") == (0, out)
    with Ledger(config.parent / "state" / "ledger" / "ledger.db") as ledger:
        assert [j.key for j in ledger.list_jobs()] == [key]


@pytest.mark.parametrize("value,fragment", [
    ("", "is empty"),
    ("a", "cannot encode whole bytes"),
    ("YQ=", "padding"),
    ("a+b/", "not base64url"),
    ("YQ\n", "not base64url"),
    ("YR", "canonical"),
    ("gA", "not UTF-8"),  # 0x80 alone
    ("7aCA", "not UTF-8"),  # a UTF-16 surrogate, encoded as UTF-8
])
def test_submit_key_base64_errors_name_the_option(config: Path, value: str, fragment: str) -> None:
    done = processorctl(config, "submit", "--bucket", "bkt", f"--key-base64={value}")
    assert done.returncode == exitcodes.USAGE, done.stderr
    assert "--key-base64" in done.stderr and fragment in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    with Ledger(config.parent / "state" / "ledger" / "ledger.db") as ledger:
        assert ledger.list_jobs() == []


@pytest.mark.parametrize("args", [["--key=a", "--key-base64=YQ"], []], ids=["both", "neither"])
def test_submit_wants_exactly_one_of_key_and_key_base64(config: Path, args: list[str]) -> None:
    done = processorctl(config, "submit", "--bucket", "bkt", *args)
    assert done.returncode == exitcodes.USAGE and "--key" in done.stderr, done.stderr


def test_unusable_ledger_exits_4_and_says_so(short_tmp: Path) -> None:
    config = write_config(short_tmp)
    (short_tmp / "state").write_text("a file where the state dir should be")
    done = processorctl(config, "submit", "--bucket", "bkt", "--key=k")
    assert done.returncode == exitcodes.LEDGER_UNAVAILABLE and "ledger unavailable" in done.stderr


def test_status_without_a_daemon(config: Path) -> None:
    run(config, "submit", "--bucket", "bkt", "--key=k")
    code, out = run(config, "status")
    assert code == exitcodes.DAEMON_NOT_RUNNING == 3
    assert "daemon: not running (not reachable on" in out and "1 queued" in out
    code, out = run(config, "status", "--json")
    assert code == 3
    assert json.loads(out) == {"daemon": None, "counts": {
        "queued": 1, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0}}


def test_finished_job_shows_results_and_failure_details(config: Path) -> None:
    code, out = run(config, "submit", "--bucket", "bkt", "--key=k.csv")
    job_id = out.strip()
    with Ledger(config.parent / "state" / "ledger" / "ledger.db") as ledger:
        ledger.claim_next()
        ledger.transition(job_id, JobState.FAILED, error="command exited with status 3",
                          exit_code=3, stderr_tail="line one\nbad row 7\n")
        assert ledger.find(Identity("bkt", "k.csv")) is not None
    _, out = run(config, "show", job_id)
    assert re.search(r"exit code: +3", out) and "| bad row 7" in out and "command exited with status 3" in out


def test_show_displays_phase_and_bytes_of_a_running_job(config: Path) -> None:
    from worker.jobs.states import Phase

    _, out = run(config, "submit", "--bucket", "bkt", "--key=big.bin")
    job_id = out.strip()
    with Ledger(config.parent / "state" / "ledger" / "ledger.db") as ledger:
        ledger.claim_next()
        ledger.set_progress(job_id, phase=Phase.DOWNLOADING, bytes_total=1000, bytes_done=250)
    _, out = run(config, "show", job_id)
    assert re.search(r"state: +running \(downloading\)", out)
    assert re.search(r"progress: +25% \(250 B of 1000 B\)", out)


def test_root_acts_as_the_owner_of_the_state_dir(short_tmp: Path) -> None:
    import os

    if os.geteuid() != 0:
        pytest.skip("needs root, as the SSM agent runs processorctl")
    config = write_config(short_tmp)
    short_tmp.chmod(0o755)
    state = short_tmp / "state"
    state.mkdir()
    os.chown(state, 65534, 65534)  # nobody: the service user's stand-in
    done = processorctl(config, "submit", "--bucket", "bkt", "--key=k")
    assert done.returncode == 0, done.stderr
    owners = {p.name: p.stat().st_uid for p in (state / "ledger").iterdir()}
    assert owners and set(owners.values()) == {65534}, owners
