"""lambda_trigger.events: S3 event payloads -> JobRequest / Skipped / MalformedRecord."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from lambda_trigger.events import (
    JobRequest,
    MalformedEvent,
    MalformedRecord,
    ParsedEvent,
    Skipped,
    parse_event,
)
from tests.support.events import CONTROL_KEY, PUT_ETAG, SHELL_KEY, event_names, load_event

BUCKET = "processor-input"
EMPTY_ETAG = "d41d8cd98f00b204e9800998ecf8427e"
LONGEST_TAB_KEY = "\t" + "\U0001F4C4" * 255 + "abc"  # 1,024 bytes


def _put(key: str, sequencer: str, *, version_id: str | None = None, etag: str = PUT_ETAG,
         event_name: str = "ObjectCreated:Put") -> JobRequest:
    return JobRequest(BUCKET, key, version_id, etag, event_name, sequencer)


#: fixture -> (requests, skipped record indexes). Keys here are the decoded,
#: byte-exact keys as stored in S3.
EXPECTED: dict[str, tuple[list[JobRequest], list[int]]] = {
    "put_plain": ([_put("incoming/report-2024-05.csv", "0055AED6DCD90281E5")], []),
    "put_key_with_spaces": ([_put("reports/Q1 summary 2024.csv", "0055AED6DCD90281E6")], []),
    "put_key_with_plus": ([_put("math/1+1=2 (draft).txt", "0055AED6DCD90281E7")], []),
    "put_unicode_key": ([_put("inbox/r\u00e9sum\u00e9 \u65e5\u672c.csv", "0055AED6DCD90281E8")], []),
    "put_shell_metachar_key": ([_put(SHELL_KEY, "0055AED6DCD90281E9")], []),
    "put_shell_metachar_key_slash_encoded": ([_put(SHELL_KEY, "0055AED6DCD90281EA")], []),
    # Control characters are legal in S3 keys; S3 percent-encodes them in events.
    "put_key_with_control_characters": ([_put(CONTROL_KEY, "0055AED6DCD90281ED",
                                              etag="5d41402abc4b2a76b9719d911017c592")], []),
    # The longest key S3 takes (1,024 bytes), in 4-byte UTF-8 characters.
    "put_key_1024_bytes_of_4_byte_characters": ([_put("\U0001F4C4" * 256, "0055AED6DCD90281EE",
                                                      etag="7d793037a0760186574b0282f2f435e7")], []),
    "put_key_1024_bytes_with_a_tab": ([_put(LONGEST_TAB_KEY, "0055AED6DCD90281EF",
                                            etag="9e107d9d372bb6826bd81d3542a419d6")], []),
    "put_versioned": ([_put("incoming/versioned.csv", "0055AED6DCD90281EB",
                            version_id="096fKKXTRTtl3on89fVO.nfljtsv6qko")], []),
    "multipart_complete": ([_put("incoming/large-video.mp4", "0055AED6DCD90281EC",
                                 version_id="3HL4kqtJlcpXroDTDmjVBH40Nrjfkd",
                                 etag="e4c2b2f6e0d1c0b7a6f5e4d3c2b1a098-13",
                                 event_name="ObjectCreated:CompleteMultipartUpload")], []),
    "removed_delete": ([], [0]),
    "folder_marker": ([], [0]),
    "s3_test_event": ([], []),
    "multi_record": (
        [
            _put("incoming/batch/a.csv", "0055AED6DCD9028200"),
            _put("incoming/batch/b c+d.csv", "0055AED6DCD9028202",
                 version_id="Ht.m4Mb0HmHRLyqG6CdbPnJY2T5Uc1Vp",
                 etag="9b2cf535f27731c974343645a3985328", event_name="ObjectCreated:Copy"),
        ],
        [1, 3],
    ),
}


def _record(event: dict[str, Any], index: int = 0) -> dict[str, Any]:
    record: dict[str, Any] = event["Records"][index]
    return record


def test_every_fixture_has_an_expectation() -> None:
    assert sorted(EXPECTED) == event_names()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_parses_to_expected_requests(name: str) -> None:
    requests, skipped_indexes = EXPECTED[name]

    parsed = parse_event(load_event(name))

    assert parsed.requests == requests
    assert [skip.index for skip in parsed.skipped] == skipped_indexes
    assert parsed.errors == []


def test_test_event_is_flagged_and_produces_nothing() -> None:
    parsed = parse_event(load_event("s3_test_event"))

    assert parsed == ParsedEvent(is_test_event=True)


def test_removed_event_is_skipped_with_reason_and_location() -> None:
    (skip,) = parse_event(load_event("removed_delete")).skipped

    assert skip == Skipped(0, "event 'ObjectRemoved:Delete' is not ObjectCreated:*",
                           BUCKET, "incoming/report-2024-05.csv")


def test_folder_marker_is_skipped() -> None:
    (skip,) = parse_event(load_event("folder_marker")).skipped

    assert (skip.key, "folder marker" in skip.reason) == ("photos/", True)


def test_folder_marker_detected_after_decoding() -> None:
    event = load_event("folder_marker")
    _record(event)["s3"]["object"]["key"] = "photos%2F2024%2F"

    (skip,) = parse_event(event).skipped

    assert skip.key == "photos/2024/"


@pytest.mark.parametrize("event_name", ["s3:ObjectCreated:Put", "ObjectCreated:Post"])
def test_created_event_names_with_or_without_prefix(event_name: str) -> None:
    event = load_event("put_plain")
    _record(event)["eventName"] = event_name

    (request,) = parse_event(event).requests

    assert request.event_name == event_name.removeprefix("s3:")


@pytest.mark.parametrize("event_name", ["ObjectRemoved:DeleteMarkerCreated", "s3:ObjectRestore:Post",
                                        "ObjectTagging:Put", "LifecycleExpiration:Delete"])
def test_non_create_events_are_skipped(event_name: str) -> None:
    event = load_event("put_plain")
    _record(event)["eventName"] = event_name

    parsed = parse_event(event)

    assert (parsed.requests, len(parsed.skipped), parsed.errors) == ([], 1, [])


def test_other_event_source_is_skipped() -> None:
    event = load_event("put_plain")
    _record(event)["eventSource"] = "aws:sqs"

    (skip,) = parse_event(event).skipped

    assert "aws:sqs" in skip.reason


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        ("a%2525b", "a%25b"),  # decoded once: not "a%b"
        ("a%25b", "a%b"),
        ("a+b", "a b"),
        ("a%2Bb", "a+b"),
        ("a%2B%2Bb+", "a++b "),
        ("dir%2Fsub/file", "dir/sub/file"),
    ],
)
def test_key_is_decoded_exactly_once(raw: str, decoded: str) -> None:
    event = load_event("put_plain")
    _record(event)["s3"]["object"]["key"] = raw

    (request,) = parse_event(event).requests

    assert request.key == decoded


@pytest.mark.parametrize("version_id", ["", "null", None])
def test_empty_version_id_is_none(version_id: str | None) -> None:
    event = load_event("put_versioned")
    _record(event)["s3"]["object"]["versionId"] = version_id

    (request,) = parse_event(event).requests

    assert request.version_id is None


@pytest.mark.parametrize(("etag", "expected"), [('"abc"', "abc"), ("abc", "abc"), ('""', None),
                                                ("", None)])
def test_etag_quotes_are_stripped(etag: str, expected: str | None) -> None:
    event = load_event("put_plain")
    _record(event)["s3"]["object"]["eTag"] = etag

    (request,) = parse_event(event).requests

    assert request.etag == expected


def test_missing_etag_and_sequencer_are_none() -> None:
    event = load_event("put_plain")
    del _record(event)["s3"]["object"]["eTag"]
    del _record(event)["s3"]["object"]["sequencer"]

    (request,) = parse_event(event).requests

    assert (request.etag, request.sequencer) == (None, None)


@pytest.mark.parametrize("event", [None, [], "Records", 42])
def test_event_that_is_not_an_object_is_malformed(event: object) -> None:
    with pytest.raises(MalformedEvent) as info:
        parse_event(event)

    assert info.value.field == "event"
    assert isinstance(info.value, ValueError)


def test_event_without_records_is_malformed() -> None:
    with pytest.raises(MalformedEvent, match=r"^Records: missing") as info:
        parse_event({"detail-type": "Object Created"})

    assert info.value.field == "Records"


@pytest.mark.parametrize("records", [{}, "x", 1])
def test_records_not_a_list_is_malformed(records: object) -> None:
    with pytest.raises(MalformedEvent, match=r"^Records: expected a list") as info:
        parse_event({"Records": records})

    assert info.value.field == "Records"


def test_empty_records_list_is_nothing_to_do() -> None:
    assert parse_event({"Records": []}) == ParsedEvent()


def _malformed(mutate: Any, name: str = "put_plain") -> MalformedRecord:
    event = load_event(name)
    mutate(_record(event))
    parsed = parse_event(event)
    assert (parsed.requests, parsed.skipped) == ([], [])
    (error,) = parsed.errors
    return error


def test_missing_key_names_the_field() -> None:
    error = _malformed(lambda record: record["s3"]["object"].pop("key"))

    assert (error.index, error.field) == (0, "Records[0].s3.object.key")
    assert str(error) == "Records[0].s3.object.key: missing"


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: r["s3"]["object"].__setitem__("key", 42), "Records[0].s3.object.key"),
        (lambda r: r["s3"]["object"].__setitem__("key", ""), "Records[0].s3.object.key"),
        (lambda r: r["s3"]["object"].__setitem__("key", "caf%E9"), "Records[0].s3.object.key"),
        (lambda r: r["s3"]["bucket"].pop("name"), "Records[0].s3.bucket.name"),
        (lambda r: r["s3"].pop("bucket"), "Records[0].s3.bucket"),
        (lambda r: r["s3"].pop("object"), "Records[0].s3.object"),
        (lambda r: r.pop("s3"), "Records[0].s3"),
        (lambda r: r.pop("eventName"), "Records[0].eventName"),
        (lambda r: r.pop("eventSource"), "Records[0].eventSource"),
        (lambda r: r["s3"]["object"].__setitem__("versionId", 7), "Records[0].s3.object.versionId"),
        (lambda r: r["s3"]["object"].__setitem__("eTag", ["x"]), "Records[0].s3.object.eTag"),
    ],
)
def test_malformed_record_names_the_field(mutate: Any, field: str) -> None:
    error = _malformed(mutate)

    assert error.field == field
    assert str(error).startswith(f"{field}: ")


def test_non_object_record_is_malformed() -> None:
    parsed = parse_event({"Records": ["not a record"]})

    (error,) = parsed.errors
    assert error.field == "Records[0]"


def test_malformed_record_does_not_stop_the_others() -> None:
    event = load_event("multi_record")
    del _record(event, 2)["s3"]["object"]["key"]

    parsed = parse_event(event)

    assert [request.key for request in parsed.requests] == ["incoming/batch/a.csv"]
    assert [skip.index for skip in parsed.skipped] == [1, 3]
    assert [(error.index, error.field) for error in parsed.errors] == [
        (2, "Records[2].s3.object.key")
    ]


def test_skipped_event_with_garbled_location_is_still_only_skipped() -> None:
    event = load_event("removed_delete")
    del _record(event)["s3"]["object"]["key"]

    parsed = parse_event(event)

    assert parsed.errors == []
    assert parsed.skipped == [Skipped(0, "event 'ObjectRemoved:Delete' is not ObjectCreated:*")]


def test_parse_does_not_mutate_the_event() -> None:
    event = load_event("multi_record")
    before = copy.deepcopy(event)

    parse_event(event)

    assert event == before
