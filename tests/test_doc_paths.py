"""Every repository path the operator documentation names exists.

docs/, README.md and the comments under deploy/ pointed at files that were
never in the repository (deploy/systemd/install.sh, ARCHITECTURE.md). The scan
is simple on purpose: relative paths with a directory part and a file
extension, and bare *.md names; host paths (/etc/..., absolute) and templated
ones (<stack>, $VAR, *, {…}) and run-time directories (.venv/) are not
repository paths.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: File kinds whose names the documentation refers to.
_EXTENSIONS = ("md", "sh", "service", "timer", "conf", "py", "yaml", "yml", "cfg", "toml")
_PATH = re.compile(
    r"(?<![\w/.$<>{}*~-])((?:\.\./)?(?:[\w.-]+/)+[\w.-]+\.(?:" + "|".join(_EXTENSIONS) + r"))(?![\w/*<>{}-])"
)
_BARE_MD = re.compile(r"(?<![\w/.-])([A-Z][\w-]*\.md)\b")


def _texts() -> Iterator[tuple[Path, str]]:
    """(file, text to scan): whole Markdown files, the comments of deploy/ files."""
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        yield path, path.read_text(encoding="utf-8")
    for path in sorted((REPO / "deploy").rglob("*")):
        if path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()
            yield path, "\n".join(line for line in lines if line.lstrip().startswith("#"))


def _exists(name: str, where: Path) -> bool:
    return (REPO / name).exists() or (where.parent / name).exists() or (REPO / "docs" / name).exists()


def missing_paths() -> list[str]:
    found = []
    for path, text in _texts():
        names = set(_PATH.findall(text)) | set(_BARE_MD.findall(text))
        for name in sorted(names):
            if name.startswith(".") and not name.startswith("../"):
                continue  # made at run time (.processor-local/, .venv/), not shipped
            if name.startswith(("/", "~")) or not _exists(name, path):
                found.append(f"{path.relative_to(REPO)}: {name}")
    return found


def test_the_scan_finds_a_missing_path(tmp_path: Path) -> None:
    text = "Install with deploy/systemd/install.sh (see ARCHITECTURE.md); docs/DEPLOY.md is real."
    assert set(_PATH.findall(text)) == {"deploy/systemd/install.sh", "docs/DEPLOY.md"}
    assert set(_BARE_MD.findall(text)) == {"ARCHITECTURE.md"}
    assert not _exists("deploy/systemd/install.sh", REPO / "README.md")
    assert _exists("docs/DEPLOY.md", REPO / "README.md")
    # Host paths and templated names are not repository paths.
    assert _PATH.findall("/etc/processor/processor.toml s3://b/<stack>/x.whl $VENV/bin/a.py") == []


def test_every_repository_path_in_the_docs_exists() -> None:
    assert missing_paths() == []


#: ``path.py::Name`` or ``path.py::Class.method``: a symbol the docs point a reader to.
_SYMBOL = re.compile(r"((?:[\w.-]+/)+[\w.-]+\.py)::([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*)")


def _defines(tree: ast.Module, dotted: str) -> bool:
    """Whether ``dotted`` (``f``, ``C``, ``C.m``, ``C.Inner.m``) is defined in the module."""
    scope: list[ast.stmt] = list(tree.body)
    for part in dotted.split("."):
        found = None
        for node in scope:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == part:
                found = node
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == part for t in targets):
                    found = node
        if found is None:
            return False
        scope = list(found.body) if isinstance(found, ast.ClassDef) else []
    return True


def missing_symbols() -> list[str]:
    found = []
    for path, text in _texts():
        for name, dotted in sorted(set(_SYMBOL.findall(text))):
            source = REPO / name
            if not source.is_file():
                continue  # reported by missing_paths
            if not _defines(ast.parse(source.read_text(encoding="utf-8")), dotted):
                found.append(f"{path.relative_to(REPO)}: {name}::{dotted}")
    return found


def test_the_symbol_scan_finds_a_missing_name() -> None:
    tree = ast.parse("X = 1\nclass C:\n    y: int = 2\n    def m(self): ...\ndef f(): ...\n")
    assert all(_defines(tree, d) for d in ("X", "C", "C.y", "C.m", "f"))
    assert not any(_defines(tree, d) for d in ("g", "C.n", "f.x", "X.y"))
    text = "see worker/state/ledger.py::Ledger.enqueue and tests/unit/jobs/test_job.py::test_x[a]"
    assert _SYMBOL.findall(text) == [
        ("worker/state/ledger.py", "Ledger.enqueue"), ("tests/unit/jobs/test_job.py", "test_x")]


def test_every_symbol_in_the_docs_is_defined() -> None:
    """A module map that names ``file.py::function`` goes stale quietly when code moves."""
    assert missing_symbols() == []
