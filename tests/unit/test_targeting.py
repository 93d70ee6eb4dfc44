"""lambda_trigger.targeting: rendezvous hashing, job identity, and InstanceDirectory with fakes.

The same discovery against the emulator over HTTP is in
tests/integration/test_lambda_fleet.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from lambda_trigger.events import JobRequest
from lambda_trigger.ssm import SendError, deliver
from lambda_trigger.targeting import (
    DiscoveryError,
    InstanceDirectory,
    TargetTag,
    identity_of,
    parse_target_tag,
    rendezvous_order,
    weight,
)
from worker.job import Identity

TAG = TargetTag("Role", "processor")
FLEET = ["i-0aaaaaaaaaaaaaaa1", "i-0bbbbbbbbbbbbbbb2", "i-0ccccccccccccccc3"]


def _client_error(code: str, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"fake {code}"}}, operation)


@dataclass
class Ec2Instance:
    instance_id: str
    tags: dict[str, str] = field(default_factory=lambda: {"Role": "processor"})
    state: str = "running"


class FakeEc2:
    """describe_instances over a list, honouring tag:/instance-state-name filters and paging."""

    def __init__(self, instances: Iterable[Ec2Instance], page_size: int = 2) -> None:
        self.instances = list(instances)
        self.page_size = page_size
        self.calls: list[dict[str, Any]] = []
        self.fail: list[str] = []  # error codes, consumed one per call

    def describe_instances(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        if self.fail:
            raise _client_error(self.fail.pop(0), "DescribeInstances")
        matches = [i for i in self.instances if all(_ec2_match(i, f) for f in kwargs["Filters"])]
        start = int(kwargs.get("NextToken", "0"))
        page = matches[start:start + self.page_size]
        reply: dict[str, Any] = {"Reservations": [
            {"Instances": [{"InstanceId": i.instance_id, "State": {"Name": i.state}}]}
            for i in page]}
        if start + self.page_size < len(matches):
            reply["NextToken"] = str(start + self.page_size)
        return reply

    @property
    def discoveries(self) -> int:
        return sum(1 for call in self.calls if "NextToken" not in call)


def _ec2_match(instance: Ec2Instance, flt: Mapping[str, Any]) -> bool:
    name, values = flt["Name"], flt["Values"]
    if name == "instance-state-name":
        return instance.state in values
    assert name.startswith("tag:"), name
    return instance.tags.get(name.removeprefix("tag:")) in values


class FakeInstanceInformation:
    """describe_instance_information with an InstanceIds filter, paging by MaxResults.

    ``ping`` maps instance id -> PingStatus; ids not in it are unknown to SSM.
    ``error`` makes every call fail (an emulator without the operation).
    """

    def __init__(self, ping: Mapping[str, str], error: Exception | None = None) -> None:
        self.ping = dict(ping)
        self.error = error
        self.page_size = 50
        self.calls: list[dict[str, Any]] = []

    def describe_instance_information(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        if self.error is not None:
            raise self.error
        (flt,) = kwargs["Filters"]
        assert flt["Key"] == "InstanceIds" and len(flt["Values"]) <= 50
        known = [i for i in flt["Values"] if i in self.ping]
        size = min(kwargs.get("MaxResults", 50), self.page_size)
        start = int(kwargs.get("NextToken", "0"))
        reply: dict[str, Any] = {"InstanceInformationList": [
            {"InstanceId": i, "PingStatus": self.ping[i]} for i in known[start:start + size]]}
        if start + size < len(known):
            reply["NextToken"] = str(start + size)
        return reply


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_directory(
    instances: Iterable[Ec2Instance] | None = None,
    ping: Mapping[str, str] | None = None,
    *,
    ttl_s: float = 60.0,
    clock: Clock | None = None,
    online_error: Exception | None = None,
) -> tuple[InstanceDirectory, FakeEc2, FakeInstanceInformation]:
    """A directory over FLEET (all running, tagged, online) unless told otherwise."""
    ec2 = FakeEc2(instances if instances is not None else [Ec2Instance(i) for i in FLEET])
    if ping is None:
        ping = {i.instance_id: "Online" for i in ec2.instances}
    info = FakeInstanceInformation(ping, online_error)
    directory = InstanceDirectory(ec2, info, TAG, ttl_s=ttl_s, clock=clock or Clock())
    return directory, ec2, info


def _trigger_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "processor.trigger"]


@pytest.fixture(autouse=True)
def _capture_trigger_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="processor.trigger")


def _identities(count: int) -> list[str]:
    return [identity_of(JobRequest("in", f"data/{n:05d}.csv", None, f"{n:032x}",
                                   "ObjectCreated:Put", None)) for n in range(count)]


def _owners(identities: list[str], instances: list[str]) -> dict[str, str]:
    return {identity: rendezvous_order(identity, instances)[0] for identity in identities}


# --- identity ------------------------------------------------------------------


def test_identity_prefers_the_version_id_then_the_etag() -> None:
    versioned = JobRequest("b", "k", "v1", "abc", "ObjectCreated:Put", None)
    unversioned = JobRequest("b", "k", None, "abc", "ObjectCreated:Put", None)
    bare = JobRequest("b", "k", None, None, "ObjectCreated:Put", None)

    assert json.loads(identity_of(versioned)) == ["b", "k", "v:v1"]
    assert json.loads(identity_of(unversioned)) == ["b", "k", "e:abc"]
    assert json.loads(identity_of(bare)) == ["b", "k", ""]


@pytest.mark.parametrize(("version_id", "etag"), [("v1", "abc"), (None, "abc"), (None, None)])
def test_identity_is_the_daemons_job_identity(version_id: str | None, etag: str | None) -> None:
    # Same framing as worker.job.Identity.job_id: "same job" means the same
    # thing to the Lambda's hashing and to the ledger's dedupe.
    key = 'we"ird/\u00e9 key\n.csv'
    request = JobRequest("in", key, version_id, etag, "ObjectCreated:Put", None)
    digest = hashlib.sha256(identity_of(request).encode("ascii")).hexdigest()

    assert f"j-{digest[:20]}" == Identity("in", key, version_id, etag).job_id()


def test_identity_framing_keeps_fields_apart() -> None:
    a = JobRequest("ab", "c", None, "x", "ObjectCreated:Put", None)
    b = JobRequest("a", "bc", None, "x", "ObjectCreated:Put", None)

    assert identity_of(a) != identity_of(b)


# --- rendezvous ---------------------------------------------------------------------


def test_weight_is_the_first_eight_bytes_of_sha256() -> None:
    expected = hashlib.sha256(b"job\0i-1").digest()[:8]

    assert weight("job", "i-1") == int.from_bytes(expected, "big")


def test_rendezvous_is_deterministic_and_ignores_input_order_and_duplicates() -> None:
    identity = _identities(1)[0]
    order = rendezvous_order(identity, FLEET)

    assert sorted(order) == sorted(FLEET)
    assert rendezvous_order(identity, list(reversed(FLEET))) == order
    assert rendezvous_order(identity, FLEET + FLEET[:1]) == order
    assert order == sorted(FLEET, key=lambda i: weight(identity, i), reverse=True)


def test_rendezvous_of_nothing_is_empty() -> None:
    assert rendezvous_order("x", []) == []


def test_spread_is_within_ten_percent_of_even() -> None:
    counts = Counter(_owners(_identities(3000), FLEET).values())

    assert set(counts) == set(FLEET)
    for instance in FLEET:
        assert 900 <= counts[instance] <= 1100, counts


def test_removing_an_instance_moves_only_its_share() -> None:
    identities = _identities(3000)
    before = _owners(identities, FLEET)
    gone = FLEET[1]
    after = _owners(identities, [i for i in FLEET if i != gone])

    moved = [identity for identity in identities if before[identity] != after[identity]]
    assert moved and all(before[identity] == gone for identity in moved)
    assert len(moved) == sum(1 for owner in before.values() if owner == gone)
    # ... and the orphans spread over the survivors, each taking about half.
    survivors = Counter(after[identity] for identity in moved)
    assert set(survivors) == set(FLEET) - {gone}
    assert all(0.4 * len(moved) <= n <= 0.6 * len(moved) for n in survivors.values()), survivors


def test_adding_an_instance_takes_about_one_nth() -> None:
    identities = _identities(3000)
    before = _owners(identities, FLEET)
    new = "i-0ddddddddddddddd4"
    after = _owners(identities, [*FLEET, new])

    moved = [identity for identity in identities if before[identity] != after[identity]]
    assert all(after[identity] == new for identity in moved)
    assert 0.2 <= len(moved) / len(identities) <= 0.3
    # ... taken from every old instance, not from one.
    assert set(Counter(before[identity] for identity in moved)) == set(FLEET)


def test_second_choice_is_the_first_choice_without_the_first() -> None:
    # What makes failover consistent: when the first choice leaves, its jobs
    # go exactly where the failover order already sent them.
    for identity in _identities(200):
        first, second, third = rendezvous_order(identity, FLEET)
        assert rendezvous_order(identity, [second, third])[0] == second
        assert rendezvous_order(identity, [i for i in FLEET if i != first]) == [second, third]


# --- failover order (ssm.deliver over a rendezvous order) ------------------------------


class DeadInstancesSsm:
    """SendCommand that answers ``code`` for the instances in ``dead``."""

    def __init__(self, dead: Iterable[str], code: str = "InvalidInstanceId") -> None:
        self.dead = set(dead)
        self.code = code
        self.targets: list[str] = []

    def send_command(self, **kwargs: Any) -> dict[str, Any]:
        (instance_id,) = kwargs["InstanceIds"]
        self.targets.append(instance_id)
        if instance_id in self.dead:
            raise _client_error(self.code, "SendCommand")
        return {"Command": {"CommandId": f"cmd-{len(self.targets)}"}}


REQUEST = JobRequest("in", "data/report.csv", None, "0f343b09", "ObjectCreated:Put", None)


def test_failover_walks_the_rendezvous_order() -> None:
    order = rendezvous_order(identity_of(REQUEST), FLEET)
    ssm = DeadInstancesSsm(dead=order[:2])
    failed: list[tuple[str, str]] = []

    delivery = deliver(ssm, document_name="d", instances=order, request=REQUEST,
                       on_failover=lambda instance, error: failed.append((instance, error.code)))

    assert ssm.targets == order
    assert (delivery.instance_id, delivery.failed_over_from) == (order[2], tuple(order[:2]))
    assert failed == [(order[0], "InvalidInstanceId"), (order[1], "InvalidInstanceId")]


def test_unsupported_platform_fails_over_too() -> None:
    order = rendezvous_order(identity_of(REQUEST), FLEET)
    ssm = DeadInstancesSsm(dead=order[:1], code="UnsupportedPlatformType")

    delivery = deliver(ssm, document_name="d", instances=order, request=REQUEST)

    assert (delivery.instance_id, delivery.failed_over_from) == (order[1], (order[0],))


@pytest.mark.parametrize("code", ["InvalidDocument", "InvalidParameters", "AccessDeniedException",
                                  "ThrottlingException"])
def test_errors_that_every_instance_would_give_do_not_fail_over(code: str) -> None:
    order = rendezvous_order(identity_of(REQUEST), FLEET)
    ssm = DeadInstancesSsm(dead=FLEET, code=code)
    failed: list[str] = []

    with pytest.raises(SendError) as info:
        deliver(ssm, document_name="d", instances=order, request=REQUEST,
                on_failover=lambda instance, error: failed.append(instance))

    assert ssm.targets == order[:1] and failed == []
    assert (info.value.code, info.value.instance_id, info.value.failed_over_from) == (
        code, order[0], ())


def test_every_instance_failing_raises_with_the_instances_tried() -> None:
    order = rendezvous_order(identity_of(REQUEST), FLEET)
    ssm = DeadInstancesSsm(dead=FLEET)
    failed: list[str] = []

    with pytest.raises(SendError) as info:
        deliver(ssm, document_name="d", instances=order, request=REQUEST,
                on_failover=lambda instance, error: failed.append(instance))

    assert failed == ssm.targets == order
    assert (info.value.instance_id, info.value.failed_over_from) == (order[2], tuple(order[:2]))
    assert "data/report.csv" in str(info.value)


def test_deliver_needs_an_instance() -> None:
    with pytest.raises(ValueError, match="at least one"):
        deliver(DeadInstancesSsm(()), document_name="d", instances=[], request=REQUEST)


# --- InstanceDirectory: discovery -----------------------------------------------------


def test_discovery_keeps_running_tagged_online_instances() -> None:
    instances = [Ec2Instance(i) for i in FLEET] + [
        Ec2Instance("i-0000000000000000a", tags={"Role": "web"}),
        Ec2Instance("i-0000000000000000b", tags={}),
        Ec2Instance("i-0000000000000000c", state="stopped"),
        Ec2Instance("i-0000000000000000d"),  # running and tagged, agent lost
        Ec2Instance("i-0000000000000000e"),  # running and tagged, never registered
    ]
    ping = {**{i: "Online" for i in FLEET}, "i-0000000000000000d": "ConnectionLost",
            "i-0000000000000000c": "Online"}
    directory, ec2, info = make_directory(instances, ping)

    assert directory.instances() == sorted(FLEET)
    assert ec2.calls[0]["Filters"] == [
        {"Name": "tag:Role", "Values": ["processor"]},
        {"Name": "instance-state-name", "Values": ["running"]}]
    assert len(ec2.calls) == 3  # 5 running tagged instances, pages of 2
    (call,) = info.calls
    assert call["Filters"] == [{"Key": "InstanceIds", "Values": sorted(
        [*FLEET, "i-0000000000000000d", "i-0000000000000000e"])}]


def test_online_check_goes_in_chunks_of_fifty_and_follows_pages() -> None:
    many = [f"i-{n:017x}" for n in range(120)]
    directory, ec2, info = make_directory([Ec2Instance(i) for i in many])
    ec2.page_size = 1000

    assert directory.instances() == many
    chunks = [call["Filters"][0]["Values"] for call in info.calls if "NextToken" not in call]
    assert [len(chunk) for chunk in chunks] == [50, 50, 20]
    assert all(call["MaxResults"] == 50 for call in info.calls)


def test_online_check_pages_are_followed() -> None:
    directory, _, info = make_directory()
    info.page_size = 2  # SSM may return fewer than MaxResults, with a NextToken

    assert directory.instances() == sorted(FLEET)
    assert [call.get("NextToken") for call in info.calls] == [None, "2"]


@pytest.mark.parametrize("error", [
    _client_error("500", "DescribeInstanceInformation"),  # moto: not implemented
    _client_error("AccessDeniedException", "DescribeInstanceInformation"),
    EndpointConnectionError(endpoint_url="http://127.0.0.1:9"),
])
def test_online_check_failure_falls_back_to_the_running_list_and_logs_once(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    directory, _, info = make_directory(clock=clock, online_error=error)

    assert directory.instances() == sorted(FLEET)
    clock.now += 60
    assert directory.instances() == sorted(FLEET)
    assert len(info.calls) == 2  # still asked on every discovery ...

    warnings = [line for line in _trigger_lines(caplog) if line["event"] == "online_check_unavailable"]
    assert len(warnings) == 1  # ... but said once
    assert "DescribeInstanceInformation" in warnings[0]["reason"]
    assert {r.levelno for r in caplog.records if "online_check_unavailable" in r.getMessage()} == {
        logging.WARNING}

    info.error = None
    clock.now += 60
    info.ping[FLEET[0]] = "ConnectionLost"
    assert directory.instances() == sorted(FLEET[1:])
    assert [line["event"] for line in _trigger_lines(caplog)].count("online_check_restored") == 1


def test_discovery_is_logged_with_the_instances(caplog: pytest.LogCaptureFixture) -> None:
    directory, _, _ = make_directory()

    directory.instances()

    (line,) = [line for line in _trigger_lines(caplog) if line["event"] == "instances_discovered"]
    assert line["reason"] == f"tag Role=processor: 3 running, 3 online: {', '.join(sorted(FLEET))}"


def test_ec2_failure_without_a_previous_list_is_a_discovery_error() -> None:
    directory, ec2, _ = make_directory()
    ec2.fail = ["UnauthorizedOperation"]

    with pytest.raises(DiscoveryError) as info:
        directory.instances()

    assert (info.value.code, info.value.tag) == ("UnauthorizedOperation", TAG)
    assert "Role=processor" in str(info.value)


def test_ec2_failure_keeps_the_previous_list(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    directory, ec2, _ = make_directory(clock=clock)
    directory.instances()
    clock.now += 61
    ec2.fail = ["RequestLimitExceeded"]

    assert directory.instances() == sorted(FLEET)
    assert [line["event"] for line in _trigger_lines(caplog)][-1] == "discovery_failed"
    # Not asked again on the next record: the stale list is good for another ttl.
    assert directory.instances() == sorted(FLEET)
    assert ec2.discoveries == 2


# --- InstanceDirectory: cache ------------------------------------------------------------


def test_cache_is_reused_until_it_expires() -> None:
    clock = Clock()
    directory, ec2, info = make_directory(clock=clock, ttl_s=60)

    directory.instances()
    clock.now += 59.5
    directory.instances()
    assert ec2.discoveries == 1

    ec2.instances.append(Ec2Instance("i-0ddddddddddddddd4"))
    info.ping["i-0ddddddddddddddd4"] = "Online"
    clock.now += 0.5
    assert directory.instances() == sorted([*FLEET, "i-0ddddddddddddddd4"])
    assert ec2.discoveries == 2


def test_zero_ttl_discovers_every_time() -> None:
    directory, ec2, _ = make_directory(ttl_s=0)

    directory.instances()
    directory.instances()

    assert ec2.discoveries == 2


def test_instance_that_fails_delivery_is_dropped_until_the_next_discovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    directory, ec2, _ = make_directory(clock=clock)
    order = rendezvous_order(identity_of(REQUEST), directory.instances())
    ssm = DeadInstancesSsm(dead=order[:1])

    delivery = deliver(ssm, document_name="d", instances=order, request=REQUEST,
                       on_failover=lambda instance, error: directory.drop(
                           instance, f"{error.code}: {error.message}"))

    assert delivery.instance_id == order[1]
    assert directory.instances() == sorted(order[1:])
    # The next delivery of the same object goes straight to the survivor.
    assert rendezvous_order(identity_of(REQUEST), directory.instances())[0] == order[1]
    (dropped,) = [line for line in _trigger_lines(caplog) if line["event"] == "instance_dropped"]
    assert (dropped["instance_id"], dropped["error"]) == (
        order[0], "InvalidInstanceId: fake InvalidInstanceId")

    clock.now += 60
    assert directory.instances() == sorted(FLEET)  # still running and online: back
    assert ec2.discoveries == 2


def test_dropping_an_unknown_instance_is_harmless() -> None:
    directory, _, _ = make_directory()
    directory.drop("i-0eeeeeeeeeeeeeee5", "InvalidInstanceId: gone")  # before any discovery
    directory.instances()

    directory.drop("i-0eeeeeeeeeeeeeee5", "InvalidInstanceId: gone")

    assert directory.instances() == sorted(FLEET)


def test_callers_cannot_edit_the_cache() -> None:
    directory, _, _ = make_directory()

    directory.instances().clear()

    assert directory.instances() == sorted(FLEET)


# --- TARGET_TAG syntax ------------------------------------------------------------


@pytest.mark.parametrize(("text", "tag"), [
    ("Role=processor", TargetTag("Role", "processor")),
    (" Role = processor ", TargetTag("Role", "processor")),
    ("aws:autoscaling:groupName=processor-asg", TargetTag("aws:autoscaling:groupName",
                                                          "processor-asg")),
    ("Query=a=b", TargetTag("Query", "a=b")),
])
def test_target_tag_parses(text: str, tag: TargetTag) -> None:
    assert parse_target_tag(text) == tag
    assert str(tag) == f"{tag.key}={tag.value}"


@pytest.mark.parametrize(("text", "problem"), [
    ("Role", "no '='"), ("=processor", "key is empty"), ("Role=", "value is empty")])
def test_target_tag_errors(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_target_tag(text)
