"""Work-queue messages: parsing (every kind of malformed body) and the manifest-identity check."""

from __future__ import annotations

import json

import pytest

from worker.fleet.workqueue import MalformedMessage, manifest_matches, parse_message
from worker.jobs.identity import Identity


def test_a_message_is_the_same_identity_processorctl_submit_gives() -> None:
    body = json.dumps({"bucket": "in", "key": "a b+c/%20.txt", "version_id": None,
                       "etag": '"abc"', "sent_by": "reconciler"})
    identity = parse_message(body)
    assert identity == Identity("in", "a b+c/%20.txt", None, "abc")  # raw key, bare ETag
    assert identity.job_id() == Identity("in", "a b+c/%20.txt", etag="abc").job_id()


def test_optional_fields_may_be_absent_or_null() -> None:
    assert parse_message('{"bucket": "in", "key": "k"}') == Identity("in", "k")
    assert parse_message('{"bucket": "in", "key": "k", "version_id": "v1", "etag": null}') == \
        Identity("in", "k", "v1", None)
    assert parse_message('{"bucket": "in", "key": "k", "version_id": ""}') == Identity("in", "k")


@pytest.mark.parametrize(("body", "field"), [
    ("{not json", "body"),
    ("", "body"),
    ('["in", "k"]', "body"),
    ('"in/k"', "body"),
    ("null", "body"),
    ('{"key": "k"}', "bucket"),
    ('{"bucket": "in"}', "key"),
    ('{"bucket": "in", "key": 7}', "key"),
    ('{"bucket": "in", "key": ""}', "key"),
    ('{"bucket": "in", "key": "a\\u0000b"}', "key"),
    ('{"bucket": ["in"], "key": "k"}', "bucket"),
    ('{"bucket": "in", "key": "k", "version_id": 3}', "version_id"),
    ('{"bucket": "in", "key": "k", "etag": {}}', "etag"),
    ("[" * 100000, "body"),
])
def test_malformed_bodies_name_the_field_at_fault(body: str, field: str) -> None:
    with pytest.raises(MalformedMessage) as caught:
        parse_message(body)
    assert caught.value.field == field


def test_a_message_for_another_bucket_is_malformed_when_the_input_bucket_is_set() -> None:
    body = '{"bucket": "elsewhere", "key": "k"}'
    assert parse_message(body) == Identity("elsewhere", "k")
    with pytest.raises(MalformedMessage) as caught:
        parse_message(body, input_bucket="in")
    assert caught.value.field == "bucket" and "elsewhere" in str(caught.value)


def _manifest(
    version_id: str | None, etag: str | None, bucket: str = "in", key: str = "k"
) -> dict[str, object]:
    return {"job_id": "j-1", "source": {"bucket": bucket, "key": key, "version_id": version_id, "etag": etag}}


def test_a_manifest_matches_by_version_id_else_by_etag() -> None:
    assert manifest_matches(_manifest("v1", "e1"), Identity("in", "k", "v1", None))
    assert not manifest_matches(_manifest("v2", "e1"), Identity("in", "k", "v1", "e1"))
    assert manifest_matches(_manifest(None, "e1"), Identity("in", "k", None, "e1"))
    assert manifest_matches(_manifest(None, '"e1"'), Identity("in", "k", None, "e1"))
    assert not manifest_matches(_manifest(None, "e2"), Identity("in", "k", None, "e1"))


def test_a_manifest_of_another_object_or_a_foreign_file_never_matches() -> None:
    assert not manifest_matches(_manifest(None, "e1", bucket="other"), Identity("in", "k", None, "e1"))
    assert not manifest_matches(_manifest(None, "e1", key="k2"), Identity("in", "k", None, "e1"))
    assert not manifest_matches({"source": "nope"}, Identity("in", "k", None, "e1"))
    assert not manifest_matches({}, Identity("in", "k", None, "e1"))


def test_without_version_or_etag_the_object_as_it_stands_decides() -> None:
    bare = Identity("in", "k")
    assert not manifest_matches(_manifest(None, "e1"), bare)  # nothing to compare with
    assert manifest_matches(_manifest(None, "e1"), bare, current=(None, "e1"))
    assert not manifest_matches(_manifest(None, "e1"), bare, current=(None, "e2"))  # overwritten since
    assert manifest_matches(_manifest("v9", "e1"), bare, current=("v9", "e1"))
