"""A command's parameters: checked against its document, then delivered to its steps.

Checking follows the SSM service and agent: unknown names, missing required
values, several values for a ``String``, ``allowedValues``,
``minChars``/``maxChars`` and ``allowedPattern`` (matched as the Go agent
matches it: :mod:`worker.local.patterns`); defaults are filled in and checked
too. On AWS a bad parameter makes ``SendCommand`` itself fail; the emulator
accepts anything, so the local agent ends such a command ``InvalidParameters``
and runs nothing.

Delivery follows the agent too: an ``interpolationType: ENV_VAR`` parameter
reaches the script as ``SSM_<Name>`` only, its double-brace placeholders left
unfilled (with a warning); any other is pasted into the step inputs textually,
as the agent's ``ReplaceParameter`` does. :mod:`worker.local.agent` says why.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from worker.local.patterns import pattern_matches

# The agent's logger, as before this code left agent.py: these warnings are the agent's.
_LOGGER = logging.getLogger("processor.local.agent")

#: The agent's default for a step without ``timeoutSeconds`` (aws:runShellScript: 3600 s).
DEFAULT_STEP_TIMEOUT_S = 3600
#: Longest value preview an error message shows.
_PREVIEW_CHARS = 60


class InvalidParameters(ValueError):
    """A command's parameters do not fit its document; ``name`` is the parameter."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"parameter {name!r}: {reason}")
        self.name = name
        self.reason = reason


class InvalidDocument(ValueError):
    """The document is one this agent cannot run (bad pattern, unsupported action...)."""


# --- checking --------------------------------------------------------------------------


def _preview(value: str) -> str:
    if len(value) <= _PREVIEW_CHARS:
        return repr(value)
    return f"{value[:_PREVIEW_CHARS]!r}... ({len(value)} characters)"


def _as_int(definition: Mapping[str, Any], key: str) -> int | None:
    raw = definition.get(key)
    return None if raw is None else int(raw)


def _check_value(name: str, definition: Mapping[str, Any], value: str) -> None:
    allowed_values = definition.get("allowedValues")
    if allowed_values is not None and value not in [str(v) for v in allowed_values]:
        raise InvalidParameters(
            name, f"value {_preview(value)} is not one of the allowed values {allowed_values}"
        )
    min_chars, max_chars = _as_int(definition, "minChars"), _as_int(definition, "maxChars")
    if min_chars is not None and len(value) < min_chars:
        raise InvalidParameters(name, f"value {_preview(value)} is shorter than {min_chars}")
    if max_chars is not None and len(value) > max_chars:
        raise InvalidParameters(name, f"value {_preview(value)} is longer than {max_chars}")
    pattern = definition.get("allowedPattern")
    if pattern is None:
        return
    try:
        ok = pattern_matches(str(pattern), value)
    except (ValueError, re.error) as exc:
        raise InvalidDocument(
            f"parameter {name!r}: allowedPattern {pattern!r} cannot be used: {exc}"
        ) from exc
    if not ok:
        raise InvalidParameters(
            name, f"value {_preview(value)} does not match the allowed pattern {pattern}"
        )


def validate_parameters(
    content: Mapping[str, Any], parameters: Mapping[str, Sequence[str]]
) -> dict[str, str]:
    """Check ``SendCommand``-style ``parameters`` against the document ``content``.

    Returns every declared parameter's value, defaults included. Raises
    :class:`InvalidParameters` naming the first bad parameter, or
    :class:`InvalidDocument` when the document itself cannot be used.
    """
    declared: Mapping[str, Any] = content.get("parameters") or {}
    for name in parameters:
        if name not in declared:
            raise InvalidParameters(name, "is not a parameter of this document")
    resolved: dict[str, str] = {}
    for name, definition in declared.items():
        if not isinstance(definition, Mapping):
            raise InvalidDocument(f"parameter {name!r}: definition must be a mapping")
        param_type = definition.get("type", "String")
        if param_type != "String":
            raise InvalidDocument(
                f"parameter {name!r}: type {param_type!r} is not supported by the local agent"
            )
        if name in parameters:
            values = parameters[name]
            if isinstance(values, str) or len(values) != 1:
                count = "a bare string" if isinstance(values, str) else f"{len(values)} values"
                raise InvalidParameters(
                    name, f"a String parameter takes exactly one value, got {count}"
                )
            value = values[0]
            if not isinstance(value, str):
                raise InvalidParameters(name, f"value must be a string, got {type(value).__name__}")
        elif "default" in definition:
            value = str(definition["default"])
        else:
            raise InvalidParameters(name, "is required and has no default")
        _check_value(name, definition, value)
        resolved[name] = value
    return resolved


# --- delivery to the steps -------------------------------------------------------------


@dataclass(frozen=True)
class RenderedStep:
    """One ``aws:runShellScript`` step with the parameters delivered, ready to run."""

    name: str
    script: str
    env: dict[str, str]
    timeout_s: float
    working_directory: str | None


def _is_env_var(definitions: Mapping[str, Any], name: str) -> bool:
    definition = definitions.get(name)
    return isinstance(definition, Mapping) and definition.get("interpolationType") == "ENV_VAR"


def _placeholder(name: str) -> re.Pattern[str]:
    return re.compile(r"\{\{\s*" + re.escape(name) + r"\s*\}\}")


def prepare_step(
    step: Mapping[str, Any], values: Mapping[str, str], definitions: Mapping[str, Any]
) -> RenderedStep:
    """Deliver ``values`` to one step as :func:`render_step` describes; check the step.

    Raises :class:`InvalidDocument` for an action other than ``aws:runShellScript``
    or a ``runCommand`` that is not a list of strings.
    """
    action = step.get("action")
    step_name = str(step.get("name", action))
    if action != "aws:runShellScript":
        raise InvalidDocument(f"step {step_name!r}: action {action!r} is not supported")
    inputs: Mapping[str, Any] = step.get("inputs") or {}
    env_names = [name for name in values if _is_env_var(definitions, name)]
    textual = {name: v for name, v in values.items() if name not in env_names}
    # One pass over all placeholders, so a pasted value is never itself re-read
    # as a placeholder (the Go agent's map-order loop could do that).
    combined = (
        re.compile(r"\{\{\s*(" + "|".join(re.escape(n) for n in textual) + r")\s*\}\}")
        if textual
        else None
    )

    def paste(text: str) -> str:
        if combined is None:
            return text
        return combined.sub(lambda m: textual[m.group(1)], text)

    commands = inputs.get("runCommand")
    if isinstance(commands, str):
        commands = [commands]
    if not isinstance(commands, list) or not all(isinstance(c, str) for c in commands):
        raise InvalidDocument(f"step {step_name!r}: runCommand must be a list of strings")
    script = "\n".join(paste(line) for line in commands) + "\n"
    for name in env_names:
        if _placeholder(name).search(script):
            _LOGGER.warning(
                "ENV_VAR parameter %s also appears as a double-brace placeholder in step %s; "
                'left unfilled (read it as "$SSM_%s")',
                name,
                step_name,
                name,
            )
    timeout_raw = inputs.get("timeoutSeconds")
    timeout_s = (
        float(paste(str(timeout_raw))) if timeout_raw is not None else DEFAULT_STEP_TIMEOUT_S
    )
    working_directory = inputs.get("workingDirectory")
    return RenderedStep(
        name=step_name,
        script=script,
        env={f"SSM_{name}": values[name] for name in env_names},
        timeout_s=timeout_s,
        working_directory=paste(str(working_directory)) if working_directory else None,
    )


def render_step(
    step: Mapping[str, Any],
    values: Mapping[str, str],
    definitions: Mapping[str, Any] | None = None,
) -> tuple[str, dict[str, str]]:
    """The script text and the ``SSM_*`` environment for one ``aws:runShellScript`` step.

    ``definitions`` is the document's ``parameters`` section: a parameter with
    ``interpolationType: ENV_VAR`` goes to the environment only; any other is
    pasted into the script text where its double-brace placeholder stands.
    Without ``definitions`` every value is pasted (the pre-ENV_VAR behaviour).
    """
    rendered = prepare_step(step, values, definitions or {})
    return rendered.script, rendered.env
