"""Hostile input: object keys, S3 events, SSM parameters and config files that try to break in.

The key table goes through the whole local pipeline (`processor local`):
S3 event -> Lambda -> SSM document (ENV_VAR parameters, allowedPattern) ->
processorctl -> daemon -> results. Each key is either processed (its manifest
names it exactly) or rejected by the document's pattern with an error naming
``Key``; no key runs a command (canary files) or writes outside the state dir.
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

from lambda_trigger.events import MalformedEvent, parse_event
from lambda_trigger.handler import handle
from lambda_trigger.ssm import DeliveryError, FailedRecord
from tests.conftest import REPORT, write_config
from tests.e2e.test_local import running_local
from tests.eventfixtures import load_event
from tests.reliability.common import object_keys
from tests.unit.test_handler import ENV, Factory, FakeSsm
from tests.waiting import wait_until
from worker import exitcodes
from worker.job import Job, JobState
from worker.ledger import Ledger
from worker.local import cfn
from worker.local.params import InvalidParameters, validate_parameters

#: ``{c}`` is replaced by the canary dir: every key that could run a command touches a file there.
PROCESSED = [
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
    ".. /.. /.. /.. /tmp/escape-space",  # moto normalises pure ".." segments: see the unit test below
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
    "k" * 1009,  # the longest key whose results (<key>/_manifest.json) fit in S3's 1024 bytes
    "é" * 504 + "k",  # the same in 2-byte characters
]
#: Valid S3 keys too long for their results: processorctl refuses them by name.
TOO_LONG = [
    "k" * 1024,  # the longest S3 key, in bytes
    "é" * 512,  # 1024 bytes of 2-byte characters
]
#: Control characters fail the submit document's allowedPattern: rejected, naming ``Key``.
#: (A newline is absent: moto's server answers 404 to a PutObject whose key has one; the
#: pattern tests in tests/unit/test_document.py and below cover it.)
REJECTED = [
    "tab\there",
    "carriage\rreturn",
    "bell\x07",
    "escape\x1b[2Jclear",
    "delete\x7fchar",
    "nul\x00byte",
]


def _keys(canary: Path) -> tuple[list[str], list[str]]:
    return ([k.format(c=canary) for k in PROCESSED], [k.format(c=canary) for k in REJECTED])


def _lambda_failures(output: str) -> list[dict[str, Any]]:
    """The Lambda's record_failed log lines (SendCommand refused the parameters, as SSM does)."""
    return [json.loads(line) for line in output.splitlines()
            if line.startswith('{"event": "record_failed"')]


def _tree(root: Path, skip: Path) -> set[Path]:
    return {p for p in root.rglob("*") if skip not in p.parents and p != skip}


@pytest.mark.e2e
def test_hostile_keys_are_processed_or_rejected_and_never_run_anything(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    canary.mkdir()
    processed, rejected = _keys(canary)
    assert len(processed) + len(rejected) >= 30
    state = tmp_path / "state"
    started = time.monotonic()
    with running_local(tmp_path) as stack:
        before = _tree(tmp_path, state)
        s3 = stack.client("s3")
        for key in processed + rejected + TOO_LONG:
            s3.put_object(Bucket="processor-input", Key=key, Body=b"three little words\n")
        with Ledger(state / "ledger" / "ledger.db") as ledger:
            def seen() -> tuple[list[Job], list[dict[str, Any]], int]:
                return (ledger.list_jobs(), _lambda_failures(stack.output()),
                        stack.output().count("over S3's 1024-byte key limit"))

            def done() -> bool:
                jobs, rejections, too_long = seen()
                return len(jobs) >= len(processed) and all(
                    j.state.value in ("succeeded", "failed") for j in jobs
                ) and len(rejections) >= len(rejected) and too_long >= len(TOO_LONG)

            def progress() -> object:
                jobs, rejections, too_long = seen()
                return sorted(j.state.value for j in jobs), len(rejections), too_long

            wait_until(done, stall_s=60, progress=progress, interval=0.5,
                       describe=lambda: (progress(), stack.output()[-3000:]))
            jobs, rejections, too_long = seen()
        manifests = {key: json.loads(s3.get_object(Bucket="processor-output",
                                                   Key=key + "/_manifest.json")["Body"].read())
                     for key in processed}
        outputs = object_keys(s3, "processor-output")
        after = _tree(tmp_path, state)
    elapsed = time.monotonic() - started
    assert {j.key for j in jobs} == set(processed)
    assert [j for j in jobs if j.state is not JobState.SUCCEEDED] == []
    for key, manifest in manifests.items():
        assert manifest["source"]["key"] == key
        assert {o["key"] for o in manifest["outputs"]} == {key + "/summary.json", key + "/summary.md"}
    assert not any(o.startswith(r) for o in outputs for r in rejected)
    assert {r["key"] for r in rejections} == set(rejected), rejections
    assert all("InvalidParameters: parameter 'Key'" in r["error"] for r in rejections), rejections
    # No command ran: no canary, nothing new anywhere near the state dir, nothing at /.
    assert list(canary.iterdir()) == []
    assert after == before, after ^ before
    assert not Path("/tmp/escape-space").exists() and not Path("/pwned").exists()
    REPORT.append(f"hostile keys: {len(processed)} processed intact, {len(rejected)} rejected by the "
                  f"document's allowedPattern (InvalidParameters: Key), 0 canaries touched, "
                  f"{elapsed:.1f}s")


# -- the same keys, below the pipeline --------------------------------------------------------


@pytest.fixture(scope="module")
def submit_document() -> Mapping[str, Any]:
    specs = cfn.ssm_documents(cfn.load_template(cfn.default_template_path()), "processor")
    return next(s for s in specs if s.logical_id == "SubmitDocument").content


def _params(key: str) -> dict[str, list[str]]:
    return {"Bucket": ["processor-input"], "Key": [key], "VersionId": [""], "ETag": [""]}


@pytest.mark.parametrize("key", ["a\nb", "line\n", "\n", "a\r\nb", "a\x00", "\x1f", "k" * 1025, ""],
                         ids=repr)
def test_submit_document_rejects_keys_moto_cannot_carry_naming_key(
    submit_document: Mapping[str, Any], key: str
) -> None:
    with pytest.raises(InvalidParameters) as caught:
        validate_parameters(submit_document, _params(key))
    assert caught.value.name == "Key"


@pytest.mark.parametrize("key", ["../../etc/passwd", "a/../../b", "./.", "..", "../"], ids=repr)
def test_submit_document_passes_dot_segments_as_data(submit_document: Mapping[str, Any], key: str) -> None:
    # Real S3 keeps ".." segments (moto's server normalises them, so they are tested here and in
    # tests/unit/test_pipeline.py): the key is data, and no local path is ever built from it.
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
