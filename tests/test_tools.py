"""The static gates cannot pass by skipping in CI: tests/support/tools.py skips, or fails under CI=true."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from tests.support.paths import REPO
from tests.support.tools import require_module, require_tool

#: A tool and a module no machine has.
ABSENT = "processor_no_such_tool_7f3a"


def test_a_missing_tool_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=f"CI=true but {ABSENT} is not installed"):
        require_tool(ABSENT, hint="install it")


def test_a_missing_tool_at_a_given_path_fails_under_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.setenv("CI", "TRUE")
    with pytest.raises(pytest.fail.Exception, match=f"checkov is not installed at {tmp_path}"):
        require_tool("checkov", path=tmp_path / "bin" / "checkov")


def test_a_missing_module_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=f"CI=true but {ABSENT}.api is not installed"):
        require_module(f"{ABSENT}.api")


@pytest.mark.parametrize("ci", [None, "", "false", "1"])
def test_a_missing_tool_skips_outside_ci(monkeypatch: pytest.MonkeyPatch, ci: str | None) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match=f"{ABSENT} is not installed"):
        require_tool(ABSENT)
    with pytest.raises(pytest.skip.Exception, match=f"{ABSENT} is not installed"):
        require_module(ABSENT)


def test_a_present_tool_or_module_is_returned_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert Path(require_tool("sh")).is_file()
    interpreter = Path(sys.executable)
    assert require_tool(interpreter.name, path=interpreter) == str(interpreter)
    assert require_module("json.decoder").__name__ == "json.decoder"


def test_a_broken_module_is_an_error_not_a_skip(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Installed, but one of its own imports is missing: that is a bug to see, in CI or not.
    (tmp_path / "brokentool.py").write_text(f"import {ABSENT}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(ModuleNotFoundError, match=ABSENT):
        require_module("brokentool")


def test_no_test_skips_on_a_missing_tool_by_itself() -> None:
    """Every tool and module check goes through tests/support/tools.py (so CI=true fails it):
    no ``pytest.importorskip`` anywhere, and our own modules are imported, never skipped."""
    calls = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        name = str(path.relative_to(REPO))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "importorskip":
                calls.append(f"{name}:{node.lineno}")
    assert calls == []
