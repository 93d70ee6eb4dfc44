"""The layering contract: which modules of worker/, lambda_trigger/ and processor_shared/ may import which.

The import graph is read from the source with ``ast`` (nothing is imported, so
no rule depends on what happens to be installed). Each import is an edge of
one of three kinds:

- ``module``: runs when the importing module is imported -- top level, class
  bodies, ``try``/``if`` blocks, the ``else`` of ``if TYPE_CHECKING``;
- ``deferred``: inside a function body -- runs only when the function does.
  It is how a module puts off a costly dependency until it is needed
  (processorctl's other commands, the reconcile command's boto3);
- ``typing``: under ``if TYPE_CHECKING:`` -- never runs.

Import-time rules (no cycle, the submit path) follow ``module`` edges only: a
deferred or typing-only import can neither form an import-time cycle nor load
anything on start. Direction rules (storage and ledger below the pipeline,
boto3 only in adapters, the Lambda apart from the worker, the shared
``processor_shared.layout`` stdlib only) follow every edge: a wrong-way dependency is
wrong even when it is deferred or only for mypy.

Every rule is a function over a ``Graph`` and is first shown to fail on a
small synthetic graph built by the same parser, then run on the real one.
"""

from __future__ import annotations

import ast
import functools
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.submit_path import SUBMIT_MUST_NOT_IMPORT

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("worker", "lambda_trigger", "processor_shared")

#: Shipped in both the wheel and the Lambda package, imported by both sides: stdlib only.
SHARED = ("processor_shared",)


#: The AWS SDK: only the adapters below may import it.
AWS_SDK = frozenset({"boto3", "botocore", "s3transfer"})

#: The adapters: each turns the SDK's errors into ours at the edge, so nothing else knows botocore.
ADAPTERS = frozenset({
    "worker.storage.s3",            # S3: objects in and out (StorageError)
    "worker.aws.errors",            # how the adapters above read botocore's errors
    "worker.fleet.sqs",             # SQS: the fleet's work queue (QueueError)
    "worker.fleet.dynamo",          # DynamoDB: the fleet's job records (RecordError)
    "worker.fleet.autoscaling",     # Auto Scaling: scale-in protection (ScalingError)
    "worker.telemetry.cloudwatch",  # CloudWatch Logs, via watchtower
    "worker.local.emulator",        # `processor local`: creates the emulator's resources
    "lambda_trigger.s3",            # the Lambda's bucket listings (ListingError)
    "lambda_trigger.sqs",           # the Lambda's queue messages (QueueSendFailure)
    "lambda_trigger.ssm",           # the Lambda's SendCommand (SendError)
})

#: The low layers and what they must never reach: they are used by the pipeline and the daemon.
LOW_LAYERS = ("worker.storage", "worker.state.ledger", "worker.state.queue", "worker.state.queries",
              "worker.state.schema")
HIGH_LAYERS = frozenset({"worker.runner.pipeline", "worker.daemon.lifecycle", "worker.fleet.consumer"})

#: The packages from the bottom up: a module may import its own package and those on its floor
#: or below, never one above (every kind of edge: a wrong-way dependency is wrong even when
#: deferred or only for mypy). Read from the top it is the data flow: processorctl and the CLI
#: start the daemon, which fills slots from the fleet's queue or the ledger, which run the
#: runner's pipeline over the state volume and the object store, on the job model and the config.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("processor_shared", "worker", "worker.errors", "worker.exitcodes"),  # "worker": __version__ only
    ("worker.config",),
    ("worker.jobs",),
    ("worker.aws",),
    ("worker.state", "worker.storage"),
    ("worker.telemetry",),
    ("worker.runner",),
    ("worker.fleet",),
    ("worker.daemon",),
    ("worker.ctl",),
    ("worker.local", "worker.cli", "worker.__main__"),
)

KINDS = ("module", "deferred", "typing")


@dataclass(frozen=True)
class Edge:
    target: str  # dotted name: one of our modules, or what an external import names
    kind: str  # one of KINDS
    line: int


@dataclass
class Graph:
    edges: dict[str, list[Edge]] = field(default_factory=dict)  # every module of ours, sorted
    packages: frozenset[str] = frozenset()  # modules that are packages (an __init__.py)

    def targets(self, module: str, kinds: Iterable[str] = KINDS) -> set[str]:
        wanted = set(kinds)
        return {e.target for e in self.edges[module] if e.kind in wanted}

    def internal(self, name: str) -> bool:
        return name in self.edges


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module) -> list[tuple[ast.Import | ast.ImportFrom, str]]:
    """Every import statement of a module with its kind (see the module docstring)."""
    found: list[tuple[ast.Import | ast.ImportFrom, str]] = []

    def visit(nodes: Iterable[ast.AST], kind: str) -> None:
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append((node, kind))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(ast.iter_child_nodes(node), "typing" if kind == "typing" else "deferred")
            elif isinstance(node, ast.If) and _is_type_checking(node.test):
                visit(node.body, "typing")
                visit(node.orelse, kind)
            else:
                visit(ast.iter_child_nodes(node), kind)

    visit(tree.body, "module")
    return found


@functools.cache
def _imports_of(source: str) -> list[tuple[ast.Import | ast.ImportFrom, str]]:
    return _imports(ast.parse(source))  # cached: the mutation tests re-read the same sources


def build_graph(sources: Mapping[str, str], packages: Iterable[str] = ()) -> Graph:
    """The import graph of ``{dotted module name: source}``; ``packages`` are the __init__ ones."""
    pkgs = frozenset(packages)
    graph = Graph(edges={name: [] for name in sorted(sources)}, packages=pkgs)
    for name, source in sources.items():
        for node, kind in _imports_of(source):
            for target in _targets(node, name, name in pkgs, graph):
                graph.edges[name].append(Edge(target, kind, node.lineno))
    return graph


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool,
             graph: Graph) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from the package that holds this module
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[:len(parts) - (node.level - 1)]
        base = ".".join([*parts, base] if base else parts)
    # `from pkg import name` imports the submodule pkg.name when there is one, else pkg itself.
    submodules = [f"{base}.{a.name}" for a in node.names if graph.internal(f"{base}.{a.name}")]
    if len(submodules) < len(node.names):
        submodules.append(base)
    return submodules


def read_sources(root: Path = REPO) -> tuple[dict[str, str], list[str]]:
    """``{dotted module name: source}`` of our packages, and which of them are packages."""
    sources: dict[str, str] = {}
    packages: list[str] = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
                packages.append(".".join(parts))
            sources[".".join(parts)] = path.read_text(encoding="utf-8")
    return sources, packages


# -- the rules: each returns what breaks it, empty when it holds ---------------------------------

def _ours(graph: Graph, target: str) -> bool:
    return target.split(".")[0] in {m.split(".")[0] for m in graph.edges}


def unresolved(graph: Graph) -> list[str]:
    """Imports of our own packages that name no module: a stale name, or an edge the checker misses."""
    return sorted(f"{m}:{e.line} imports {e.target}" for m, edges in graph.edges.items()
                  for e in edges if _ours(graph, e.target) and not graph.internal(e.target))


def cycles(graph: Graph) -> list[list[str]]:
    """Import-time cycles: strongly connected components over ``module`` edges (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.targets(node, ["module"])):
            if not graph.internal(target):
                continue
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.targets(node, ["module"]):
                found.append(sorted(component))

    for node in graph.edges:
        if node not in index:
            connect(node)
    return found


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def loaded_by(graph: Graph, root: str) -> dict[str, str]:
    """What importing ``root`` loads (module edges), each with the module that imports it.

    Importing ``a.b.c`` also runs ``a/__init__`` and ``a/b/__init__``, so parent packages count.
    """
    loaded: dict[str, str] = {root: ""}
    todo = [root]
    while todo:
        module = todo.pop()
        for target in [*_ancestors(module), *sorted(graph.targets(module, ["module"]))]:
            if target not in loaded:
                loaded[target] = module
                if graph.internal(target):
                    todo.append(target)
    return loaded


def _names(target: str, names: Iterable[str]) -> bool:
    return any(target == n or target.startswith(n + ".") for n in names)


def submit_path_violations(graph: Graph, root: str, forbidden: Iterable[str]) -> list[str]:
    banned = list(forbidden)
    return sorted(f"{by} loads {target}" for target, by in loaded_by(graph, root).items()
                  if by and _names(target, banned))


def wrong_way(graph: Graph, low: Iterable[str], high: Iterable[str]) -> list[str]:
    """Paths (over every kind of edge) from a low-layer module to a high-layer one."""
    lows, highs = list(low), set(high)
    found = []
    for start in (m for m in graph.edges if _names(m, lows)):
        via: dict[str, str] = {start: ""}
        todo = [start]
        while todo:
            module = todo.pop()
            for target in sorted(graph.targets(module)):
                if graph.internal(target) and target not in via:
                    via[target] = module
                    todo.append(target)
        for reached in sorted(highs & via.keys()):
            path = [reached]
            while via[path[-1]]:
                path.append(via[path[-1]])
            found.append(" -> ".join(reversed(path)))
    return sorted(found)


def importers_of(graph: Graph, names: Iterable[str], among: Iterable[str] = PACKAGES) -> set[str]:
    """Our modules under ``among`` that import any of ``names`` directly, by any kind of edge."""
    wanted, scope = list(names), list(among)
    return {m for m in graph.edges if _names(m, scope)
            and any(_names(t, wanted) for t in graph.targets(m))}


def leaving(graph: Graph, *packages: str) -> list[str]:
    """Imports from modules in ``packages`` of our modules outside them all, by any kind of edge."""
    return sorted(f"{m} imports {t}" for m in graph.edges if _names(m, packages)
                  for t in graph.targets(m) if _ours(graph, t) and not _names(t, packages))


def beyond_stdlib(graph: Graph, packages: Iterable[str]) -> list[str]:
    """Imports from modules in ``packages`` of anything but the standard library and themselves."""
    own = list(packages)
    return sorted(f"{m} imports {t}" for m in graph.edges if _names(m, own)
                  for t in graph.targets(m)
                  if not _names(t, own)
                  and (_ours(graph, t) or t.split(".")[0] not in sys.stdlib_module_names))


def floor_of(module: str, floors: Sequence[Sequence[str]]) -> tuple[int, str] | None:
    """(floor, package) of ``module``: the longest package name of ``floors`` it is in, or None.

    A bare top-level name (``worker``) stands for that module alone, not for its subpackages.
    """
    best: tuple[int, str] | None = None
    for level, names in enumerate(floors):
        for name in names:
            inside = module == name or ("." in name and module.startswith(name + "."))
            if inside and (best is None or len(name) > len(best[1])):
                best = (level, name)
    return best


def upward(graph: Graph, floors: Sequence[Sequence[str]]) -> list[str]:
    """Imports (every kind) from a package to one on a higher floor."""
    found = []
    for module in graph.edges:
        here = floor_of(module, floors)
        if here is None:
            continue
        for target in sorted(graph.targets(module)):
            there = floor_of(target, floors) if graph.internal(target) else None
            if there is not None and there[0] > here[0]:
                found.append(f"{module} ({here[1]}) imports {target} ({there[1]}, a floor above)")
    return sorted(found)


# -- the rules fail on broken graphs ----------------------------------------------------------------

def _toy(**sources: str) -> Graph:
    """A graph of ``pkg.<name>`` modules; ``pkg`` is a package (``__init__``)."""
    return build_graph({"pkg": "", **{f"pkg.{k}": v for k, v in sources.items()}}, ["pkg"])


def test_the_parser_tells_the_three_kinds_apart() -> None:
    graph = _toy(a="import os\nfrom typing import TYPE_CHECKING\n"
                   "if TYPE_CHECKING:\n    from pkg import b\nelse:\n    import json\n"
                   "class C:\n    from pkg import c\n"
                   "def f():\n    from pkg.d import x\n    return x\n",
                 b="", c="", d="x = 1\n")
    assert graph.targets("pkg.a", ["module"]) == {"os", "typing", "json", "pkg.c"}
    assert graph.targets("pkg.a", ["typing"]) == {"pkg.b"}
    assert graph.targets("pkg.a", ["deferred"]) == {"pkg.d"}


def test_the_parser_resolves_relative_and_from_package_imports() -> None:
    graph = build_graph({"pkg": "from . import a\n", "pkg.a": "from .b import x\nfrom pkg import y\n",
                         "pkg.b": ""}, ["pkg"])
    assert graph.targets("pkg") == {"pkg.a"}
    assert graph.targets("pkg.a") == {"pkg.b", "pkg"}  # y is no submodule: it comes from pkg
    assert unresolved(_toy(a="import pkg.gone\n")) == ["pkg.a:1 imports pkg.gone"]


def test_a_cycle_is_found_and_a_deferred_import_breaks_it() -> None:
    assert cycles(_toy(a="import pkg.b\n", b="import pkg.c\n", c="from pkg import a\n")) == [
        ["pkg.a", "pkg.b", "pkg.c"]]
    assert cycles(_toy(a="import pkg.a\n")) == [["pkg.a"]]
    assert cycles(_toy(a="import pkg.b\n", b="def f():\n    import pkg.a\n")) == []


def test_the_submit_path_sees_what_it_loads_through_modules_and_packages() -> None:
    graph = build_graph({
        "pkg": "", "pkg.cli": "import pkg.sub.leaf\ndef f():\n    import boto3\n",
        "pkg.sub": "import dataclasses\n", "pkg.sub.leaf": "import pkg.heavy\n",
        "pkg.heavy": "import structlog.stdlib\n"}, ["pkg", "pkg.sub"])
    assert submit_path_violations(graph, "pkg.cli", ["dataclasses", "structlog", "boto3"]) == [
        "pkg.heavy loads structlog.stdlib", "pkg.sub loads dataclasses"]
    assert submit_path_violations(graph, "pkg.cli", ["pkg.heavy"]) == ["pkg.sub.leaf loads pkg.heavy"]


def test_a_wrong_way_import_is_found_whatever_its_kind() -> None:
    graph = _toy(store="def f():\n    import pkg.util\n", util="import pkg.pipeline\n", pipeline="",
                 ledger="from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.daemon\n",
                 daemon="")
    assert wrong_way(graph, ["pkg.store", "pkg.ledger"], ["pkg.pipeline", "pkg.daemon"]) == [
        "pkg.ledger -> pkg.daemon", "pkg.store -> pkg.util -> pkg.pipeline"]


def test_an_import_leaving_a_package_is_found() -> None:
    graph = build_graph({"pkg": "", "pkg.lam": "", "pkg.lam.a": "import pkg.lam.b\nimport json\n",
                         "pkg.lam.b": "def f():\n    from pkg import core\n", "pkg.core": ""},
                        ["pkg", "pkg.lam"])
    assert leaving(graph, "pkg.lam") == ["pkg.lam.b imports pkg.core"]


def test_the_shared_package_may_be_imported_but_imports_only_the_stdlib() -> None:
    graph = build_graph({"lam": "", "lam.a": "import shared\nimport json\n", "shared": "import hashlib\n",
                         "core": "", "core.b": "import shared\n"}, ["lam", "shared", "core"])
    assert leaving(graph, "lam", "shared") == [] and leaving(graph, "lam") == ["lam.a imports shared"]
    assert beyond_stdlib(graph, ["shared"]) == []
    broken = build_graph({"shared": "import yaml\ndef f():\n    from core import b\n", "core": "",
                          "core.b": ""}, ["shared", "core"])
    assert beyond_stdlib(broken, ["shared"]) == ["shared imports core.b", "shared imports yaml"]


def test_an_sdk_import_outside_the_adapters_is_found() -> None:
    graph = _toy(s3="import boto3\n", util="def f():\n    from botocore.config import Config\n",
                 pure="import json\n")
    assert importers_of(graph, AWS_SDK, ["pkg"]) == {"pkg.s3", "pkg.util"}


def test_an_import_from_a_floor_above_is_found_and_one_below_is_not() -> None:
    floors = (("pkg.low",), ("pkg.mid", "pkg.side"), ("pkg.high",))
    graph = build_graph({"pkg": "", "pkg.low": "", "pkg.low.a": "def f():\n    import pkg.high.c\n",
                         "pkg.mid": "", "pkg.mid.b": "import pkg.low.a\nimport pkg.side.d\n",
                         "pkg.side": "", "pkg.side.d": "",
                         "pkg.high": "", "pkg.high.c": "import pkg.mid.b\n"},
                        ["pkg", "pkg.low", "pkg.mid", "pkg.side", "pkg.high"])
    assert upward(graph, floors) == ["pkg.low.a (pkg.low) imports pkg.high.c (pkg.high, a floor above)"]
    assert floor_of("pkg.mid.b", floors) == (1, "pkg.mid") and floor_of("pkg.other", floors) is None


def test_every_package_of_worker_has_a_floor(sources: tuple[dict[str, str], list[str]]) -> None:
    code, _ = sources
    homeless = [m for m in code if m.startswith("worker") and not m.startswith("worker.examples")
                and floor_of(m, FLOORS) is None]
    assert homeless == []


# -- the rules hold on the real graph, and catch a break in it ---------------------------------------

RULES: dict[str, Callable[[Graph], Sequence[object]]] = {
    "cycle": cycles,
    # Packages by floors (FLOORS): never an import from a floor above.
    "floors": lambda g: upward(g, FLOORS),
    "submit path": lambda g: submit_path_violations(g, "worker.ctl.cli", SUBMIT_MUST_NOT_IMPORT),
    "wrong way": lambda g: wrong_way(g, LOW_LAYERS, HIGH_LAYERS),
    # Equal, not a subset: a module that stops being an adapter must leave the list too.
    "adapters": lambda g: sorted(importers_of(g, AWS_SDK) ^ ADAPTERS),
    # The Lambda zip holds lambda_trigger/ and the shared package, nothing of worker/.
    "lambda apart": lambda g: leaving(g, "lambda_trigger", *SHARED),
    # Both sides import it, so it imports neither (nor anything outside the stdlib).
    "shared stdlib only": lambda g: beyond_stdlib(g, SHARED),
    # The example processing command runs as the daemon's child, from any directory: stdlib only.
    "examples apart": lambda g: leaving(g, "worker.examples"),
}


@pytest.fixture(scope="module")
def sources() -> tuple[dict[str, str], list[str]]:
    return read_sources()


def test_the_graph_is_complete(sources: tuple[dict[str, str], list[str]]) -> None:
    graph = build_graph(*sources)
    assert {"worker.ctl.cli", "worker.storage.s3", "lambda_trigger.handler",
            "processor_shared"} <= graph.edges.keys()
    assert "worker.state.ledger" in loaded_by(graph, "worker.ctl.cli")  # the submit path is followed
    assert unresolved(graph) == []


@pytest.mark.parametrize("rule", RULES)
def test_the_real_graph_keeps_the_rule(rule: str, sources: tuple[dict[str, str], list[str]]) -> None:
    assert RULES[rule](build_graph(*sources)) == []


@pytest.mark.parametrize(("rule", "module", "added"), [
    ("cycle", "worker.errors", "import worker.ctl.cli"),
    ("floors", "worker.jobs.job", "def f():\n    from worker.runner import pipeline"),
    ("floors", "worker.state.ledger", "if TYPE_CHECKING:\n    import worker.daemon.lifecycle"),
    ("floors", "worker.runner.pipeline", "import worker.fleet.consumer"),
    ("floors", "worker.config.settings", "def f():\n    from worker.jobs import states"),
    ("submit path", "worker.jobs.identity", "import dataclasses"),
    ("submit path", "worker.jobs.identity", "import worker.storage.s3"),
    ("submit path", "processor_shared", "import dataclasses"),
    ("wrong way", "worker.storage.base", "def f():\n    from worker.fleet import consumer"),
    ("wrong way", "worker.state.schema", "if TYPE_CHECKING:\n    import worker.runner.pipeline"),
    ("adapters", "worker.ctl.lost", "import botocore.exceptions"),
    ("lambda apart", "lambda_trigger.events", "from worker.jobs.identity import Identity"),
    ("lambda apart", "lambda_trigger.handler", "def f():\n    import worker.fleet.workqueue"),
    ("lambda apart", "processor_shared", "def f():\n    from worker.jobs.identity import Identity"),
    ("shared stdlib only", "processor_shared", "import structlog"),
    ("shared stdlib only", "processor_shared", "if TYPE_CHECKING:\n    from worker.jobs.job import Job"),
    ("shared stdlib only", "processor_shared", "def f():\n    from lambda_trigger import events"),
    ("examples apart", "worker.examples.stats", "import processor_shared.layout"),
])
def test_the_rule_catches_a_break_in_the_real_code(
    rule: str, module: str, added: str, sources: tuple[dict[str, str], list[str]],
) -> None:
    code, packages = sources
    broken = {**code, module: code[module] + "\n" + added + "\n"}
    assert RULES[rule](build_graph(broken, packages)) != []


def test_every_module_says_what_it_is_for(sources: tuple[dict[str, str], list[str]]) -> None:
    code, _ = sources
    missing = []
    for module, source in code.items():
        doc = ast.get_docstring(ast.parse(source))
        if not doc or not doc.splitlines()[0].strip():
            missing.append(module)
    assert missing == []
