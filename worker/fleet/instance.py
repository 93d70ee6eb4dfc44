"""The instance guard: Spot interruption and lifecycle watch, and scale-in protection.

The daemon calls three methods (``worker.daemon.lifecycle.InstanceGuard``):
``set_busy(busy)`` whenever "holds at least one job" changes, ``interruption()``
on every turn of its loop, and ``close()`` at exit. None of them blocks: one
background thread does all the I/O.

- It polls the EC2 instance metadata service (IMDSv2, ``worker.aws.imds``) every
  ``poll_s`` for the Spot two-minute notice (``spot/instance-action``) and, if
  asked, the Auto Scaling target lifecycle state
  (``autoscaling/target-lifecycle-state``), and remembers the first notice as a reason the daemon reads.
- It applies the daemon's busy wish as scale-in protection
  (``SetInstanceProtection``), only when the wish differs from what it last
  applied, retrying failures with backoff. A busy instance is then never the
  one Auto Scaling picks on scale-in. Spot interruptions, health replacements
  and instance refreshes ignore the protection: those the watch covers.

Protection starts "unknown": the first call clears it, so an instance that
crashed while protected, or a group that protects new instances, does not stay
protected while idle. There is a window between a job starting and the call
landing in which a scale-in may still pick the instance; the group's lifecycle
drain (and the message lease) covers it.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from typing import Protocol

import structlog

from processor_shared.aws_edge import backoff_delay
from worker.aws.imds import INSTANCE_ID_PATH, MetadataClient
from worker.config.settings import Settings
from worker.errors import MetadataError

_log = structlog.get_logger("processor.instance")

#: close() waits this long for the watcher to clear protection and stop; one
#: Auto Scaling call (2 attempts of 2 s connect + 5 s read) fits in it.
CLOSE_TIMEOUT_S = 15.0

#: IMDS items under /latest/meta-data/ (and INSTANCE_ID_PATH from worker.aws.imds).
REGION_PATH = "placement/region"
GROUP_TAG_PATH = "tags/instance/aws:autoscaling:groupName"
SPOT_ACTION_PATH = "spot/instance-action"
LIFECYCLE_PATH = "autoscaling/target-lifecycle-state"

#: Target lifecycle states that take the instance away: terminated, or stopped
#: (or hibernated) back into a warm pool. InService, Standby and Detached leave it running.
LEAVING_STATES = frozenset({"Terminated", "Warmed:Terminated", "Warmed:Stopped", "Warmed:Hibernated"})


class Metadata(Protocol):
    """What the guard needs of IMDS (worker.aws.imds.MetadataClient)."""

    def get(self, path: str) -> str | None:
        """The item under /latest/meta-data/, None when IMDS says 404; MetadataError else."""


class ProtectionApi(Protocol):
    """What the guard needs of Auto Scaling (worker.fleet.autoscaling.AutoScaling)."""

    def set_protection(self, instance_id: str, group: str, protected: bool) -> None: ...

    def close(self) -> None: ...


def spot_reason(body: str) -> str:
    """The reason for a spot/instance-action answer. The item exists only once the
    instance is marked for interruption, so even an unreadable one is a notice."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("action"), str):
        return f"spot interruption notice: {doc['action']} at {doc.get('time') or 'an unstated time'}"
    return f"spot interruption notice (unreadable: {body[:200]!r})"


def lifecycle_reason(state: str) -> str | None:
    """The reason for a target lifecycle state that takes the instance away, else None."""
    if state in LEAVING_STATES:
        return f"auto scaling target lifecycle state: {state}"
    return None


class Backoff:
    """Delays between failed calls (``backoff_delay``): doubling from ``base_s`` up to ``max_s``,
    half of each drawn at random so a fleet whose endpoint fails at once does not retry in step."""

    def __init__(self, base_s: float = 1.0, max_s: float = 60.0, rng: random.Random | None = None) -> None:
        self.base_s = base_s
        self.max_s = max_s
        self._rng = rng or random.Random()

    def delay(self, failures: int) -> float:
        return backoff_delay(failures, self.base_s, self.max_s, self._rng.random)


class _Target:
    """Where protection is applied, once resolved from config and IMDS."""

    def __init__(self, instance_id: str, group: str, api: ProtectionApi) -> None:
        self.instance_id = instance_id
        self.group = group
        self.api = api


class Guard:
    """The InstanceGuard the daemon holds: a watcher thread behind three non-blocking calls.

    ``protection`` makes the Auto Scaling adapter for a region (None: protection
    off); ``group`` empty means the IMDS tag; the region is the instance's own
    (IMDS placement/region), else ``default_region``.
    """

    def __init__(
        self, metadata: Metadata, *, watch_spot: bool = False, watch_lifecycle: bool = False,
        protection: Callable[[str], ProtectionApi] | None = None, group: str = "",
        default_region: str = "", poll_s: float = 5.0, backoff: Backoff | None = None,
        close_timeout_s: float = CLOSE_TIMEOUT_S, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metadata = metadata
        self._watch_spot = watch_spot
        self._watch_lifecycle = watch_lifecycle
        self._protection = protection
        self._group = group
        self._default_region = default_region
        self._poll_s = poll_s
        self._backoff = backoff or Backoff()
        self._close_timeout_s = close_timeout_s
        self._clock = clock
        # Shared with the daemon's thread: plain attribute writes and reads
        # (atomic in CPython); the Event wakes the watcher for a new wish.
        self._busy = False
        self._reason: str | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        # The watcher's own state.
        self._target: _Target | None = None
        self._applied: bool | None = None  # unknown until the first call succeeds
        self._failures = 0
        self._next_call = 0.0
        self._next_resolve = 0.0
        self._imds_down = False
        self._thread = threading.Thread(target=self._run, name="instance-guard", daemon=True)

    # -- the InstanceGuard protocol (the daemon's thread) -------------------------------

    def set_busy(self, busy: bool) -> None:
        if busy != self._busy:
            self._busy = busy
            self._wake.set()

    def interruption(self) -> str | None:
        return self._reason

    def close(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self._close_timeout_s)
            if self._thread.is_alive():
                _log.warning("instance_guard_close_timeout", timeout_s=self._close_timeout_s)

    # -- the watcher thread ---------------------------------------------------------------

    def start(self) -> None:
        _log.info("instance_guard_started", watch_spot=self._watch_spot,
                  watch_lifecycle=self._watch_lifecycle, scale_in_protection=self._protection is not None,
                  poll_s=self._poll_s)
        self._thread.start()

    def _run(self) -> None:
        next_poll = 0.0
        while not self._stopping.is_set():
            # Cleared before the wish is read: a set_busy() after this point wakes the next wait.
            self._wake.clear()
            try:
                if (self._watch_spot or self._watch_lifecycle) and self._reason is None \
                        and self._clock() >= next_poll:
                    next_poll = self._clock() + self._poll_s
                    self._poll_notices()
                if self._protection is not None:
                    self._step_protection()
            except Exception:  # noqa: BLE001 - a bug here must not end the watch; log it, go on
                _log.exception("instance_guard_error")
                self._stopping.wait(self._poll_s)  # and must not spin if it recurs
                continue
            self._wake.wait(self._until_next(next_poll))
        self._clear_on_exit()

    def _until_next(self, next_poll: float) -> float:
        now = self._clock()
        due = [now + self._poll_s]
        if (self._watch_spot or self._watch_lifecycle) and self._reason is None:
            due.append(next_poll)
        if self._protection is not None and self._target is None:
            due.append(self._next_resolve)
        elif self._protection is not None and self._busy != self._applied:
            due.append(self._next_call)  # a wish not yet applied: due now, or after the backoff
        return max(0.0, min(due) - now)

    def _poll_notices(self) -> None:
        try:
            reason = None
            if self._watch_spot:
                body = self._metadata.get(SPOT_ACTION_PATH)
                reason = spot_reason(body) if body is not None else None
            if reason is None and self._watch_lifecycle:
                state = self._metadata.get(LIFECYCLE_PATH)
                reason = lifecycle_reason(state) if state is not None else None
        except MetadataError as exc:
            self._imds_failed(exc)
            return
        self._imds_answered()
        if reason is not None:
            self._reason = reason
            _log.warning("instance_interruption_notice", reason=reason)

    def _imds_failed(self, exc: MetadataError) -> None:
        # Once per outage, not once per poll: a host without IMDS would log every 5 s.
        if not self._imds_down:
            self._imds_down = True
            _log.warning("instance_metadata_unavailable", error=str(exc), retry_every_s=self._poll_s)

    def _imds_answered(self) -> None:
        if self._imds_down:
            self._imds_down = False
            _log.info("instance_metadata_available")

    def _step_protection(self) -> None:
        if self._target is None:
            if self._clock() < self._next_resolve:
                return
            self._resolve()
            if self._target is None:
                return
        wish = self._busy
        if wish == self._applied or self._clock() < self._next_call:
            return
        target = self._target
        try:
            target.api.set_protection(target.instance_id, target.group, wish)
        except Exception as exc:  # noqa: BLE001 - ScalingError or a bug: never into the daemon
            self._failures += 1
            delay = self._backoff.delay(self._failures)
            self._next_call = self._clock() + delay
            _log.warning("scale_in_protection_failed", protected=wish, instance_id=target.instance_id,
                         group=target.group, error=str(exc), code=getattr(exc, "code", type(exc).__name__),
                         attempt=self._failures, retry_in_s=round(delay, 2))
            return
        self._applied = wish
        self._failures = 0
        self._next_call = 0.0
        _log.info("scale_in_protection_set", protected=wish, instance_id=target.instance_id,
                  group=target.group)

    def _resolve(self) -> None:
        try:
            instance_id = self._metadata.get(INSTANCE_ID_PATH)
            group = self._group or self._metadata.get(GROUP_TAG_PATH)
            region = self._metadata.get(REGION_PATH) or self._default_region
        except MetadataError as exc:
            self._imds_failed(exc)
            self._next_resolve = self._clock() + self._poll_s
            return
        self._imds_answered()
        if not instance_id:
            self._disable("IMDS has no instance-id")
            return
        if not group:
            self._disable("IMDS has no instance tag aws:autoscaling:groupName: the instance is not in an "
                          "Auto Scaling group, or InstanceMetadataTags is not enabled in its launch template")
            return
        assert self._protection is not None
        try:
            api = self._protection(region)
        except Exception as exc:  # noqa: BLE001 - no client: the daemon runs on without protection
            self._disable(f"cannot reach Auto Scaling: {exc}")
            return
        self._target = _Target(instance_id, group, api)
        _log.info("scale_in_protection_ready", instance_id=instance_id, group=group, region=region)

    def _disable(self, reason: str) -> None:
        self._protection = None
        _log.warning("scale_in_protection_disabled", reason=reason)

    def _clear_on_exit(self) -> None:
        """Best effort: an idle, stopping daemon should not keep its instance from scale-in."""
        target = self._target
        if target is None:
            return
        try:
            if self._protection is not None and self._applied is not False:
                target.api.set_protection(target.instance_id, target.group, False)
                _log.info("scale_in_protection_set", protected=False, instance_id=target.instance_id,
                          group=target.group)
        except Exception as exc:  # noqa: BLE001 - best effort on the way out
            _log.warning("scale_in_protection_failed", protected=False, instance_id=target.instance_id,
                         group=target.group, error=str(exc), code=getattr(exc, "code", type(exc).__name__),
                         attempt=1, retry_in_s=None)
        finally:
            target.api.close()


def guard_from_settings(
    settings: Settings, *, protection: Callable[[str], ProtectionApi] | None = None
) -> Guard | None:
    """A started guard for ``[instance]``, or None when it asks for nothing.

    ``protection`` replaces the Auto Scaling adapter factory (tests); by default
    it is ``worker.fleet.autoscaling.AutoScaling.connect``, imported only when needed.
    """
    cfg = settings.instance
    if not (cfg.scale_in_protection or cfg.watch_spot_interruption or cfg.watch_lifecycle_state):
        return None
    if cfg.scale_in_protection and protection is None:
        from worker.fleet.autoscaling import AutoScaling

        protection = AutoScaling.connect
    guard = Guard(
        MetadataClient(cfg.imds_url), watch_spot=cfg.watch_spot_interruption,
        watch_lifecycle=cfg.watch_lifecycle_state,
        protection=protection if cfg.scale_in_protection else None,
        group=cfg.autoscaling_group, default_region=settings.s3.region, poll_s=cfg.poll_s,
    )
    guard.start()
    return guard
