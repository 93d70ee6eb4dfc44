"""Configuration values: TOML and environment text -> typed section fields.

worker.config.settings defines the sections and what a valid whole is; this module only
turns one key's value into its field's type (``_coerce``), reads
``PROCESSOR_<SECTION>_<KEY>`` overrides (JSON for lists and tables), and names the
key (and the variable it came from) in every error. Stdlib only, like
worker.config.settings: ``processorctl submit`` loads it.
"""

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from worker.errors import ConfigError


class EnvironmentNames(tuple[str, ...]):
    """processing.pass_environment: names taken from the daemon's environment."""

    __slots__ = ()


class Environment(tuple[tuple[str, str], ...]):
    """processing.environment: (NAME, value) pairs, a tuple so Settings stay hashable."""

    __slots__ = ()


#: The only type of list a section holds (processing.command).
ARGV = tuple[str, ...]


def apply_env(
    merged: dict[str, dict[str, Any]], environ: Mapping[str, str], *, prefix: str, skip: str
) -> None:
    """Put ``<prefix><SECTION>_<KEY>`` variables into ``merged`` (sections are its keys)."""
    for var, value in environ.items():
        if not var.startswith(prefix) or var == skip:
            continue
        rest = var[len(prefix):].lower()
        for section in merged:
            if rest.startswith(section + "_"):
                merged[section][rest[len(section) + 1:]] = EnvValue(var, value)
                break


class EnvValue(str):
    """A string from the environment, remembering its variable for error messages."""

    variable: str

    def __new__(cls, variable: str, value: str) -> Self:
        obj = super().__new__(cls, value)
        obj.variable = variable
        return obj


def build_section(name: str, cls: type[Any], values: Mapping[str, Any], source: str) -> Any:
    """The section ``cls`` from its values: unknown, missing and mistyped keys are a ConfigError."""
    known: dict[str, object] = cls.__annotations__
    for key in values:
        if key not in known:
            where = values[key].variable if isinstance(values[key], EnvValue) else source
            raise ConfigError(
                f"{where}: unknown key {name}.{key} (known in [{name}]: {', '.join(known)})",
                key=f"{name}.{key}",
            )
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        kwargs[key] = _coerce(f"{name}.{key}", known[key], value, source)
    for key in known:
        if key not in kwargs and key not in cls._field_defaults:
            raise ConfigError(f"{source}: missing required key {name}.{key}", key=f"{name}.{key}")
    return cls(**kwargs)


def _coerce(key: str, kind: object, value: Any, source: str) -> Any:
    where = value.variable if isinstance(value, EnvValue) else source
    if isinstance(value, EnvValue):
        value = _parse_env(key, kind, str(value), where)

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{where}: {key} must be {expected}, got {value!r}", key=key)

    if kind is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if kind is Path:
        if not isinstance(value, str) or not value:
            raise bad("a non-empty path string")
        return Path(value)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind is EnvironmentNames:
        if not isinstance(value, list) or not all(isinstance(part, str) for part in value):
            raise bad("an array of strings")
        return EnvironmentNames(value)
    if kind is Environment:
        if not isinstance(value, Mapping):
            raise bad('a table of NAME = "value"')
        for name, text in value.items():
            if not isinstance(text, str):
                raise ConfigError(f"{where}: {key}.{name} must be a string, got {text!r}", key=key)
        return Environment(value.items())
    if kind == ARGV:
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(part, str) for part in value)
        ):
            raise bad("a non-empty array of strings")
        return tuple(value)
    raise AssertionError(f"unhandled config type {kind} for {key}")  # pragma: no cover


def _parse_env(key: str, kind: object, text: str, where: str) -> Any:
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{where}: {key} must be an integer, got {text!r}", key=key) from None
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{where}: {key} must be true or false, got {text!r}", key=key)
    if kind == ARGV or kind is EnvironmentNames or kind is Environment:
        # Parsed here, checked like the file's value by _coerce.
        shape = "object" if kind is Environment else "array"
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise ConfigError(
                f"{where}: {key} must be a JSON {shape} of strings, got {text!r}", key=key
            ) from None
    return text
