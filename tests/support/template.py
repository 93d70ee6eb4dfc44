"""The CloudFormation template as CloudFormation would act on it in one mode (Fn::If resolved)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tests.support.paths import REPO
from worker.local import cfn

#: deploy/cloudformation/processor.yaml.
TEMPLATE = REPO / cfn.TEMPLATE_RELPATH
#: FleetSize for each mode: 1 is one instance, anything above a fleet.
MODES = {"single": 1, "fleet": 3}
#: The daemons' max_attempts default (worker/config/settings.py): the DLQ's maxReceiveCount stays above it.
DAEMON_MAX_ATTEMPTS = 3
#: The input bucket's name as the template builds it.
INPUT_BUCKET_NAME = "${BucketNamePrefix}-input-${AWS::AccountId}-${AWS::Region}"


def of_type(resources: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The resources of type ``kind`` (e.g. "AWS::IAM::Role"), by logical name."""
    return {name: r for name, r in resources.items() if r["Type"] == kind}


def as_list(value: Any) -> list[Any]:
    """``value`` as a list (IAM and friends accept one item or a list)."""
    return value if isinstance(value, list) else [value]


#: What Fn::If yields for AWS::NoValue: dropped from the enclosing list or mapping.
_NO_VALUE = object()


def condition_values(template: Mapping[str, Any], parameters: Mapping[str, Any]) -> dict[str, bool]:
    """Every condition's value for these parameter values (defaults for the rest)."""
    params = template["Parameters"]
    values = {name: p.get("Default") for name, p in params.items()} | dict(parameters)
    found: dict[str, bool] = {}

    def operand(value: Any) -> Any:
        if isinstance(value, dict) and "Ref" in value:
            name = value["Ref"]
            raw = values[name]
            return str(raw).split(",") if params[name]["Type"] == "CommaDelimitedList" else raw
        if isinstance(value, dict) and "Fn::Join" in value:
            separator, items = value["Fn::Join"]
            return separator.join(str(item) for item in as_list(operand(items)))
        assert not isinstance(value, (dict, list)), f"cannot evaluate {value!r}"
        return value

    def evaluate(expression: Any) -> bool:
        ((function, args),) = expression.items()
        if function == "Fn::Equals":
            # CloudFormation compares strings: a Number parameter's 1 equals 1.
            return str(operand(args[0])) == str(operand(args[1]))
        if function == "Fn::Not":
            return not evaluate(args[0])
        if function == "Fn::And":
            return all(evaluate(arg) for arg in args)
        if function == "Fn::Or":
            return any(evaluate(arg) for arg in args)
        if function == "Condition":
            return condition(args)
        raise AssertionError(f"cannot evaluate {expression!r}")

    def condition(name: str) -> bool:
        if name not in found:
            found[name] = evaluate(template["Conditions"][name])
        return found[name]

    return {name: condition(name) for name in template["Conditions"]}


def _resolve(value: Any, conditions: Mapping[str, bool]) -> Any:
    """``value`` with every Fn::If decided and every AWS::NoValue dropped."""
    if isinstance(value, dict):
        if list(value) == ["Fn::If"]:
            name, when_true, when_false = value["Fn::If"]
            return _resolve(when_true if conditions[name] else when_false, conditions)
        if value == {"Ref": "AWS::NoValue"}:
            return _NO_VALUE
        resolved = {key: _resolve(item, conditions) for key, item in value.items()}
        return {key: item for key, item in resolved.items() if item is not _NO_VALUE}
    if isinstance(value, list):
        return [item for item in (_resolve(v, conditions) for v in value) if item is not _NO_VALUE]
    return value


def as_deployed(template: Mapping[str, Any], **parameters: Any) -> dict[str, Any]:
    """The template CloudFormation would act on with these parameters."""
    conditions = condition_values(template, parameters)

    def keep(section: str) -> dict[str, Any]:
        return {
            name: _resolve({k: v for k, v in item.items() if k != "Condition"}, conditions)
            for name, item in template.get(section, {}).items()
            if conditions.get(item.get("Condition", ""), True)
        }

    return {**template, "Resources": keep("Resources"), "Outputs": keep("Outputs")}
