"""The instance guard against an IMDSv2 stub on 127.0.0.1 and a fake Auto Scaling adapter.

Nothing here contacts 169.254.169.254. The Auto Scaling adapter itself is
tested against the moto server in tests/integration/test_instance_guard.py;
here a fake counts the calls, fails on demand, or blocks.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog

from tests.support.servers import Imds
from tests.support.waiting import wait_until
from worker.aws.imds import MetadataClient
from worker.config.settings import settings_from_mapping
from worker.errors import ScalingError
from worker.fleet.instance import (
    GROUP_TAG_PATH,
    LIFECYCLE_PATH,
    SPOT_ACTION_PATH,
    Backoff,
    Guard,
    guard_from_settings,
    lifecycle_reason,
    spot_reason,
)

INSTANCE = "i-0123456789abcdef0"
GROUP = "stack-processor"
ITEMS = {"instance-id": INSTANCE, "placement/region": "eu-west-1", GROUP_TAG_PATH: GROUP}
NOTICE = json.dumps({"action": "terminate", "time": "2026-12-02T10:00:00Z"})
POLL_S = 0.05
#: Liveness bound of every wait: the guard polls every POLL_S, so this is ~200 polls.
PATIENCE_S = 10.0


def eventually(what: str, predicate: Callable[[], Any], timeout: float = PATIENCE_S) -> Any:
    # Each awaited change follows a poll within a second: nothing at all for this long is a hang.
    return wait_until(predicate, stall_s=max(timeout, 60.0), describe=f"no {what}", interval=0.01)


class FakeProtection:
    """Auto Scaling as the guard sees it: records calls, fails the first ``fail`` of
    them, and blocks each call while ``gate`` is clear."""

    def __init__(self, fail: int = 0, error: Exception | None = None) -> None:
        self.calls: list[bool] = []
        self.regions: list[str] = []
        self.fail = fail
        self.error = error or ScalingError("SetInstanceProtection: Throttling: Rate exceeded",
                                           retryable=True, code="Throttling")
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.closed = False

    def connect(self, region: str) -> FakeProtection:
        self.regions.append(region)
        return self

    def set_protection(self, instance_id: str, group: str, protected: bool) -> None:
        assert (instance_id, group) == (INSTANCE, GROUP)
        self.entered.set()
        self.gate.wait(PATIENCE_S)
        self.calls.append(protected)
        if self.fail:
            self.fail -= 1
            raise self.error

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def imds() -> Iterator[Imds]:
    with Imds(ITEMS) as server:
        yield server


def make_guard(imds: Imds, fake: FakeProtection | None = None, **options: Any) -> Guard:
    options.setdefault("poll_s", POLL_S)
    options.setdefault("backoff", Backoff(0.02, 0.1, random.Random(1)))
    guard = Guard(MetadataClient(imds.endpoint), protection=fake.connect if fake else None,
                  default_region="us-east-1", **options)
    guard.start()
    return guard


# -- notices (pure) -------------------------------------------------------------------


def test_spot_reason() -> None:
    assert spot_reason(NOTICE) == "spot interruption notice: terminate at 2026-12-02T10:00:00Z"
    assert spot_reason('{"action": "stop"}') == "spot interruption notice: stop at an unstated time"
    # The item only exists once the instance is marked: an odd body still drains.
    assert spot_reason("<html>").startswith("spot interruption notice (unreadable: '<html>'")


@pytest.mark.parametrize(("state", "leaving"), [
    ("InService", False), ("Standby", False), ("Detached", False), ("Warmed:Running", False),
    ("Terminated", True), ("Warmed:Terminated", True), ("Warmed:Stopped", True),
    ("Warmed:Hibernated", True),
])
def test_lifecycle_reason(state: str, leaving: bool) -> None:
    reason = lifecycle_reason(state)
    assert (reason == f"auto scaling target lifecycle state: {state}") if leaving else reason is None


def test_backoff_doubles_up_to_its_cap_with_jitter() -> None:
    backoff = Backoff(1.0, 8.0, random.Random(7))
    for failures, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (80, 8.0)]:
        delays = [backoff.delay(failures) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1


# -- the watch ------------------------------------------------------------------------


def test_spot_notice_is_reported_after_it_appears(imds: Imds) -> None:
    guard = make_guard(imds, watch_spot=True)
    try:
        eventually("three polls", lambda: imds.gets(SPOT_ACTION_PATH) >= 3)
        assert guard.interruption() is None
        imds.items[SPOT_ACTION_PATH] = NOTICE
        reason = eventually("interruption", guard.interruption)
        assert reason == "spot interruption notice: terminate at 2026-12-02T10:00:00Z"
        # The first notice is kept, and the watch stops asking.
        polls = imds.gets(SPOT_ACTION_PATH)
        imds.items[SPOT_ACTION_PATH] = json.dumps({"action": "stop", "time": "later"})
        time.sleep(POLL_S * 5)
        assert guard.interruption() == reason
        assert imds.gets(SPOT_ACTION_PATH) == polls
    finally:
        guard.close()
    assert not guard._thread.is_alive()


def test_lifecycle_state_terminated_is_reported(imds: Imds) -> None:
    imds.items[LIFECYCLE_PATH] = "InService"
    guard = make_guard(imds, watch_lifecycle=True)
    try:
        eventually("three polls", lambda: imds.gets(LIFECYCLE_PATH) >= 3)
        assert guard.interruption() is None
        assert imds.gets(SPOT_ACTION_PATH) == 0  # not asked for
        imds.items[LIFECYCLE_PATH] = "Terminated"
        assert eventually("interruption", guard.interruption) == (
            "auto scaling target lifecycle state: Terminated")
    finally:
        guard.close()


def test_imds_outage_is_logged_once_and_the_watch_goes_on(imds: Imds) -> None:
    imds.status = 503
    with structlog.testing.capture_logs() as logs:
        guard = make_guard(imds, watch_spot=True)
        try:
            eventually("polls during the outage", lambda: imds.gets(SPOT_ACTION_PATH) + sum(
                m == "PUT" for m, _, _ in imds.requests) >= 5)
            imds.status = None
            imds.items[SPOT_ACTION_PATH] = NOTICE
            eventually("interruption", guard.interruption)
        finally:
            guard.close()
    events = [e["event"] for e in logs if e["event"].startswith("instance_")]
    assert events[:4] == ["instance_guard_started", "instance_metadata_unavailable",
                          "instance_metadata_available", "instance_interruption_notice"]


# -- scale-in protection --------------------------------------------------------------


def test_protection_follows_the_busy_wish_and_calls_only_on_change(imds: Imds) -> None:
    fake = FakeProtection()
    guard = make_guard(imds, fake, watch_spot=True)
    try:
        # First, the unknown state is cleared (an instance that crashed while protected).
        eventually("initial clear", lambda: fake.calls == [False])
        assert fake.regions == ["eu-west-1"]  # the instance's own region, from IMDS
        guard.set_busy(True)
        eventually("protection", lambda: fake.calls == [False, True])
        for _ in range(20):
            guard.set_busy(True)
        polls = imds.gets(SPOT_ACTION_PATH)
        eventually("five more polls", lambda: imds.gets(SPOT_ACTION_PATH) >= polls + 5)
        assert fake.calls == [False, True]
        guard.set_busy(False)
        eventually("unprotection", lambda: fake.calls == [False, True, False])
        guard.set_busy(True)
        eventually("protection again", lambda: fake.calls[-1:] == [True])
    finally:
        guard.close()
    assert fake.calls == [False, True, False, True, False]  # close() clears it
    assert fake.closed


def test_only_the_latest_wish_is_applied(imds: Imds) -> None:
    fake = FakeProtection()
    guard = make_guard(imds, fake)
    try:
        eventually("initial clear", lambda: fake.calls == [False])
        fake.gate.clear()  # the next call hangs in "Auto Scaling"
        fake.entered.clear()
        guard.set_busy(True)
        eventually("a call in flight", fake.entered.is_set)
        # The daemon's calls return while the watcher is stuck in the call.
        guard.set_busy(False)
        guard.set_busy(True)
        guard.set_busy(False)
        assert guard.interruption() is None
        fake.gate.set()
        eventually("the latest wish", lambda: fake.calls == [False, True, False])
    finally:
        guard.close()


def test_configured_group_skips_the_tag(imds: Imds) -> None:
    del imds.items[GROUP_TAG_PATH]
    fake = FakeProtection()
    guard = make_guard(imds, fake, group=GROUP)
    try:
        eventually("initial clear", lambda: fake.calls == [False])
    finally:
        guard.close()
    assert imds.gets(GROUP_TAG_PATH) == 0


def test_missing_group_tag_disables_protection_with_one_log_line(imds: Imds) -> None:
    del imds.items[GROUP_TAG_PATH]
    fake = FakeProtection()
    with structlog.testing.capture_logs() as logs:
        guard = make_guard(imds, fake, watch_spot=True)
        try:
            eventually("five polls", lambda: imds.gets(SPOT_ACTION_PATH) >= 5)
            guard.set_busy(True)
            polls = imds.gets(SPOT_ACTION_PATH)
            eventually("five more polls", lambda: imds.gets(SPOT_ACTION_PATH) >= polls + 5)
            imds.items[SPOT_ACTION_PATH] = NOTICE
            eventually("interruption", guard.interruption)  # the watch goes on without it
        finally:
            guard.close()
    disabled = [e for e in logs if e["event"] == "scale_in_protection_disabled"]
    assert len(disabled) == 1
    assert "InstanceMetadataTags" in disabled[0]["reason"]
    assert fake.calls == [] and fake.regions == []
    assert imds.gets(GROUP_TAG_PATH) == 1


def test_failures_are_logged_and_retried_never_raised(imds: Imds) -> None:
    fake = FakeProtection(fail=4)
    with structlog.testing.capture_logs() as logs:
        guard = make_guard(imds, fake)
        try:
            guard.set_busy(True)
            eventually("protection after the failures", lambda: fake.calls[-1:] == [True] and not fake.fail
                       and guard._applied is True)
        finally:
            guard.close()
    failed = [e for e in logs if e["event"] == "scale_in_protection_failed"]
    assert [e["attempt"] for e in failed] == [1, 2, 3, 4]
    assert {e["code"] for e in failed} == {"Throttling"}
    assert all(0.0 < e["retry_in_s"] <= 0.1 for e in failed)
    # Four failures, the success, and close()'s clear.
    assert len(fake.calls) == 6 and fake.calls[-2:] == [True, False]


def test_an_unexpected_adapter_error_does_not_end_the_watch(imds: Imds) -> None:
    fake = FakeProtection(fail=1, error=RuntimeError("a bug"))
    guard = make_guard(imds, fake, watch_spot=True)
    try:
        guard.set_busy(True)
        eventually("protection after the error", lambda: fake.calls[-1:] == [True] and not fake.fail)
        imds.items[SPOT_ACTION_PATH] = NOTICE
        eventually("interruption", guard.interruption)
    finally:
        guard.close()


def test_close_is_bounded_and_survives_a_failing_clear(imds: Imds) -> None:
    fake = FakeProtection()
    guard = make_guard(imds, fake, close_timeout_s=0.5)
    eventually("initial clear", lambda: fake.calls == [False])
    guard.set_busy(True)
    eventually("protection", lambda: fake.calls == [False, True])
    fake.fail = 1
    guard.close()  # the clear fails: logged, not raised
    assert fake.calls == [False, True, False]
    guard.close()  # twice is harmless

    stuck = FakeProtection()
    guard = make_guard(imds, stuck, close_timeout_s=0.5)
    eventually("initial clear", lambda: stuck.calls == [False])
    guard.set_busy(True)
    eventually("protection", lambda: stuck.calls == [False, True])
    stuck.gate.clear()  # the final clear hangs: close() returns at its bound anyway
    with structlog.testing.capture_logs() as logs:
        guard.close()
    assert [e["event"] for e in logs] == ["instance_guard_close_timeout"]
    stuck.gate.set()
    guard._thread.join(PATIENCE_S)
    assert not guard._thread.is_alive()


# -- the factory ----------------------------------------------------------------------


def test_guard_from_settings(imds: Imds) -> None:
    base: dict[str, Any] = {"s3": {"output_bucket": "o", "region": "ap-south-1"}}
    assert guard_from_settings(settings_from_mapping(base, {})) is None
    fake = FakeProtection()
    del imds.items["placement/region"]  # falls back on [s3] region
    settings = settings_from_mapping(
        {**base, "instance": {"scale_in_protection": True, "imds_url": imds.endpoint, "poll_s": 1}}, {})
    guard = guard_from_settings(settings, protection=fake.connect)
    assert guard is not None
    try:
        eventually("initial clear", lambda: fake.calls == [False])
        assert fake.regions == ["ap-south-1"]
        assert imds.gets(SPOT_ACTION_PATH) == imds.gets(LIFECYCLE_PATH) == 0
    finally:
        guard.close()

    watch_only = settings_from_mapping({**base, "instance": {
        "watch_spot_interruption": True, "imds_url": imds.endpoint, "poll_s": 1}}, {})
    imds.items[SPOT_ACTION_PATH] = NOTICE
    guard = guard_from_settings(watch_only)
    assert guard is not None
    try:
        assert eventually("interruption", guard.interruption).startswith("spot interruption notice")
        assert guard._protection is None
    finally:
        guard.close()
