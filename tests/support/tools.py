"""The tools the static gates run (mypy, ruff, cfn-lint, checkov, shellcheck, systemd-analyze):
found, or the test skips -- and fails under ``CI=true``.

A developer's machine may lack one (``make test`` installs them all; a bare
``pip install -e .`` does not), and a skip says so. CI installs every one of
them (the test extra, ``.venv-checkov``, the distribution's systemd), so there
a missing tool is a broken install, and a skip would let a gate that never ran
pass as green.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """Whether this run is CI's (``CI=true``, as GitHub Actions, GitLab CI and .ci/run set it)."""
    return os.environ.get("CI", "").lower() == "true"


def missing(what: str) -> NoReturn:
    """Skip the test because ``what`` is missing; fail it instead under ``CI=true``."""
    if in_ci():
        pytest.fail(f"CI=true but {what} (CI installs it: a broken install, not a reason to skip)",
                    pytrace=False)
    pytest.skip(what)


def require_tool(name: str, *, path: Path | None = None, hint: str = "") -> str:
    """The path of the executable ``name``: ``path`` if given, else on PATH or beside this
    interpreter (the virtualenv's bin/, where the test extra installs ruff and shellcheck).

    Skips when it is not there, or fails under ``CI=true`` (``missing``); ``hint`` says how
    to install it.
    """
    if path is not None:
        found: str | None = str(path) if path.is_file() and os.access(path, os.X_OK) else None
    else:
        beside = Path(sys.executable).parent / name
        found = shutil.which(name) or (str(beside) if beside.is_file() else None)
    if found is None:
        where = f" at {path}" if path is not None else ""
        missing(f"{name} is not installed{where}" + (f" ({hint})" if hint else ""))
    return found


def require_module(name: str, *, hint: str = "") -> ModuleType:
    """The module ``name`` (a tool run as a library: mypy, cfn-lint), imported; skips when it is
    not installed, or fails under ``CI=true``. Not for the project's own modules: those must import."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (name == exc.name or name.startswith(exc.name + ".")):
            raise  # installed, but broken (one of its own imports is missing): an error, not a skip
        missing(f"{name} is not installed" + (f" ({hint})" if hint else ""))
