"""The IMDSv2 client (worker/aws/imds.py) against stubs on 127.0.0.1.

Nothing here contacts 169.254.169.254: the guard's client talks to the IMDSv2
stub of tests/support/servers.py, the start-up lookup to recording stubs.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator

import pytest

from tests.support.servers import Imds, Recorder, Seen, black_hole, dead_endpoint
from worker.aws.imds import MetadataClient, instance_id
from worker.errors import MetadataError
from worker.fleet.instance import GROUP_TAG_PATH, SPOT_ACTION_PATH

INSTANCE = "i-0123456789abcdef0"
GROUP = "stack-processor"


@pytest.fixture
def imds() -> Iterator[Imds]:
    with Imds({"instance-id": INSTANCE, GROUP_TAG_PATH: GROUP}) as server:
        yield server


def test_metadata_client_puts_a_token_then_gets_with_it(imds: Imds) -> None:
    client = MetadataClient(imds.endpoint)
    assert client.get("instance-id") == INSTANCE
    assert client.get(GROUP_TAG_PATH) == GROUP
    assert client.get(SPOT_ACTION_PATH) is None  # 404: no notice
    assert [(m, p) for m, p, _ in imds.requests] == [
        ("PUT", "/latest/api/token"), ("GET", "/latest/meta-data/instance-id"),
        ("GET", f"/latest/meta-data/{GROUP_TAG_PATH}"), ("GET", f"/latest/meta-data/{SPOT_ACTION_PATH}")]
    assert {token for m, _, token in imds.requests if m == "GET"} == {"tok-1"}


def test_the_stub_is_imdsv2_only(imds: Imds) -> None:
    # So that the tests above prove the client sends the token: without one, 401.
    conn = http.client.HTTPConnection("127.0.0.1", int(imds.endpoint.rsplit(":", 1)[1]), timeout=5)
    conn.request("GET", "/latest/meta-data/instance-id")
    assert conn.getresponse().status == 401
    conn.close()


def test_token_is_renewed_before_it_expires(imds: Imds) -> None:
    now = [1000.0]
    client = MetadataClient(imds.endpoint, token_ttl_s=600, clock=lambda: now[0])
    client.get("instance-id")
    now[0] += 600 - 61  # within the last minute of the token's life: not yet renewed
    client.get("instance-id")
    assert sum(m == "PUT" for m, _, _ in imds.requests) == 1
    now[0] += 2
    client.get("instance-id")
    assert [t for m, _, t in imds.requests if m == "GET"] == ["tok-1", "tok-1", "tok-2"]


def test_a_revoked_token_is_replaced_once(imds: Imds) -> None:
    client = MetadataClient(imds.endpoint)
    client.get("instance-id")
    imds.revoke()
    assert client.get("instance-id") == INSTANCE
    assert [(m, t) for m, _, t in imds.requests] == [
        ("PUT", ""), ("GET", "tok-1"), ("GET", "tok-1"), ("PUT", ""), ("GET", "tok-2")]


def test_metadata_errors_are_metadata_error(imds: Imds) -> None:
    imds.status = 403  # IMDS turned off for the instance
    with pytest.raises(MetadataError) as refused:
        MetadataClient(imds.endpoint).get("instance-id")
    assert refused.value.status == 403
    imds.status = None
    imds.items["broken"] = ""
    client = MetadataClient(imds.endpoint)
    client.get("instance-id")
    imds.status = 500
    with pytest.raises(MetadataError, match="HTTP 500"):
        client.get("instance-id")
    with pytest.raises(MetadataError) as unreachable:
        MetadataClient(dead_endpoint(), timeout=1).get("instance-id")
    assert unreachable.value.status == 0


# -- the start-up lookup of the CloudWatch stream name ----------------------------------


def imds_reply(seen: Seen) -> tuple[int, str, bytes]:
    if seen.method == "PUT" and seen.path == "/latest/api/token":
        if seen.headers.get("x-aws-ec2-metadata-token-ttl-seconds"):
            return 200, "text/plain", b"tok-1"
        return 400, "text/plain", b""
    if seen.path == "/latest/meta-data/instance-id":
        if seen.headers.get("x-aws-ec2-metadata-token") == "tok-1":
            return 200, "text/plain", b"i-0123456789abcdef0"
        return 401, "text/plain", b""  # IMDSv2 only: no token, no answer
    return 404, "text/plain", b""


def test_instance_id_speaks_imdsv2() -> None:
    with Recorder(imds_reply) as imds:
        assert instance_id(imds.endpoint) == "i-0123456789abcdef0"
        assert [(s.method, s.path) for s in imds.seen] == [
            ("PUT", "/latest/api/token"), ("GET", "/latest/meta-data/instance-id")]


def test_instance_id_is_none_off_ec2() -> None:
    started = time.monotonic()
    assert instance_id(dead_endpoint()) is None
    with Recorder(lambda _s: (403, "text/plain", b"no")) as refusing:
        assert instance_id(refusing.endpoint) is None
    with black_hole() as silent:
        assert instance_id(silent, timeout=0.3) is None
    assert time.monotonic() - started < 5


def test_instance_id_is_the_shared_client_s_answer(imds: Imds) -> None:
    # The strict stub (TTL range checked, 401 without a live token) answers the lookup too.
    assert instance_id(imds.endpoint) == INSTANCE
    imds.items["instance-id"] = ""
    assert instance_id(imds.endpoint) is None  # an empty answer is no id
    imds.status = 500
    assert instance_id(imds.endpoint) is None
