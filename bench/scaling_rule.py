"""The fleet's scaling rule, read from deploy/cloudformation/processor.yaml.

moto's Auto Scaling records policies but scales nothing, so bench/fleet.py
simulates the group, and it takes every figure of the rule from the template
itself (never restated here): MinSize, MaxSize and the initial size of
FleetGroup, the target value and the metric math expression of
BacklogScalingPolicy, and the expression, threshold and step of
ScaleOutFromZeroAlarm / ScaleOutFromZeroPolicy, each resolved for the given
stack parameters (the template's defaults for the rest), as CloudFormation
would resolve them.

What it then does is CloudWatch's part, modelled after the EC2 Auto Scaling
guide: target tracking sets the capacity to ceil(current x metric / target),
within MinSize..MaxSize, and does nothing while its metric has no value (the
quotient with no InService instance); the alarm runs its step policy while
its expression reaches the threshold.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.local import cfn

TEMPLATE = Path(__file__).resolve().parents[1] / cfn.TEMPLATE_RELPATH

#: The metrics a simulated fleet can report, by CloudWatch metric name.
KNOWN_METRICS = ("ApproximateNumberOfMessagesVisible", "GroupInServiceInstances", "GroupDesiredCapacity")


class RuleError(ValueError):
    """The template's scaling rule is missing or uses something this model cannot evaluate."""


@dataclass(frozen=True)
class MathMetric:
    """A metric math query: an expression over metrics named by id."""

    expression: str
    #: Id in the expression -> CloudWatch metric name.
    metrics: Mapping[str, str]

    def value(self, observed: Mapping[str, float]) -> float | None:
        """The expression's value for these metric values, or None where CloudWatch has none."""
        return evaluate(self.expression, {mid: observed[name] for mid, name in self.metrics.items()})


@dataclass(frozen=True)
class ScalingRule:
    """What the stack tells Auto Scaling, for one set of stack parameters."""

    min_size: int
    max_size: int
    #: DesiredCapacity at creation (FleetSize).
    initial_size: int
    #: Concurrency: slots per instance.
    slots: int
    target_value: float
    backlog: MathMetric
    from_zero: MathMetric
    from_zero_threshold: float
    from_zero_compare: Callable[[float, float], bool]
    #: ScaleOutFromZeroPolicy's step: instances added (ChangeInCapacity).
    from_zero_step: int

    def clamp(self, desired: int) -> int:
        return max(self.min_size, min(self.max_size, desired))

    def target_tracking(self, current: int, observed: Mapping[str, float]) -> int | None:
        """The capacity target tracking asks for, or None when its metric has no value."""
        metric = self.backlog.value(observed)
        if metric is None:
            return None
        return self.clamp(math.ceil(current * metric / self.target_value))

    def scale_from_zero(self, observed: Mapping[str, float], current: int) -> int | None:
        """The capacity the from-zero alarm's policy sets from ``current``, or None while the alarm is OK."""
        value = self.from_zero.value(observed)
        if value is None or not self.from_zero_compare(value, self.from_zero_threshold):
            return None
        return self.clamp(current + self.from_zero_step)


_COMPARE: Mapping[str, Callable[[float, float], bool]] = {
    "GreaterThanOrEqualToThreshold": lambda v, t: v >= t,
    "GreaterThanThreshold": lambda v, t: v > t,
    "LessThanThreshold": lambda v, t: v < t,
    "LessThanOrEqualToThreshold": lambda v, t: v <= t,
}


def load_rule(parameters: Mapping[str, Any], template_path: Path = TEMPLATE) -> ScalingRule:
    """The rule the stack would deploy with these parameters (defaults for the rest)."""
    template = cfn.load_template(template_path)
    values = {name: p.get("Default") for name, p in template["Parameters"].items()}
    unknown = set(parameters) - set(values)
    if unknown:
        raise RuleError(f"not parameters of {template_path.name}: {', '.join(sorted(unknown))}")
    values.update(parameters)
    resolver = _Resolver(template, values)
    if not resolver.condition("IsFleet"):
        raise RuleError("these parameters make a single instance, not a fleet: "
                        f"FleetSize={values['FleetSize']}")
    resources = template["Resources"]
    group = resolver.resolve(resources["FleetGroup"]["Properties"])
    policy = resolver.resolve(resources["BacklogScalingPolicy"]["Properties"])
    tracking = policy["TargetTrackingConfiguration"]
    alarm = resolver.resolve(resources["ScaleOutFromZeroAlarm"]["Properties"])
    step = resolver.resolve(resources["ScaleOutFromZeroPolicy"]["Properties"])
    if step["AdjustmentType"] != "ChangeInCapacity" or len(step["StepAdjustments"]) != 1:
        raise RuleError("ScaleOutFromZeroPolicy: this model knows one ChangeInCapacity step only")
    return ScalingRule(
        min_size=int(group["MinSize"]),
        max_size=int(group["MaxSize"]),
        initial_size=int(group["DesiredCapacity"]),  # FleetDesiredCapacity empty: FleetSize
        slots=int(values["Concurrency"]),
        target_value=float(tracking["TargetValue"]),
        backlog=_math_metric(tracking["CustomizedMetricSpecification"]["Metrics"], "BacklogScalingPolicy"),
        from_zero=_math_metric(alarm["Metrics"], "ScaleOutFromZeroAlarm"),
        from_zero_threshold=float(alarm["Threshold"]),
        from_zero_compare=_COMPARE[alarm["ComparisonOperator"]],
        from_zero_step=int(step["StepAdjustments"][0]["ScalingAdjustment"]),
    )


def _math_metric(queries: list[Mapping[str, Any]], where: str) -> MathMetric:
    returned = [q for q in queries if q.get("ReturnData", True)]
    if len(returned) != 1 or "Expression" not in returned[0]:
        raise RuleError(f"{where}: expected one returned metric math expression")
    metrics = {q["Id"]: q["MetricStat"]["Metric"]["MetricName"] for q in queries if "MetricStat" in q}
    for mid, name in metrics.items():
        if name not in KNOWN_METRICS:
            raise RuleError(f"{where}: metric {mid} is {name}, which the simulated fleet does not report")
    return MathMetric(returned[0]["Expression"], metrics)


class _Resolver:
    """Ref, Fn::If and the Conditions of a template, for one set of parameter values."""

    def __init__(self, template: Mapping[str, Any], values: Mapping[str, Any]) -> None:
        self._template = template
        self._values = values
        self._conditions: dict[str, bool] = {}

    def condition(self, name: str) -> bool:
        if name not in self._conditions:
            self._conditions[name] = self._test(self._template["Conditions"][name])
        return self._conditions[name]

    def _test(self, expression: Mapping[str, Any]) -> bool:
        ((function, args),) = expression.items()
        if function == "Fn::Equals":
            return str(self._operand(args[0])) == str(self._operand(args[1]))
        if function == "Fn::Not":
            return not self._test(args[0])
        if function == "Fn::And":
            return all(self._test(a) for a in args)
        if function == "Fn::Or":
            return any(self._test(a) for a in args)
        if function == "Condition":
            return self.condition(args)
        raise RuleError(f"cannot evaluate the condition {expression!r}")

    def _operand(self, value: Any) -> Any:
        if isinstance(value, dict) and "Ref" in value:
            raw = self._values[value["Ref"]]
            kind = self._template["Parameters"][value["Ref"]]["Type"]
            return str(raw).split(",") if kind == "CommaDelimitedList" else raw
        if isinstance(value, dict) and "Fn::Join" in value:
            separator, items = value["Fn::Join"]
            operand = self._operand(items)
            return separator.join(str(i) for i in (operand if isinstance(operand, list) else [operand]))
        return value

    def resolve(self, value: Any) -> Any:
        """``value`` with parameters substituted and Fn::If decided; other references stay."""
        if isinstance(value, dict):
            if list(value) == ["Fn::If"]:
                name, yes, no = value["Fn::If"]
                return self.resolve(yes if self.condition(name) else no)
            if list(value) == ["Ref"] and value["Ref"] in self._values:
                return self._values[value["Ref"]]
            return {k: self.resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        return value


# --- metric math ---------------------------------------------------------------------

_WORDS = re.compile(r"\b(AND|OR)\b|&&|\|\|")


def evaluate(expression: str, metrics: Mapping[str, float]) -> float | None:
    """A CloudWatch metric math expression of one data point each, as CloudWatch computes it.

    The subset the stack uses: numbers, metric ids, + - * /, comparisons, AND/OR,
    IF(condition, then, else) and FILL(metric, REPEAT). A division by zero has no value
    (CloudWatch drops the point), and so has anything computed from it. The simulation
    reports every metric every minute, so FILL(m, REPEAT) is m here.
    """
    text = _WORDS.sub(lambda m: " and " if m.group(0) in ("AND", "&&") else " or ", expression)
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise RuleError(f"cannot parse the metric math expression {expression!r}") from exc
    return _value(tree.body, metrics, expression)


def _value(node: ast.expr, metrics: Mapping[str, float], expression: str) -> float | None:
    def sub(child: ast.expr) -> float | None:
        return _value(child, metrics, expression)

    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return float(node.value)
    if isinstance(node, ast.Name):
        if node.id not in metrics:
            raise RuleError(f"{expression!r}: {node.id} is no metric of this query")
        return float(metrics[node.id])
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        operand = sub(node.operand)
        return None if operand is None else -operand
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub | ast.Mult | ast.Div):
        left, right = sub(node.left), sub(node.right)
        if left is None or right is None:
            return None
        if isinstance(node.op, ast.Div):
            return None if right == 0 else left / right
        return {ast.Add: left + right, ast.Sub: left - right, ast.Mult: left * right}[type(node.op)]
    if isinstance(node, ast.Compare) and len(node.ops) == 1:
        left, right = sub(node.left), sub(node.comparators[0])
        if left is None or right is None:
            return None
        compare = _COMPARISONS.get(type(node.ops[0]))
        if compare is None:
            raise RuleError(f"{expression!r}: unsupported comparison")
        return 1.0 if compare(left, right) else 0.0
    if isinstance(node, ast.BoolOp):
        values = [sub(v) for v in node.values]
        if any(v is None for v in values):
            return None
        truth = all if isinstance(node.op, ast.And) else any
        return 1.0 if truth(v != 0 for v in values) else 0.0
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "FILL"
            and len(node.args) == 2 and isinstance(node.args[1], ast.Name)
            and node.args[1].id == "REPEAT" and not node.keywords):
        return sub(node.args[0])
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "IF"
            and len(node.args) == 3 and not node.keywords):
        condition = sub(node.args[0])
        if condition is None:
            return None
        return sub(node.args[1] if condition != 0 else node.args[2])
    raise RuleError(f"{expression!r}: {ast.dump(node)[:60]} is outside the metric math this model knows")


_COMPARISONS: Mapping[type[ast.cmpop], Callable[[float, float], bool]] = {
    ast.Eq: lambda a, b: a == b,
    ast.NotEq: lambda a, b: a != b,
    ast.Gt: lambda a, b: a > b,
    ast.GtE: lambda a, b: a >= b,
    ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b,
}
