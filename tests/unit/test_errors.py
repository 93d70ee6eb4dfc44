"""worker/errors.py's drawing of the exception tree is the tree: every class, its base, its home.

The drawing is what a newcomer reads first, so it must not drift: a class
added anywhere in worker/ without being drawn, drawn under the wrong base or
in the wrong module, or drawn but defined nowhere fails here. So does a class
that nothing raises (and that is no base of one raised): dead error types
make a reader look for failures that cannot happen.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import pkgutil
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

import worker
from worker import errors

REPO = Path(__file__).resolve().parents[2]

#: A separate program (the example processing command), not the worker: it keeps its own errors.
STANDALONE = "worker.examples"

# One drawn line: the tree's guides (4 columns per level), a class name, then an optional
# "[module]" relative to worker. Continuation lines start with a guide or a space, never a name.
_LINE = re.compile(r"(?P<guides>(?:[│ ]   )*(?:[├└]── )?)(?P<name>[A-Z]\w*)"
                   r"(?:\s+\[(?P<home>[\w.]+)\])?(?:\s|$)")


def parse_tree(doc: str) -> dict[str, tuple[str | None, str]]:
    """``{class name: (drawn base or None for a root, module it is drawn in)}`` from a docstring."""
    block = doc.split("::\n", 1)[1]
    drawn: dict[str, tuple[str | None, str]] = {}
    parents: list[str] = []
    for raw in block.splitlines():
        if raw and not raw.startswith("    "):
            break  # the literal block ends at the first unindented line
        match = _LINE.match(raw[4:])
        if not match:
            continue
        depth = len(match["guides"]) // 4
        if depth > len(parents):
            raise ValueError(f"{match['name']} is drawn deeper than its parent: {raw!r}")
        del parents[depth:]
        name = match["name"]
        if name in drawn:
            raise ValueError(f"{name} is drawn twice")
        home = f"worker.{match['home']}" if match["home"] else "worker.errors"
        drawn[name] = (parents[-1] if parents else None, home)
        parents.append(name)
    return drawn


def _worker_modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(worker.__path__, "worker.")]
    return ["worker", *sorted(n for n in names
                              if not n.endswith(".__main__") and not n.startswith(STANDALONE))]


def defined_exceptions() -> dict[str, tuple[str, str]]:
    """``{class name: (base name, module)}`` of every exception class defined in worker/."""
    found: dict[str, tuple[str, str]] = {}
    for name in _worker_modules():
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (isinstance(value, type) and issubclass(value, BaseException)
                    and value.__module__ == name):
                assert len(value.__bases__) == 1, f"{value.__qualname__}: draw one base only"
                assert value.__name__ not in found, f"{value.__name__} is defined twice"
                found[value.__name__] = (value.__bases__[0].__name__, name)
    return found


def raised_names(sources: Iterable[str]) -> set[str]:
    """Names in ``raise X`` / ``raise X(...)`` / ``raise mod.X(...)`` statements of the sources,
    and in ``return X(...)``: an adapter's translation returns the error ``aws_errors.translated``
    raises."""
    names = set()
    for source in sources:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Return) and isinstance(node.value, ast.Call):
                target = node.value.func
            elif isinstance(node, ast.Raise) and node.exc is not None:
                target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            else:
                continue
            if isinstance(target, ast.Name):
                names.add(target.id)
            elif isinstance(target, ast.Attribute):
                names.add(target.attr)
    return names


def never_raised(defined: Mapping[str, tuple[str, str]], raised: set[str]) -> list[str]:
    """Defined classes that are neither raised nor a base of one that is."""
    needed = set()
    for name in raised & defined.keys():
        while name in defined:  # the class and its bases up to the built-in root
            needed.add(name)
            name = defined[name][0]
    return sorted(defined.keys() - needed)


def _worker_sources() -> list[str]:
    standalone = REPO.joinpath(*STANDALONE.split("."))
    return [p.read_text(encoding="utf-8") for p in sorted((REPO / "worker").rglob("*.py"))
            if standalone not in p.parents]


# -- the parser reads a drawing as it is drawn ---------------------------------------------------

SAMPLE = """Errors.

::

    Exception
    ├── Base                 the base
    │   ├── Child            [sub.mod] a child, with
    │   │                    a second line
    │   │   └── Grand        a grandchild
    │   └── Second           a sibling
    └── ValueError
        └── Odd              [other] Not a name: this line is a class

Prose after the block. Ignored
"""


def test_the_parser_reads_bases_and_homes() -> None:
    assert parse_tree(SAMPLE) == {
        "Exception": (None, "worker.errors"),
        "Base": ("Exception", "worker.errors"),
        "Child": ("Base", "worker.sub.mod"),
        "Grand": ("Child", "worker.errors"),
        "Second": ("Base", "worker.errors"),
        "ValueError": ("Exception", "worker.errors"),
        "Odd": ("ValueError", "worker.other"),
    }


def test_the_parser_refuses_a_broken_drawing() -> None:
    with pytest.raises(ValueError, match="drawn twice"):
        parse_tree("::\n\n    Exception\n    ├── A\n    └── A\n")
    with pytest.raises(ValueError, match="deeper than its parent"):
        parse_tree("::\n\n    Exception\n    │   ├── A\n")


# -- the real tree -----------------------------------------------------------------------------------

def test_the_drawing_lists_every_exception_class_with_its_base_and_module() -> None:
    assert errors.__doc__ is not None
    drawn = parse_tree(errors.__doc__)
    roots = {name for name, (base, _) in drawn.items() if base is None}
    builtin = {name for name in drawn if isinstance(getattr(builtins, name, None), type)}
    # Built-in exceptions are drawn as the places where our classes hang, with no home of ours.
    assert roots <= builtin
    ours = {name: entry for name, entry in drawn.items() if name not in builtin}
    assert ours == defined_exceptions()


def test_a_class_nothing_raises_is_found() -> None:
    defined = {"Base": ("Exception", "m"), "Used": ("Base", "m"), "Dead": ("Base", "m"),
               "Other": ("Exception", "m")}
    raised = raised_names(["def f():\n    raise Used('x')\n",
                           "import m\ndef g():\n    raise m.Other\n",
                           "def h():\n    raise\n"])
    assert raised == {"Used", "Other"}
    assert never_raised(defined, raised) == ["Dead"]
    assert raised_names(["def translate(what, exc):\n    return Dead(what)\n"]) == {"Dead"}


def test_every_exception_class_is_raised_or_is_a_base_of_one_that_is() -> None:
    assert never_raised(defined_exceptions(), raised_names(_worker_sources())) == []
