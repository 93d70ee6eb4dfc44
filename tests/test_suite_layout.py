"""The suite's own layout: shared helpers live in tests/support/, and no test module imports another.

A helper defined in a test module and imported elsewhere couples the two files
(moving or deleting a test breaks an unrelated one) and hides where the helper
lives. Imports are read with ``ast``, so an import inside a function counts too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.support.paths import REPO

#: The only part of the tests package other modules may import.
SUPPORT = "tests.support"


def imported_modules(source: str) -> Iterator[tuple[int, str]]:
    """(line, module) of every import in ``source``, at any depth (``from tests import x``: tests.x)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "tests":  # the names are modules of the package
                for alias in node.names:
                    yield node.lineno, f"tests.{alias.name}"
            else:
                yield node.lineno, node.module


def forbidden(module: str) -> bool:
    """An import of the tests package that does not go through tests.support."""
    if module != "tests" and not module.startswith("tests."):
        return False
    return not (module == SUPPORT or module.startswith(SUPPORT + "."))


def cross_imports(paths: list[Path]) -> list[str]:
    found = []
    for path in paths:
        for line, module in imported_modules(path.read_text(encoding="utf-8")):
            if forbidden(module):
                found.append(f"{path.relative_to(REPO)}:{line}: {module}")
    return sorted(set(found))


def python_files() -> list[Path]:
    return sorted([*(REPO / "tests").rglob("*.py"), *(REPO / "bench").rglob("*.py")])


def test_the_scan_finds_an_import_of_another_test_module() -> None:
    source = (
        "from tests.support.waiting import wait_until\n"
        "from tests import support\n"
        "import os\n"
        "def helper():\n"
        "    from tests.integration.test_daemon import daemon\n"
        "from tests import waiting\n"
        "import tests.unit.runner.test_pipeline\n"
    )
    bad = sorted(m for _, m in imported_modules(source) if forbidden(m))
    assert bad == ["tests.integration.test_daemon", "tests.unit.runner.test_pipeline", "tests.waiting"]


def test_no_test_module_imports_another_test_module() -> None:
    assert cross_imports(python_files()) == [], "move shared helpers to tests/support/"


def test_every_support_module_says_what_it_is() -> None:
    modules = sorted((REPO / "tests" / "support").glob("*.py"))
    assert modules, "tests/support/ is missing"
    undocumented = [path.name for path in modules
                    if not (ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or "").strip()]
    assert undocumented == []


def test_the_support_package_lists_every_module() -> None:
    """tests/support/__init__.py's map is where a newcomer looks first: it names each module."""
    support = REPO / "tests" / "support"
    listed = {line.split()[0] for line in (ast.get_docstring(ast.parse(
        (support / "__init__.py").read_text(encoding="utf-8"))) or "").splitlines()
        if line.startswith("    ") and line.split()}
    assert listed == {path.stem for path in support.glob("*.py") if path.stem != "__init__"}
