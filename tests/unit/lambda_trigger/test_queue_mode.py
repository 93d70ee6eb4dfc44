"""The Lambda's fleet mode (QUEUE_URL): handler + lambda_trigger.sqs, with an in-memory SQS fake.

The adapter against the emulator over HTTP is in tests/integration/test_lambda_sqs.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from lambda_trigger import sqs
from lambda_trigger.events import JobRequest, parse_event
from lambda_trigger.handler import handle
from lambda_trigger.ssm import DeliveryError
from tests.support.events import load_event

QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/processor-work"
ENV = {"QUEUE_URL": QUEUE}


class FakeSqs:
    """Records SendMessageBatch calls; ``fail`` maps key -> entry errors, consumed one per send.

    An entry error is ``(code, sender_fault)``; a key listed in ``drop`` is
    left out of the answer once (neither Successful nor Failed).
    """

    def __init__(self, fail: Mapping[str, list[tuple[str, bool]]] | None = None,
                 drop: set[str] | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self._fail = {key: list(errors) for key, errors in (fail or {}).items()}
        self._drop = set(drop or ())
        self.sent = 0

    def send_message_batch(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        successful, failed = [], []
        for entry in kwargs["Entries"]:
            key = json.loads(entry["MessageBody"])["key"]
            errors = self._fail.get(key)
            if key in self._drop:
                self._drop.discard(key)
            elif errors:
                code, sender_fault = errors.pop(0)
                failed.append({"Id": entry["Id"], "Code": code, "Message": f"fake {code}",
                               "SenderFault": sender_fault})
            else:
                self.sent += 1
                successful.append({"Id": entry["Id"], "MessageId": f"msg-{self.sent}",
                                   "MD5OfMessageBody": "x"})
        return {"Successful": successful, "Failed": failed}

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(e["MessageBody"]) for call in self.calls for e in call["Entries"]]


class NoSsm:
    def send_command(self, **kwargs: Any) -> dict[str, Any]:
        raise AssertionError("queue mode must not call SendCommand")


def _ssm() -> NoSsm:
    return NoSsm()


def _many(count: int) -> dict[str, Any]:
    record = load_event("put_plain")["Records"][0]
    records = []
    for n in range(count):
        copy = json.loads(json.dumps(record))
        copy["s3"]["object"]["key"] = f"many/{n:02d}.txt"
        records.append(copy)
    return {"Records": records}


@pytest.fixture(autouse=True)
def _capture_trigger_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="processor.trigger")


def _lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "processor.trigger"]


def test_one_message_per_created_record_with_the_contract_body() -> None:
    fake = FakeSqs()

    summary = handle(load_event("multi_record"), ENV, _ssm, queue_client_factory=lambda: fake)

    assert summary == {"sent": 2, "skipped": 2, "command_ids": [], "message_ids": ["msg-1", "msg-2"]}
    (call,) = fake.calls
    assert call["QueueUrl"] == QUEUE
    assert fake.bodies == [
        {"bucket": "processor-input", "key": "incoming/batch/a.csv", "version_id": None,
         "etag": "0f343b0931126a20f133d67c2b018a3b"},
        {"bucket": "processor-input", "key": "incoming/batch/b c+d.csv",
         "version_id": "Ht.m4Mb0HmHRLyqG6CdbPnJY2T5Uc1Vp", "etag": "9b2cf535f27731c974343645a3985328"},
    ]


@pytest.mark.parametrize(("fixture", "key"), [
    ("put_key_with_plus", "math/1+1=2 (draft).txt"),
    ("put_shell_metachar_key", "uploads/$(touch /tmp/pwned);rm -rf ~`id`|&<>'\"\\*?.csv"),
])
def test_the_key_is_sent_raw_decoded_exactly_once(fixture: str, key: str) -> None:
    fake = FakeSqs()

    handle(load_event(fixture), ENV, _ssm, queue_client_factory=lambda: fake)

    assert [body["key"] for body in fake.bodies] == [key]


def test_a_percent_sign_is_not_decoded_twice() -> None:
    event = load_event("put_plain")
    event["Records"][0]["s3"]["object"]["key"] = "a%2525b"
    fake = FakeSqs()

    handle(event, ENV, _ssm, queue_client_factory=lambda: fake)

    assert fake.bodies[0]["key"] == "a%25b"


def test_records_go_in_batches_of_ten() -> None:
    fake = FakeSqs()

    summary = handle(_many(25), ENV, _ssm, queue_client_factory=lambda: fake)

    assert [len(call["Entries"]) for call in fake.calls] == [10, 10, 5]
    assert [body["key"] for body in fake.bodies] == [f"many/{n:02d}.txt" for n in range(25)]
    assert summary["sent"] == 25 and len(set(summary["message_ids"])) == 25
    for call in fake.calls:
        assert len({entry["Id"] for entry in call["Entries"]}) == len(call["Entries"])


def test_one_log_line_per_record_with_its_message_id(caplog: pytest.LogCaptureFixture) -> None:
    handle(load_event("multi_record"), ENV, _ssm, queue_client_factory=FakeSqs)

    sent = [line for line in _lines(caplog) if line["event"] == "record_sent"]
    assert [(line["key"], line["message_id"], line["queue_url"]) for line in sent] == [
        ("incoming/batch/a.csv", "msg-1", QUEUE), ("incoming/batch/b c+d.csv", "msg-2", QUEUE)]
    assert all(line["command_id"] is None and line["instance_id"] is None for line in sent)


def test_entries_failing_on_the_service_side_are_resent_with_bounded_backoff() -> None:
    fake = FakeSqs(fail={"many/03.txt": [("InternalError", False)] * (sqs.ENTRY_ATTEMPTS - 1)},
                   drop={"many/05.txt"})
    sleeps: list[float] = []
    requests = parse_event(_many(8)).requests

    queued, failed = sqs.send_requests(fake, QUEUE, requests, sleep=sleeps.append)

    assert failed == []
    assert [item.request.key for item in queued] == [r.key for r in requests]  # request order
    assert len(sleeps) == sqs.ENTRY_ATTEMPTS - 1
    for attempt, delay in enumerate(sleeps, start=1):
        ceiling = min(sqs.ENTRY_BACKOFF_CAP_S, sqs.ENTRY_BACKOFF_BASE_S * 2 ** (attempt - 1))
        assert ceiling / 2 <= delay <= ceiling
    # Only the failed entries were sent again.
    assert [len(call["Entries"]) for call in fake.calls] == [8, 2, 1, 1]


def test_an_entry_still_failing_after_the_attempts_fails_the_invocation_naming_its_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeSqs(fail={"many/01.txt": [("ServiceUnavailable", False)] * sqs.ENTRY_ATTEMPTS})

    with pytest.raises(DeliveryError) as info:
        handle(_many(3), ENV, _ssm, queue_client_factory=lambda: fake)

    (failure,) = info.value.failures
    assert (failure.key, failure.error) == ("many/01.txt", "ServiceUnavailable")
    assert "s3://processor-input/many/01.txt (ServiceUnavailable" in str(info.value)
    assert [body["key"] for body in fake.bodies].count("many/01.txt") == sqs.ENTRY_ATTEMPTS
    events = sorted(line["event"] for line in _lines(caplog))
    assert events == ["record_failed", "record_sent", "record_sent"]


def test_a_sender_fault_is_not_resent() -> None:
    fake = FakeSqs(fail={"many/00.txt": [("InvalidMessageContents", True)]})

    with pytest.raises(DeliveryError, match="InvalidMessageContents"):
        handle(_many(2), ENV, _ssm, queue_client_factory=lambda: fake)

    assert len(fake.calls) == 1


def test_a_failed_call_fails_its_batch_and_the_other_batches_still_go() -> None:
    class FirstCallDenied(FakeSqs):
        def send_message_batch(self, **kwargs: Any) -> dict[str, Any]:
            if not self.calls:
                self.calls.append(kwargs)
                raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}},
                                  "SendMessageBatch")
            return super().send_message_batch(**kwargs)

    fake = FirstCallDenied()

    with pytest.raises(DeliveryError) as info:
        handle(_many(12), ENV, _ssm, queue_client_factory=lambda: fake)

    assert [f.key for f in info.value.failures] == [f"many/{n:02d}.txt" for n in range(10)]
    assert {f.error for f in info.value.failures} == {"AccessDenied"}
    assert fake.sent == 2


def test_transport_errors_become_failures_with_the_botocore_name() -> None:
    class Unreachable:
        def send_message_batch(self, **kwargs: Any) -> dict[str, Any]:
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")

    queued, failed = sqs.send_requests(Unreachable(), QUEUE, parse_event(_many(1)).requests)

    assert queued == [] and [f.code for f in failed] == ["EndpointConnectionError"]


@pytest.mark.parametrize("name", ["removed_delete", "folder_marker", "s3_test_event"])
def test_nothing_to_send_builds_no_queue_client(name: str) -> None:
    def factory() -> FakeSqs:
        raise AssertionError("no client needed")

    summary = handle(load_event(name), ENV, _ssm, queue_client_factory=factory)

    assert summary["sent"] == 0 and summary["message_ids"] == []


@pytest.mark.parametrize("key", ["\uffff\x01\x7f tab\there", "r\u00e9sum\u00e9 \U0001f600.csv",
                                 "line\nbreak", "a\\b\"c"])
def test_any_s3_key_makes_an_ascii_body_that_round_trips(key: str) -> None:
    request = JobRequest("b", key, "v1", None, "ObjectCreated:Put", None)

    body = sqs.message_body(request)

    assert body.isascii() and all(ch >= " " for ch in body)
    assert json.loads(body) == {"bucket": "b", "key": key, "version_id": "v1", "etag": None}
