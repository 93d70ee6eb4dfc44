"""Hostile input: object keys, S3 events, SSM parameters and config files that try to break in.

The key table goes through the whole local pipeline (`processor local`):
S3 event -> Lambda -> SSM document (ENV_VAR parameters, allowedPattern) ->
processorctl -> daemon -> results. Every legal S3 key is processed: the Lambda
sends it as ``Key`` when the document's pattern takes it, else as
``KeyBase64``; keys too long for ``<key>/_manifest.json`` get their results
under ``_by-id/<job id>/``. No key is rejected, every upload ends with a
manifest naming its key exactly, and no key runs a command (canary files) or
writes outside the state dir.

moto's server 404s a PutObject whose key holds a newline and normalises pure
``..`` segments, so those keys are covered below the pipeline (the document
and script here and in tests/unit/local/test_agent.py and test_ssm_keys.py, the
pipeline in tests/unit/processor_shared/test_layout.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

import processor_shared.layout as layout
from lambda_trigger.events import MalformedEvent, parse_event
from lambda_trigger.handler import handle
from lambda_trigger.ssm import DeliveryError, FailedRecord, encode_key_base64
from tests.support.daemon import write_config
from tests.support.events import load_event
from tests.support.local import running_local
from tests.support.probes import object_keys
from tests.support.report import REPORT
from tests.support.trigger import ENV, Factory, FakeSsm
from tests.support.waiting import wait_until
from worker import exitcodes
from worker.jobs.identity import decode_key_base64
from worker.jobs.job import Job
from worker.jobs.states import JobState
from worker.local import cfn
from worker.local.params import InvalidParameters, validate_parameters
from worker.state.ledger import Ledger

#: ``{c}`` is replaced by the canary dir: every key that could run a command touches a file there.
PLAIN = [
    "$(touch {c}/dollar-paren)",
    "`touch {c}/backtick`",
    "a; touch {c}/semicolon",
    "a && touch {c}/and",
    "a || touch {c}/or",
    "a | touch {c}/pipe",
    "a & touch {c}/background",
    "a > {c}/redirect",
    "a < /etc/passwd",
    "'; touch {c}/single-quote; '",
    '"; touch {c}/double-quote; "',
    '"$(touch {c}/quoted-subst)"',
    "${{IFS}}touch${{IFS}}{c}/ifs",
    "$HOME $PATH ${{SSM_Key}} $SSM_Bucket $0 $@",
    "$'\\x74ouch' {c}/ansi-c",
    "{{{{ Key }}}} {{{{Bucket}}}} {{{{ssm:Key}}}}",
    "{{input}} {{output_dir}} --key=other --bucket=elsewhere",
    "-rf",
    "--help",
    "-",
    "--key-base64=YQ",
    ".. /.. /.. /.. /tmp/escape-space",  # moto normalises pure ".." segments: see the module doc
    "..\\..\\..\\escape-backslash",
    "%2e%2e%2f%2e%2e%2fencoded-traversal",
    "/leading/slash",
    "double//slash//x",  # a key ending in "/" is a folder marker, which the Lambda skips
    "résumé 日本語 ñ Ünïcödé.csv",
    "📄 report 🎉.txt",
    "\u202egnp.exe",  # right-to-left override
    "zero\u200bwidth\ufeffbom",
    "* ? [a-z] ~ !! #comment",
    "<script>alert(1)</script>",
    "trailing space ",
    "_by-id/j-00000000000000000000",  # looks like a fallback prefix: always goes to its own
    "k" * 1009,  # the longest key whose results (<key>/_manifest.json) fit in S3's 1024 bytes
    "é" * 504 + "k",  # the same in 2-byte characters
]
NUL_KEY = "nul\x00byte"
#: Control characters: the document's Key pattern refuses them, so they travel as KeyBase64.
#: (A newline is absent: moto's server answers 404 to a PutObject whose key has one.)
CONTROL = [
    "tab\there",
    "carriage\rreturn",
    "bell\x07",
    "escape\x1b[2Jclear",
    "delete\x7fchar",
    NUL_KEY,
    "-\t$(touch {c}/tab-subst)",
]
#: Legal S3 keys too long for <key>/_manifest.json: results under _by-id/<job id>/.
FALLBACK = [
    "k" * 1010,  # one byte too long for its results
    "k" * 1024,  # the longest S3 key, in bytes
    "é" * 512,  # 1024 bytes of 2-byte characters
    "\U0001F4C4" * 256,  # 1024 bytes of 4-byte characters
    "\t" + "\U0001F4C4" * 255 + "abc",  # 1024 bytes with a control character: KeyBase64 at its longest
]


def _keys(canary: Path) -> list[str]:
    return [k.format(c=canary) for k in PLAIN + CONTROL] + FALLBACK


def _lambda_failures(output: str) -> list[dict[str, Any]]:
    """The Lambda's record_failed log lines (SendCommand refused the parameters, as SSM does)."""
    return [json.loads(line) for line in output.splitlines()
            if line.startswith('{"event": "record_failed"')]


def _tree(root: Path, skip: Path) -> set[Path]:
    return {p for p in root.rglob("*") if skip not in p.parents and p != skip}


@pytest.mark.e2e
@pytest.mark.timeout(900)  # a hang guard: the wait inside fails on a stall
def test_every_hostile_key_is_processed_and_none_runs_anything(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    canary.mkdir()
    keys = _keys(canary)
    assert len(keys) >= 45 and len(set(keys)) == len(keys)
    state = tmp_path / "state"
    started = time.monotonic()
    with running_local(tmp_path) as stack:
        before = _tree(tmp_path, state)
        s3 = stack.client("s3")
        for key in keys:
            s3.put_object(Bucket="processor-input", Key=key, Body=b"three little words\n")
        # A liveness bound: fail only when nothing has moved for 90 s.
        with Ledger(state / "ledger" / "ledger.db") as ledger:
            jobs: list[Job] = []
            finished: list[Job] = []
            rejections: list[dict[str, Any]] = []

            def settled() -> bool:
                nonlocal jobs, finished, rejections
                jobs = ledger.list_jobs()
                finished = [j for j in jobs if j.state.value in ("succeeded", "failed")]
                rejections = _lambda_failures(stack.output())
                return len(finished) >= len(keys) or bool(rejections)

            wait_until(settled, stall_s=90.0, interval=0.5, progress=lambda: len(jobs) + len(finished),
                       describe=lambda: (len(jobs), len(finished), stack.output()[-3000:]))
        outputs = set(object_keys(s3, "processor-output"))
        manifests = {j.key: json.loads(s3.get_object(Bucket="processor-output",
                                                     Key=j.result_prefix + layout.MANIFEST_NAME)
                                       ["Body"].read())
                     for j in jobs if j.state is JobState.SUCCEEDED and j.result_prefix}
        failure_records = {record["source"]["key"]: record["job_id"] for record in (
            json.loads(s3.get_object(Bucket="processor-output", Key=j.result_prefix + layout.FAILED_NAME)
                       ["Body"].read())
            for j in jobs if j.state is JobState.FAILED and j.result_prefix)}
        after = _tree(tmp_path, state)
    elapsed = time.monotonic() - started
    assert rejections == [], rejections  # 0 keys rejected
    assert sorted(j.key for j in jobs) == sorted(keys)
    # Every key succeeds, a NUL byte included (it reaches the command exactly through
    # PROCESSOR_SOURCE_KEY_BASE64): one manifest per upload, naming its key byte for byte,
    # at the documented place, and no failure record anywhere.
    assert [j for j in jobs if j.state is not JobState.SUCCEEDED] == []
    assert failure_records == {}
    assert sorted(manifests) == sorted(keys)
    fallback = {k for k in keys if k in FALLBACK or k.startswith("_by-id/")}
    for job in jobs:
        manifest = manifests[job.key]
        assert manifest["source"]["key"] == job.key and manifest["job_id"] == job.id
        expected = f"_by-id/{job.id}/" if job.key in fallback else job.key + "/"
        assert job.result_prefix == expected, job.key[:40]
        assert {o["key"] for o in manifest["outputs"]} == {expected + "summary.json",
                                                           expected + "summary.md"}
    assert sum(o.endswith("/" + layout.MANIFEST_NAME) for o in outputs) == len(keys)
    assert [o for o in outputs if o.endswith("/" + layout.FAILED_NAME)] == []
    # No command ran: no canary, nothing new anywhere near the state dir, nothing at /.
    assert list(canary.iterdir()) == []
    assert after == before, after ^ before
    assert not Path("/tmp/escape-space").exists() and not Path("/pwned").exists()
    REPORT.append(f"hostile keys: {len(keys)} uploaded, 0 rejected, {len(keys)} processed "
                  f"intact ({len(CONTROL) + 1} via KeyBase64, {len(fallback)} at _by-id/<job id>/), "
                  f"0 failure records, 0 canaries touched, {elapsed:.1f}s")


# -- the same keys, below the pipeline --------------------------------------------------------


@pytest.fixture(scope="module")
def submit_document() -> Mapping[str, Any]:
    specs = cfn.ssm_documents(cfn.load_template(cfn.default_template_path()), "processor")
    return next(s for s in specs if s.logical_id == "SubmitDocument").content


def _params(key: str) -> dict[str, list[str]]:
    return {"Bucket": ["processor-input"], "Key": [key], "VersionId": [""], "ETag": [""]}


@pytest.mark.parametrize("key", ["a\nb", "line\n", "\n", "a\r\nb", "a\x00", "\x1f", "../\n../x"],
                         ids=repr)
def test_keys_moto_cannot_carry_pass_the_document_as_key_base64(
    submit_document: Mapping[str, Any], key: str
) -> None:
    # The plain Key parameter refuses them, naming Key ...
    with pytest.raises(InvalidParameters) as caught:
        validate_parameters(submit_document, _params(key))
    assert caught.value.name == "Key"
    # ... and KeyBase64 carries them byte for byte.
    encoded = encode_key_base64(key)
    values = validate_parameters(submit_document, {"Bucket": ["processor-input"],
                                                   "KeyBase64": [encoded]})
    assert values["Key"] == "" and decode_key_base64(values["KeyBase64"]) == key


@pytest.mark.parametrize("key", ["k" * 1025, "é" * 1025], ids=lambda k: f"{len(k)} chars")
def test_key_longer_than_any_s3_key_is_refused_naming_key(
    submit_document: Mapping[str, Any], key: str
) -> None:
    with pytest.raises(InvalidParameters) as caught:
        validate_parameters(submit_document, _params(key))
    assert caught.value.name == "Key"


@pytest.mark.parametrize("key", ["../../etc/passwd", "a/../../b", "./.", "..", "../"], ids=repr)
def test_submit_document_passes_dot_segments_as_data(submit_document: Mapping[str, Any], key: str) -> None:
    # Real S3 keeps ".." segments (moto's server normalises them, so they are tested here and in
    # tests/unit/runner/test_pipeline.py): the key is data, and no local path is ever built from it.
    assert validate_parameters(submit_document, _params(key))["Key"] == key


@pytest.mark.parametrize("name,value", [
    ("Bucket", "Bad_Bucket;rm"), ("Bucket", "$(id)"), ("VersionId", "v1;id"),
    ("ETag", "not-an-md5`id`"), ("ETag", '"' + "0" * 32 + '"'),
])
def test_submit_document_rejects_other_bad_parameters_by_name(
    submit_document: Mapping[str, Any], name: str, value: str
) -> None:
    params = _params("ok.txt")
    params[name] = [value]
    with pytest.raises(InvalidParameters) as caught:
        validate_parameters(submit_document, params)
    assert caught.value.name == name and name in str(caught.value)


# -- malformed S3 events ---------------------------------------------------------------------


@pytest.mark.parametrize("event,field", [
    ({}, "Records"),
    ({"Records": "not a list"}, "Records"),
    ([], "event"),
    ("a string", "event"),
])
def test_malformed_event_is_a_clear_error_and_nothing_is_sent(event: Any, field: str) -> None:
    ssm = FakeSsm()
    with pytest.raises(MalformedEvent) as caught:
        handle(event, ENV, Factory(ssm))
    assert field in str(caught.value) and ssm.calls == []


@pytest.mark.parametrize("damage,field", [
    (lambda r: r["s3"]["object"].pop("key"), "s3.object.key"),
    (lambda r: r["s3"].pop("bucket"), "s3.bucket"),
    (lambda r: r["s3"]["object"].__setitem__("key", 42), "s3.object.key"),
    (lambda r: r["s3"]["object"].__setitem__("key", ""), "s3.object.key"),
    (lambda r: r.pop("s3"), "s3"),
])
def test_one_malformed_record_fails_the_invocation_after_sending_the_good_ones(
    damage: Any, field: str
) -> None:
    event = load_event("multi_record")
    good = len(parse_event(event).requests) - 1
    damage(event["Records"][0])
    ssm = FakeSsm()
    with pytest.raises(DeliveryError) as caught:
        handle(event, ENV, Factory(ssm))
    # The good records went out (the ledger dedupes them on Lambda's retry); the bad one is named.
    assert len(ssm.calls) == good
    assert "Records[0]" in str(caught.value) and field in str(caught.value), str(caught.value)


# -- a damaged config ------------------------------------------------------------------------


def _run_daemon(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker", "run", "--config", str(config)],
                          capture_output=True, text=True, timeout=30, env={**os.environ})


@pytest.mark.parametrize("cut,named", [
    ("[s3]\n", "s3.output_bucket"),  # truncated after the first table header
    # Cut mid-value or mid-header: no key is complete, so the error is TOML's, naming the file.
    ('[s3]\noutput_bucket = "o', "is not valid TOML"),
    ("[s3]\noutput_bucket = ", "is not valid TOML"),
    ("[s3", "is not valid TOML"),
    ("", "s3.output_bucket"),  # empty file
])
def test_truncated_config_stops_the_daemon_naming_the_key(short_tmp: Path, cut: str, named: str) -> None:
    config = write_config(short_tmp)
    config.write_text(cut)
    done = _run_daemon(config)
    assert done.returncode == exitcodes.USAGE, done.stderr
    assert "configuration error" in done.stderr and named in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (short_tmp / "p.sock").exists()


@pytest.mark.parametrize("line,key", [
    ("concurrency = -1", "processing.concurrency"),
    ('concurrency = "2"', "processing.concurrency"),
    ("max_attempts = 0", "processing.max_attempts"),
    ('command = "not a list {input}"', "processing.command"),
    ('command = ["no-input-placeholder"]', "processing.command"),
])
def test_bad_values_stop_the_daemon_naming_the_key(short_tmp: Path, line: str, key: str) -> None:
    config = write_config(short_tmp)
    text = config.read_text()
    name = line.split(" ")[0]
    text = "\n".join(ln for ln in text.splitlines() if not ln.startswith(name + " "))
    config.write_text(text.replace("[processing]", f"[processing]\n{line}"))
    done = _run_daemon(config)
    assert done.returncode == exitcodes.USAGE and key in done.stderr, done.stderr


def test_delivery_error_message_escapes_control_characters_in_keys() -> None:
    failure = FailedRecord("processor-input", "evil\x1b[2J\rcleared\x7f", "InvalidParameters", "bad")
    message = str(DeliveryError([failure]))
    assert not any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in message), repr(message)
