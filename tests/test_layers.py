"""Import layers, read from the source with ``ast`` (nothing is imported, no model loads): no cycle
among the modules of tools/, mcp_server/, agent/ and bench/, and every import runs downward.

An import counts wherever it is written (inside a function, under ``TYPE_CHECKING``): a lazy
import still ties its module to the one it names. Importing a package's submodule runs the
package's ``__init__`` first, but that is not counted as an import of the ``__init__``: a package
re-exporting its submodules is fine. A submodule naming its package (``from tools.inputs import
X``, ``from . import X`` where X is no submodule) does import the ``__init__``, and the
``__init__`` importing it back is a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("tools", "mcp_server", "agent", "bench")

#: what each top-level package must never import (tests/ is imported by nothing)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "tools": ("agent", "mcp_server", "bench", "tests"),
    "mcp_server": ("agent", "bench", "tests"),
    "agent": ("bench", "tests"),
    "bench": ("tests",),
}

#: packages only these importers may import (a name covers its submodules); tests/ is not read
IMPORTED_ONLY_BY: dict[str, tuple[str, ...]] = {
    # test tooling: the CLI's tiny-model and demo, and the benchmark build tiny checkpoints
    "tools.tiny": ("tools.tiny", "agent.cli", "agent.demo", "bench"),
    # `vlm-agent serve` starts the server in process; the chat and scripts reach it over a transport
    "mcp_server": ("mcp_server", "agent.cli", "bench"),
}

#: tools/ in layers, lowest first: a module imports from its own layer or those below, never above.
#: A name covers the module and, for a package, its submodules; "tools" is the package's own
#: ``__init__`` only. Every module of tools/ is in exactly one layer.
TOOLS_LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("basics", (
        "tools", "tools.errors", "tools.text", "tools.about", "tools.paths", "tools.cancel", "tools.scope",
        "tools.safe_open", "tools.redact", "tools.options", "tools.outputs", "tools.toolcalls", "tools.progress",
    )),
    ("structured extraction: schemas, grammars, spans", ("tools.extract",)),
    ("images and boxes", ("tools.inputs", "tools.boxes")),
    ("results", ("tools.results",)),
    ("tasks", ("tools.tasks",)),
    ("reading and edge checks", ("tools.reading", "tools.checks")),
    ("runtimes", ("tools.runtimes",)),
    ("families", ("tools.families",)),
    ("model", ("tools.model",)),
    ("core", ("tools.core",)),
    ("jobs", ("tools.jobs",)),
    ("vision", ("tools.vision",)),
    ("tiny checkpoints (test tooling)", ("tools.tiny",)),
)


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool


def find_modules(root: Path, packages: Iterable[str]) -> dict[str, Module]:
    found: dict[str, Module] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_package else parts)
            found[name] = Module(name, path, is_package)
    return found


def owner(dotted: str, known: Mapping[str, object]) -> str:
    """The known module a dotted name lives in (its longest known prefix), or the name itself."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in known:
            return ".".join(parts[:end])
    return dotted


def imported(module: Module, source: str, known: Mapping[str, object]) -> set[str]:
    """The modules ``source`` imports: known module names, or other dotted names as written."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source, filename=str(module.path))):
        if isinstance(node, ast.Import):
            found.update(owner(alias.name, known) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1])
                source_name = f"{base}.{node.module}" if node.module else base
            else:
                source_name = node.module or ""
            for alias in node.names:
                submodule = f"{source_name}.{alias.name}"
                found.add(submodule if submodule in known else owner(source_name, known))
    found.discard(module.name)
    return found


def import_graph(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> dict[str, set[str]]:
    modules = find_modules(root, packages)
    return {m.name: imported(m, m.path.read_text(encoding="utf-8"), modules) for m in modules.values()}


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's, without recursion)."""
    edges = {node: [t for t in targets if t in graph] for node, targets in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(edges[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, pending = work[-1]
            step = next(pending, None)
            if step is not None:
                if step not in index:
                    index[step] = low[step] = len(index)
                    stack.append(step)
                    on_stack.add(step)
                    work.append((step, iter(edges[step])))
                elif step in on_stack:
                    low[node] = min(low[node], index[step])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def tools_layer(name: str) -> int | None:
    for level, (_, members) in enumerate(TOOLS_LAYERS):
        if any(name == m or (m != "tools" and under(name, m)) for m in members):
            return level
    return None


GRAPH = import_graph()


# ---------------------------------------------------------------- the reader itself


@pytest.mark.parametrize(
    ("name", "is_package", "source", "expected"),
    [
        ("tools.jobs.tiles", False, "from .. import cancel", {"tools.cancel"}),
        ("tools.jobs.tiles", False, "from . import auto_budget", {"tools.jobs.auto_budget"}),
        ("tools.jobs.tiles", False, "from ..tasks import Stopwatch", {"tools.tasks"}),
        ("tools.families", True, "from .gemma4 import Gemma4", {"tools.families.gemma4"}),
        ("tools.families", True, "from .. import tiny", {"tools.tiny"}),
        ("bench.gpu", False, "def f():\n    from .__main__ import report", {"bench.__main__"}),
        ("agent.cli", False, "from tools.families import gemma4, DIALECTS", {"tools.families.gemma4", "tools.families"}),
        ("agent.cli", False, "import tools.jobs.tiles as t", {"tools.jobs.tiles"}),
        ("agent.cli", False, "from tools.inputs.loader import ImageLoader", {"tools.inputs.loader"}),
        ("agent.cli", False, "import torch.nn", {"torch.nn"}),
        ("agent.cli", False, "from tests.raw import x", {"tests.raw"}),
        ("tools.inputs.decode", False, "from . import ImageInput", {"tools.inputs"}),
        ("tools.inputs.decode", False, "from .decode import x", set()),
    ],
)
def test_imports_are_resolved_to_modules(name: str, is_package: bool, source: str, expected: set[str]) -> None:
    known = dict.fromkeys([
        "tools", "tools.cancel", "tools.tasks", "tools.tiny", "tools.jobs", "tools.jobs.auto_budget",
        "tools.jobs.tiles", "tools.families", "tools.families.gemma4", "tools.inputs", "tools.inputs.decode",
        "tools.inputs.loader", "bench", "bench.__main__", "bench.gpu", "agent", "agent.cli",
    ])
    module = Module(name, Path(name.replace(".", "/") + ".py"), is_package)
    assert imported(module, source, known) == expected


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": ["b"], "b": ["c"], "c": []}, []),
        ({"a": ["b"], "b": ["a"]}, [["a", "b"]]),
        ({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}, [["a", "b", "c"]]),
        ({"a": ["b", "x"], "b": ["a"], "c": ["d"], "d": ["c"]}, [["a", "b"], ["c", "d"]]),
    ],
)
def test_cycles_are_the_components_of_more_than_one_module(graph, expected) -> None:
    assert sorted(cycles(graph)) == expected


def test_the_graph_holds_every_package_and_lazy_imports() -> None:
    assert {name.split(".")[0] for name in GRAPH} == set(PACKAGES)
    # agent.cli imports Vision only inside the function that runs a task
    assert "tools.vision" in GRAPH["agent.cli"]


# ---------------------------------------------------------------- the rules


def test_no_import_cycle() -> None:
    found = cycles(GRAPH)
    assert found == [], "modules importing each other: " + "; ".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_nothing_above_them(package: str) -> None:
    wrong = sorted(
        f"{name} imports {target}"
        for name, targets in GRAPH.items() if under(name, package)
        for target in targets if target.split(".")[0] in FORBIDDEN[package]
    )
    assert wrong == [], f"{package} must not import {', '.join(FORBIDDEN[package])}: " + "; ".join(wrong)


@pytest.mark.parametrize("gated", sorted(IMPORTED_ONLY_BY))
def test_gated_packages_have_only_their_importers(gated: str) -> None:
    allowed = IMPORTED_ONLY_BY[gated]
    wrong = sorted(
        f"{name} imports {target}"
        for name, targets in GRAPH.items() if not any(under(name, a) for a in allowed)
        for target in targets if under(target, gated)
    )
    assert wrong == [], f"only {', '.join(allowed)} may import {gated}: " + "; ".join(wrong)


def test_every_module_of_tools_is_in_one_layer_and_every_layer_name_exists() -> None:
    tools = [name for name in GRAPH if under(name, "tools")]
    unplaced = [name for name in tools if tools_layer(name) is None]
    assert unplaced == [], f"place these in TOOLS_LAYERS: {', '.join(unplaced)}"
    names = [m for _, members in TOOLS_LAYERS for m in members]
    assert len(names) == len(set(names)), "a name in two layers"
    stale = [m for m in names if m not in GRAPH]
    assert stale == [], f"TOOLS_LAYERS names modules that do not exist: {', '.join(stale)}"


def test_tools_imports_run_down_its_layers() -> None:
    wrong = []
    for name, targets in GRAPH.items():
        level = tools_layer(name) if under(name, "tools") else None
        if level is None:
            continue
        for target in sorted(targets):
            there = tools_layer(target)
            if there is not None and there > level:
                wrong.append(f"{name} ({TOOLS_LAYERS[level][0]}) imports {target} ({TOOLS_LAYERS[there][0]})")
    assert wrong == [], "imports running up the layers: " + "; ".join(wrong)
