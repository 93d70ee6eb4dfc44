"""A fleet on one shared work queue, simulated: balance, and the stack's own autoscaling.

Two things no emulator shows (moto's Auto Scaling records policies but scales
nothing), computed by a small discrete-event simulation on job durations drawn
from a fixed seed (lognormal around 30 s; 5 % of the jobs 10x longer):

* **Fleet efficiency**: N instances x S slots take a burst of jobs; makespan /
  ideal, where ideal is the greedy schedule of the same durations, in the same
  order, on all N x S slots as one pool (each job starts on the slot that frees
  first; the issue's "ideal greedy schedule"). Shared queue: a free slot takes
  the next message, which is that schedule itself, so 1.00 here by
  construction (what a real fleet adds to it, the receives and the start-up,
  is measured by the integration test over the emulator's queue). Rendezvous
  (the scheme the queue replaces): each job is placed on one instance by
  highest-random-weight hashing of its key, and each instance runs its own
  queue on its S slots. Both are also given against the lower bound of any
  schedule, max(total work / slots, longest job).
* **Waits under steady load**: the same durations arriving as a Poisson stream
  at 80 % of the fleet's capacity; the 95th percentile of the time a job waits
  for a slot, shared queue against rendezvous.
* **Autoscaling**: the group of deploy/cloudformation/processor.yaml, with the
  rule bench/scaling_rule.py reads from the template, evaluated every 60 s as
  CloudWatch would; instances take ``startup_s`` to bootstrap; scale-in
  terminates only instances holding no job (the daemon's scale-in protection),
  lowering the capacity as Auto Scaling does and removing protected ones once
  they are idle.

Usage: python -m bench.fleet [--seeds 20] [--jobs-per-slot 20]
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import math
import random
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.common import Figure, median
from bench.scaling_rule import ScalingRule, load_rule

#: Median duration of a short job, and the lognormal spread around it.
SHORT_S = 30.0
SIGMA = 0.5
#: Share of the jobs that are LONG_FACTOR times longer.
LONG_SHARE = 0.05
LONG_FACTOR = 10.0
#: How often CloudWatch evaluates the policies' metrics (1-minute group metrics).
TICK_S = 60.0
#: Boot, packages, the wheel, the data volume: launch to the daemon's first receive.
STARTUP_S = 240.0
#: Target tracking scales in only once its metric has asked for less this many
#: evaluations in a row (the 15-of-15 one-minute scale-in alarm Auto Scaling creates).
SCALE_IN_PERIODS = 15


@dataclass(frozen=True)
class Job:
    key: str
    duration_s: float


def workload(count: int, seed: int) -> list[Job]:
    """``count`` jobs in queue order: many short ones, a few 10x longer, from ``seed``."""
    rng = random.Random(seed)
    durations = [rng.lognormvariate(math.log(SHORT_S), SIGMA) for _ in range(count)]
    for index in rng.sample(range(count), max(1, round(count * LONG_SHARE))):
        durations[index] *= LONG_FACTOR
    return [Job(f"incoming/{seed}/object-{i:05d}.csv", d) for i, d in enumerate(durations)]


def lower_bound_s(jobs: Sequence[Job], slots: int) -> float:
    """The lower bound of any schedule: the work spread evenly, or the longest job."""
    return max(sum(j.duration_s for j in jobs) / slots, max(j.duration_s for j in jobs))


def ideal_s(jobs: Sequence[Job], slots: int) -> float:
    """The greedy schedule of ``jobs``, in order, on ``slots`` pooled slots."""
    return _list_schedule(jobs, slots)


def _list_schedule(jobs: Sequence[Job], slots: int) -> float:
    """Makespan when each job, in order, starts on the slot that frees first."""
    free = [0.0] * slots
    for job in jobs:
        heapq.heappush(free, heapq.heappop(free) + job.duration_s)
    return max(free)


def shared_queue_makespan(jobs: Sequence[Job], instances: int, slots: int) -> float:
    return _list_schedule(jobs, instances * slots)


def rendezvous_owner(key: str, instances: int) -> int:
    """The instance highest-random-weight hashing picks for ``key``."""
    def weight(instance: int) -> bytes:
        return hashlib.sha256(f"i-{instance:017x}|{key}".encode()).digest()
    return max(range(instances), key=weight)


def rendezvous_makespan(jobs: Sequence[Job], instances: int, slots: int) -> float:
    queues: list[list[Job]] = [[] for _ in range(instances)]
    for job in jobs:
        queues[rendezvous_owner(job.key, instances)].append(job)
    return max(_list_schedule(queue, slots) for queue in queues if queue)


@dataclass(frozen=True)
class Efficiency:
    """Makespan / ideal per seed of each scheme, and / the lower bound."""

    instances: int
    slots: int
    shared: list[float]
    rendezvous: list[float]
    shared_bound: list[float]
    rendezvous_bound: list[float]


def efficiency(instances: int, slots: int, seeds: Sequence[int], jobs_per_slot: int) -> Efficiency:
    found: dict[str, list[float]] = {name: [] for name in ("shared", "rendezvous", "shared_bound",
                                                           "rendezvous_bound")}
    for seed in seeds:
        jobs = workload(instances * slots * jobs_per_slot, seed)
        ideal, bound = ideal_s(jobs, instances * slots), lower_bound_s(jobs, instances * slots)
        for name, makespan in (("shared", shared_queue_makespan(jobs, instances, slots)),
                               ("rendezvous", rendezvous_makespan(jobs, instances, slots))):
            found[name].append(makespan / ideal)
            found[f"{name}_bound"].append(makespan / bound)
    return Efficiency(instances, slots, **found)


def _waits(arrivals: Sequence[tuple[float, Job]], slots: int) -> list[float]:
    """Each job's wait for a slot, first come first served on ``slots`` slots."""
    free = [0.0] * slots
    waits = []
    for at, job in arrivals:
        start = max(at, heapq.heappop(free))
        heapq.heappush(free, start + job.duration_s)
        waits.append(start - at)
    return waits


def _p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


@dataclass(frozen=True)
class SteadyWaits:
    """p95 wait per seed of each scheme, in seconds."""

    shared: list[float]
    rendezvous: list[float]


def steady_waits(instances: int, slots: int, seeds: Sequence[int], jobs: int = 2000,
                 utilization: float = 0.8) -> SteadyWaits:
    shared, placed = [], []
    for seed in seeds:
        work = workload(jobs, seed)
        mean = sum(j.duration_s for j in work) / len(work)
        rate = utilization * instances * slots / mean
        rng = random.Random(seed + 10_000)
        arrivals, now = [], 0.0
        for job in work:
            now += rng.expovariate(rate)
            arrivals.append((now, job))
        shared.append(_p95(_waits(arrivals, instances * slots)))
        per_instance: list[list[tuple[float, Job]]] = [[] for _ in range(instances)]
        for at, job in arrivals:
            per_instance[rendezvous_owner(job.key, instances)].append((at, job))
        placed.append(_p95([w for queue in per_instance for w in _waits(queue, slots)]))
    return SteadyWaits(shared, placed)


# --- autoscaling ------------------------------------------------------------------------


@dataclass
class Instance:
    id: int
    launched_at: float
    ready_at: float
    running: set[int] = field(default_factory=set)
    terminated_at: float | None = None

    def live(self) -> bool:
        return self.terminated_at is None

    def in_service(self, now: float) -> bool:
        return self.live() and self.ready_at <= now


@dataclass(frozen=True)
class Run:
    """Where and when one job ran."""

    job: int
    instance: int
    started_at: float
    finished_at: float


@dataclass(frozen=True)
class Sample:
    """The group as one policy evaluation saw it."""

    at: float
    visible: int
    in_service: int
    desired: int
    live: int


@dataclass
class Outcome:
    runs: list[Run]
    instances: list[Instance]
    samples: list[Sample]
    #: (time, capacity, why) of every change of the desired capacity.
    decisions: list[tuple[float, int, str]]

    def finished_s(self) -> float:
        return max(r.finished_at for r in self.runs)


class FleetSimulation:
    """The group, its daemons and the queue between them, event by event."""

    def __init__(self, rule: ScalingRule, *, startup_s: float = STARTUP_S,
                 initial: int | None = None) -> None:
        self.rule = rule
        self.startup_s = startup_s
        self.now = 0.0
        self.queue: deque[int] = deque()
        self.instances: list[Instance] = []
        self.desired = rule.initial_size if initial is None else initial
        self.runs: list[Run] = []
        self.samples: list[Sample] = []
        self.decisions: list[tuple[float, int, str]] = []
        self._events: list[tuple[float, int, str, Any]] = []
        self._seq = 0
        self._durations: list[float] = []
        self._lower_for = 0
        for _ in range(self.desired):
            # Instances the group already had: in service from the start.
            self.instances.append(Instance(len(self.instances), -startup_s, 0.0))

    def _at(self, when: float, kind: str, payload: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self._events, (when, self._seq, kind, payload))

    def submit(self, jobs: Sequence[Job], at: float = 0.0) -> None:
        for job in jobs:
            self._durations.append(job.duration_s)
            self._at(at, "message", len(self._durations) - 1)

    def run(self, until_s: float) -> Outcome:
        self._at(TICK_S, "tick")
        while self._events:
            when, _, kind, payload = heapq.heappop(self._events)
            if when > until_s:
                break
            self.now = when
            if kind == "message":
                self.queue.append(payload)
            elif kind == "finish":
                instance, job = payload
                instance.running.discard(job)
            elif kind == "tick":
                self._evaluate()
                self._at(self.now + TICK_S, "tick")
            # "ready" needs nothing more: the instance is in service from its ready_at.
            self._dispatch()
        return Outcome(self.runs, self.instances, self.samples, self.decisions)

    def _dispatch(self) -> None:
        """Every free slot of an in-service instance takes the next visible message."""
        for instance in self.instances:
            while self.queue and instance.in_service(self.now) and len(instance.running) < self.rule.slots:
                job = self.queue.popleft()
                instance.running.add(job)
                done = self.now + self._durations[job]
                self.runs.append(Run(job, instance.id, self.now, done))
                self._at(done, "finish", (instance, job))

    def _evaluate(self) -> None:
        live = [i for i in self.instances if i.live()]
        in_service = sum(1 for i in live if i.in_service(self.now))
        observed: Mapping[str, float] = {
            "ApproximateNumberOfMessagesVisible": len(self.queue),
            "GroupInServiceInstances": in_service,
            "GroupDesiredCapacity": self.desired,
        }
        self.samples.append(Sample(self.now, len(self.queue), in_service, self.desired, len(live)))
        from_zero = self.rule.scale_from_zero(observed, self.desired)
        if from_zero is not None and from_zero != self.desired:
            self._decide(from_zero, "scale-out from zero")
        tracked = self.rule.target_tracking(in_service, observed)
        pending = any(not i.in_service(self.now) for i in live)
        # Out at once; in only after SCALE_IN_PERIODS evaluations in a row asked for less
        # than is in service, and never while an instance is still starting.
        self._lower_for = self._lower_for + 1 if tracked is not None and tracked < in_service else 0
        if tracked is not None and tracked > self.desired:
            self._decide(tracked, "target tracking: out")
        elif (self._lower_for >= SCALE_IN_PERIODS and not pending and tracked is not None
              and tracked != self.desired):
            self._decide(tracked, "target tracking: in")
        self._reconcile(live)

    def _decide(self, capacity: int, why: str) -> None:
        self.desired = capacity
        self.decisions.append((self.now, capacity, why))

    def _reconcile(self, live: list[Instance]) -> None:
        """Launch up to the desired capacity, or terminate unprotected instances down to it."""
        for _ in range(self.desired - len(live)):
            instance = Instance(len(self.instances), self.now, self.now + self.startup_s)
            self.instances.append(instance)
            self._at(instance.ready_at, "ready", instance)
        excess = len(live) - self.desired
        # Scale-in protection: an instance holding a job is skipped; the newest go first.
        for instance in sorted(live, key=lambda i: -i.id):
            if excess <= 0:
                break
            if not instance.running:
                instance.terminated_at = self.now
                excess -= 1


def interrupted(outcome: Outcome) -> list[Run]:
    """Runs whose instance was terminated while they were running."""
    ended = {i.id: i.terminated_at for i in outcome.instances if i.terminated_at is not None}
    return [r for r in outcome.runs
            if r.instance in ended and r.started_at <= ended[r.instance] < r.finished_at]


def scale_from_idle(rule: ScalingRule, jobs: Sequence[Job], *, startup_s: float = STARTUP_S,
                    idle_after_s: float = 3600.0) -> Outcome:
    """A burst of ``jobs`` onto a group at zero, then an hour of an empty queue."""
    simulation = FleetSimulation(rule, startup_s=startup_s, initial=0)
    simulation.submit(jobs)
    horizon = sum(j.duration_s for j in jobs) / rule.slots + startup_s + idle_after_s
    return simulation.run(until_s=horizon)


# --- the figures ------------------------------------------------------------------------


def _ratios(values: Sequence[float]) -> str:
    spread = f"{min(values):.2f}–{max(values):.2f}"
    return f"**{median(list(values)):.2f}** (median of {len(values)} seeds; {spread})"


def figures(seeds: Sequence[int] = range(20), jobs_per_slot: int = 20, max_size: int = 10) -> list[Figure]:
    rule = load_rule({"FleetSize": 2, "MaxSize": max_size})
    rows = []
    for count in (3, 10):
        eff = efficiency(count, rule.slots, seeds, jobs_per_slot)
        rows.append(Figure(
            f"7. fleet efficiency (simulated), {count} instances x {rule.slots} slots, bursts of "
            f"{count * rule.slots * jobs_per_slot} jobs: makespan / ideal greedy schedule, "
            "shared queue vs rendezvous",
            f"shared **{median(eff.shared):.2f}** (by construction); rendezvous {_ratios(eff.rendezvous)}; "
            f"against the lower bound max(work/slots, longest job): shared {median(eff.shared_bound):.2f}, "
            f"rendezvous {median(eff.rendezvous_bound):.2f}"))
    for count in (3, 10):
        steady = steady_waits(count, rule.slots, seeds)
        rows.append(Figure(
            f"7b. steady arrivals at 80 % of {count} instances x {rule.slots} slots (2000 jobs): p95 wait "
            "for a slot, rendezvous / shared queue",
            f"**{median(steady.rendezvous) / median(steady.shared):.1f}×** (medians over {len(seeds)} "
            f"seeds: {median(steady.rendezvous):.0f} s vs {median(steady.shared):.0f} s)"))
    jobs = workload(max_size * rule.slots * jobs_per_slot, seeds[0])
    outcome = scale_from_idle(rule, jobs)
    first = next(at for at, _, why in outcome.decisions if why == "scale-out from zero")
    peak = max(s.in_service for s in outcome.samples)
    at_peak = next(s.at for s in outcome.samples if s.in_service == peak)
    back = next((s.at for s in outcome.samples if s.at > outcome.finished_s() and s.live == rule.min_size),
                math.nan)
    ideal = ideal_s(jobs, max_size * rule.slots)
    scaled_in = f"{back - outcome.finished_s():.0f} s" if not math.isnan(back) else "not within the hour"
    rows.append(Figure(
        f"7c. autoscaling from 0 (simulated, the template's rule; MinSize {rule.min_size}, MaxSize "
        f"{rule.max_size}, target {rule.target_value:g}/instance, start-up {STARTUP_S:.0f} s): "
        f"{len(jobs)} jobs",
        f"first launch at {first:.0f} s, {peak} InService at {at_peak:.0f} s; makespan / ideal on "
        f"{max_size} instances **{outcome.finished_s() / ideal:.2f}**; back to {rule.min_size} "
        f"{scaled_in} after the last job; jobs interrupted by scale-in: "
        f"{len(interrupted(outcome))}"))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="workloads (seeds 0..N-1; default 20)")
    parser.add_argument("--jobs-per-slot", type=int, default=20,
                        help="jobs per slot of the fleet (default 20)")
    args = parser.parse_args(argv)
    for row in figures(range(args.seeds), args.jobs_per_slot):
        print(row.row())
    return 0


if __name__ == "__main__":
    sys.exit(main())
