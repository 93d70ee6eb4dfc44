"""The stack's autoscaling rule, driven by bench/fleet.py's simulation of the group.

moto's Auto Scaling records policies but scales nothing, so these tests take the
rule from deploy/cloudformation/processor.yaml (bench/scaling_rule.py) and run it
against a simulated queue backlog: scale-out from zero to MaxSize, scale-in to
MinSize once the queue is empty, and never a terminated instance that held a job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.fleet import (
    FleetSimulation,
    Job,
    Outcome,
    efficiency,
    rendezvous_owner,
    scale_from_idle,
    steady_waits,
    workload,
)
from bench.scaling_rule import TEMPLATE, RuleError, evaluate, load_rule
from worker.local import cfn


def _terminated_holding_a_job(outcome: Outcome) -> list[tuple[int, int]]:
    """(instance, job) for every job whose instance was terminated while it ran."""
    ended = {i.id: i.terminated_at for i in outcome.instances if i.terminated_at is not None}
    return [(r.instance, r.job) for r in outcome.runs
            if r.instance in ended and r.started_at <= ended[r.instance] < r.finished_at]


def test_metric_math_as_cloudwatch_computes_it() -> None:
    assert evaluate("visible / inservice", {"visible": 30, "inservice": 3}) == 10
    # No InService instance: the quotient has no value, so target tracking does nothing.
    assert evaluate("visible / inservice", {"visible": 30, "inservice": 0}) is None
    assert evaluate("IF(desired == 0 AND visible > 0, 1, 0)", {"desired": 0, "visible": 4}) == 1
    assert evaluate("IF(desired == 0 AND visible > 0, 1, 0)", {"desired": 2, "visible": 4}) == 0
    assert evaluate("IF(desired == 0 AND visible > 0, 1, 0)", {"desired": 0, "visible": 0}) == 0
    with pytest.raises(RuleError, match="nope is no metric"):
        evaluate("visible / nope", {"visible": 1})
    with pytest.raises(RuleError, match="outside the metric math"):
        evaluate("__import__('os')", {})


def test_the_rule_is_the_templates(tmp_path: Path) -> None:
    template = cfn.load_template(TEMPLATE)
    params = template["Parameters"]
    rule = load_rule({"FleetSize": 3})
    # MaxSize 0 (the default) means FleetSize; MinSize and the target are the defaults.
    assert (rule.min_size, rule.max_size, rule.initial_size) == (params["MinSize"]["Default"], 3, 3)
    assert rule.target_value == params["BacklogPerInstanceTarget"]["Default"]
    assert rule.slots == params["Concurrency"]["Default"]
    tracking = template["Resources"]["BacklogScalingPolicy"]["Properties"]["TargetTrackingConfiguration"]
    (returned,) = [m for m in tracking["CustomizedMetricSpecification"]["Metrics"] if m["ReturnData"]]
    assert rule.backlog.expression == returned["Expression"]
    assert set(rule.backlog.metrics.values()) == {"ApproximateNumberOfMessagesVisible",
                                                  "GroupInServiceInstances"}
    other = load_rule({"FleetSize": 2, "MaxSize": 8, "MinSize": 1, "BacklogPerInstanceTarget": 4})
    assert (other.min_size, other.max_size, other.target_value) == (1, 8, 4)
    with pytest.raises(RuleError, match="single instance"):
        load_rule({})
    with pytest.raises(RuleError, match="NoSuchParameter"):
        load_rule({"FleetSize": 2, "NoSuchParameter": 1})


def test_scales_out_from_zero_to_max_and_in_to_min_without_interrupting_a_job() -> None:
    rule = load_rule({"FleetSize": 2, "MaxSize": 6})
    jobs = workload(6 * rule.slots * 20, seed=7)
    outcome = scale_from_idle(rule, jobs)
    # From zero: the alarm's policy starts the first instance, target tracking the rest.
    first_time, first_capacity, why = outcome.decisions[0]
    assert (first_capacity, why) == (1, "scale-out from zero")
    assert outcome.samples[0].live == 0 and outcome.samples[0].visible == len(jobs)
    assert max(s.in_service for s in outcome.samples) == rule.max_size
    assert max(s.desired for s in outcome.samples) <= rule.max_size
    # Every job ran once, to the end, and no instance went while it held one.
    assert sorted(r.job for r in outcome.runs) == list(range(len(jobs)))
    assert _terminated_holding_a_job(outcome) == []
    # The queue empty, the group is back at MinSize (0: it costs nothing).
    last = outcome.samples[-1]
    assert last.at > outcome.finished_s()
    assert (last.visible, last.live, last.desired) == (0, rule.min_size, rule.min_size)
    assert all(i.terminated_at is not None for i in outcome.instances)


def test_scale_in_skips_instances_holding_jobs() -> None:
    rule = load_rule({"FleetSize": 3})
    simulation = FleetSimulation(rule, startup_s=240)
    # Every slot busy for an hour and nothing visible: the backlog per instance is 0, so
    # target tracking lowers the capacity to MinSize long before the jobs end.
    long = [Job(f"long-{i}", 3600.0) for i in range(rule.initial_size * rule.slots)]
    simulation.submit(long)
    outcome = simulation.run(until_s=3 * 3600)
    lowered = [at for at, capacity, _ in outcome.decisions if capacity == rule.min_size]
    assert lowered and lowered[0] < 3600
    # Protected while busy: none went before its jobs ended, all went after.
    assert _terminated_holding_a_job(outcome) == []
    for instance in outcome.instances:
        assert instance.terminated_at is not None and instance.terminated_at >= 3600
    assert len(outcome.runs) == len(long)


def _with_expressions(tmp_path: Path, backlog: str | None = None, from_zero: str | None = None) -> Path:
    """A copy of the template with the scaling expressions replaced."""
    template: dict[str, Any] = cfn.load_template(TEMPLATE)
    resources = template["Resources"]
    if backlog is not None:
        spec = resources["BacklogScalingPolicy"]["Properties"]["TargetTrackingConfiguration"]
        for metric in spec["CustomizedMetricSpecification"]["Metrics"]:
            if metric["ReturnData"]:
                metric["Expression"] = backlog
    if from_zero is not None:
        for metric in resources["ScaleOutFromZeroAlarm"]["Properties"]["Metrics"]:
            if metric["ReturnData"]:
                metric["Expression"] = from_zero
    path = tmp_path / "processor.yaml"
    path.write_text(yaml.safe_dump(template), encoding="utf-8")
    return path


def test_the_simulation_follows_the_template_not_a_copy_of_it(tmp_path: Path) -> None:
    params = {"FleetSize": 2, "MaxSize": 6}
    jobs = workload(6 * 2 * 20, seed=7)
    # A backlog metric a tenth of the real one scales out less.
    damped = load_rule(params, _with_expressions(tmp_path, backlog="visible / inservice / 10"))
    assert max(s.in_service for s in scale_from_idle(damped, jobs).samples) < 6
    # Without the from-zero alarm's expression the group never leaves zero.
    stuck = load_rule(params, _with_expressions(tmp_path, from_zero="0 * visible"))
    outcome = scale_from_idle(stuck, jobs)
    assert outcome.runs == [] and outcome.instances == []


def test_shared_queue_balances_better_than_rendezvous() -> None:
    for instances in (3, 10):
        eff = efficiency(instances, 2, range(10), jobs_per_slot=20)
        # The shared queue is the greedy schedule; placing by hash is worse on most bursts.
        assert eff.shared == [1.0] * 10
        assert sorted(eff.rendezvous)[5] > 1.0
        assert all(s >= 1.0 for s in eff.shared_bound + eff.rendezvous_bound)
    # Under steady load a job waits behind others on its own instance while slots are free
    # elsewhere: placing by hash has the longer tail.
    steady = steady_waits(3, 2, range(5), jobs=1000)
    assert all(r > s for r, s in zip(steady.rendezvous, steady.shared, strict=True))
    # Rendezvous is a function of the key (duplicates meet on one instance) and spreads.
    owners = [rendezvous_owner(f"k{i}", 3) for i in range(300)]
    assert owners == [rendezvous_owner(f"k{i}", 3) for i in range(300)]
    assert all(60 < owners.count(n) < 140 for n in range(3))
