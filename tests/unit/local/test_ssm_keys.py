"""Every legal S3 key reaches processorctl intact: Key when the document's pattern takes it,
KeyBase64 otherwise (issue 13 item 2).

The Lambda's choice is checked against the submit document itself, through the
local agent's allowedPattern matcher (Go RE2 semantics), and the encoded key
is decoded by processorctl's own decoder.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from lambda_trigger.events import JobRequest, parse_event
from lambda_trigger.handler import handle
from lambda_trigger.ssm import encode_key_base64, submit_parameters
from tests.support.events import CONTROL_KEY, event_names, load_event
from tests.support.trigger import ENV, Factory, FakeSsm
from worker.jobs.identity import decode_key_base64
from worker.local import cfn
from worker.local.params import InvalidParameters, validate_parameters
from worker.local.patterns import pattern_matches

#: Control characters S3 allows in keys (everything below 0x20, and DEL).
CONTROL_KEYS = [f"a{chr(c)}b" for c in (*range(0x20), 0x7F)]
PLAIN_KEYS = [
    "a.csv", "-rf", "--help", "../../etc/passwd", "$(touch /tmp/x)`id`;|&", "résumé 日本.csv",
    "\u202egnp.exe", "zero\u200bwidth\ufeffbom", "k" * 1024, "\U0001F4C4" * 256, "é" * 512,
    "{{ Key }}", "trailing space ", "a\u0085b",  # NEL is C1, not C0: S3 and the pattern take it
]
#: The longest keys S3 takes, each with a control character, in 1- to 4-byte characters.
LONGEST_HOSTILE = ["\t" + "k" * 1023, "\n" + "é" * 511 + "k", "\x7f" + "日" * 341,
                   "\x00" + "\U0001F4C4" * 255 + "abc"]


@pytest.fixture(scope="module")
def submit_document() -> Mapping[str, Any]:
    specs = cfn.ssm_documents(cfn.load_template(cfn.default_template_path()), "processor")
    return next(s for s in specs if s.logical_id == "SubmitDocument").content


def _request(key: str) -> JobRequest:
    return JobRequest("processor-input", key, None, "0" * 32, "ObjectCreated:Put", None)


def _key_of(values: Mapping[str, str]) -> str:
    """What the submit script hands processorctl, decoded the way processorctl decodes it."""
    if values["KeyBase64"]:
        assert values["Key"] == ""
        return decode_key_base64(values["KeyBase64"])
    return values["Key"]


@pytest.mark.parametrize("name", event_names())
def test_every_documented_event_key_passes_the_document_and_arrives_intact(
    submit_document: Mapping[str, Any], name: str
) -> None:
    for request in parse_event(load_event(name)).requests:
        values = validate_parameters(submit_document, submit_parameters(request))
        assert _key_of(values) == request.key


def test_control_character_event_goes_as_key_base64(submit_document: Mapping[str, Any]) -> None:
    (request,) = parse_event(load_event("put_key_with_control_characters")).requests
    params = submit_parameters(request)
    assert "Key" not in params and params["KeyBase64"] == [encode_key_base64(request.key)]
    # Key would have been refused by the document: the failure this change removes.
    with pytest.raises(InvalidParameters) as caught:
        validate_parameters(submit_document, {"Bucket": [request.bucket], "Key": [request.key]})
    assert caught.value.name == "Key"


def test_longest_4_byte_key_goes_readable_as_key(submit_document: Mapping[str, Any]) -> None:
    (request,) = parse_event(load_event("put_key_1024_bytes_of_4_byte_characters")).requests
    assert len(request.key.encode()) == 1024
    assert submit_parameters(request)["Key"] == [request.key]


def test_longest_key_with_a_tab_fits_key_base64(submit_document: Mapping[str, Any]) -> None:
    (request,) = parse_event(load_event("put_key_1024_bytes_with_a_tab")).requests
    (encoded,) = submit_parameters(request)["KeyBase64"]
    assert len(encoded) == 1366  # ceil(1024 * 4 / 3), no padding: the pattern's upper bound
    assert validate_parameters(submit_document, submit_parameters(request))["KeyBase64"] == encoded


@pytest.mark.parametrize("key", CONTROL_KEYS + PLAIN_KEYS + LONGEST_HOSTILE, ids=lambda k: repr(k)[:30])
def test_lambda_uses_key_exactly_when_the_document_pattern_takes_it(
    submit_document: Mapping[str, Any], key: str
) -> None:
    params = submit_parameters(_request(key))
    key_pattern = submit_document["parameters"]["Key"]["allowedPattern"]
    assert ("Key" in params) is pattern_matches(key_pattern, key)
    assert ("Key" in params) is not ("KeyBase64" in params)
    values = validate_parameters(submit_document, params)
    assert _key_of(values) == key


@pytest.mark.parametrize("key", CONTROL_KEYS, ids=repr)
def test_control_characters_never_go_as_key(key: str) -> None:
    assert set(submit_parameters(_request(key))) == {"Bucket", "KeyBase64", "ETag"}


@pytest.mark.parametrize("value,ok", [
    ("", True),  # the default: Key is used
    ("YQ", True),
    ("A" * 1366, True),
    ("A" * 1367, False),
    ("YQ==", False),  # the document takes no padding (processorctl would)
    ("a+b/", False),  # standard base64's alphabet, not base64url's
    ("YQ\n", False),
    ("Y Q", False),
    ("$(id)", False),
])
def test_key_base64_pattern(submit_document: Mapping[str, Any], value: str, ok: bool) -> None:
    pattern = submit_document["parameters"]["KeyBase64"]["allowedPattern"]
    assert pattern_matches(pattern, value) is ok


def test_key_and_key_base64_both_default_to_empty(submit_document: Mapping[str, Any]) -> None:
    # "Exactly one" is the script's check (tests/unit/test_submit_script.py); the service
    # fills both defaults, so either may be left out of SendCommand.
    values = validate_parameters(submit_document, {"Bucket": ["processor-input"]})
    assert values["Key"] == "" and values["KeyBase64"] == ""


def test_the_handler_sends_a_control_character_key_as_key_base64() -> None:
    ssm = FakeSsm()
    handle(load_event("put_key_with_control_characters"), ENV, Factory(ssm))
    (call,) = ssm.calls
    assert set(call["Parameters"]) == {"Bucket", "KeyBase64", "ETag"}
    assert ssm.keys == [CONTROL_KEY]
    assert "\n" not in call["Comment"] and "\t" not in call["Comment"]
