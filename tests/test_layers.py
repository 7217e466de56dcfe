"""The package's layers, checked from the source: no module imports one above it, and
swarmnode/simulation has no import cycle (docs/architecture.md#layers,
docs/simulator.md#layers).

Read with `ast`, nothing imported, so it takes a fraction of a second. Imports inside
functions and under TYPE_CHECKING count as well: a function-local import breaks an import
cost or a cycle at run time, not the dependency itself. A new module must be given a layer
here, which is the moment to decide where it belongs.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "swarmnode"

# Top to bottom; a module may import its own layer's and the ones below, never one above.
# A name is a module or subpackage directly under swarmnode/.
LAYERS: list[set[str]] = [
    # __init__ is the public facade: it names classes from every layer and loads each on
    # first use (PEP 562), so importing any module below never runs an upward import.
    {"cli", "__main__", "__init__"},
    {"daemon", "simulation", "demo", "flower", "outage", "progress", "metrics", "dashboard"},
    {"node", "membership", "peer"},
    {"round"},
    {"allreduce", "secure_merge"},
    {"p2p", "ledger"},
    {
        "merge",
        "training",
        "privacy",
        "distributed_dp",
        "sync",
        "identity",
        "config",
        "checkpoint",
        "canonical",
        "merkle",
        "secagg",
        "ownership",
        "records",
        "rules",
        "error_names",
        "address",
        "exceptions",
        "version",
    },
]

# Inside swarmnode/simulation, top to bottom: what a command runs and reports; the runners;
# data, tasks and results; the scenario's settings, faults included.
SIMULATION_LAYERS: list[set[str]] = [
    {"run", "report", "sweep_report"},
    {"engine", "processes", "sweep", "baselines", "injector", "local", "turns", "chainlog"}
    | {"fast", "flower_baseline", "ray_shards"},
    {"data", "partition", "attacks", "tasks", "results"},
    {"scenario", "faults"},
    {"__init__"},
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    relative = Path(*name.split("."))
    root = PACKAGE.parent
    return (root / relative).with_suffix(".py").exists() or (root / relative).is_dir()


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for every swarmnode module that `path` imports, anywhere in it."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path.parent)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package this file is in
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                whole = f"{base}.{alias.name}"
                yield node.lineno, whole if _is_module(whole) else base


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _rank(layers: list[set[str]], name: str) -> int | None:
    """0 for the top layer; None for a name no layer holds."""
    return next((i for i, layer in enumerate(layers) if name in layer), None)


def _part(module: str, depth: int) -> str:
    """The name a layer knows `module` by: its component `depth` levels below swarmnode
    ("__init__" for the package itself)."""
    parts = module.split(".")
    return parts[depth] if len(parts) > depth else "__init__"


def _upward(layers: list[set[str]], depth: int, within: str) -> list[str]:
    """Every import, among the modules under `within`, of a module in a layer above."""
    wrong = []
    for path in _sources():
        module = _module_name(path)
        if not (module == within or module.startswith(within + ".")):
            continue
        own = _rank(layers, _part(module, depth))
        for line, imported in _imports(path):
            if not (imported == within or imported.startswith(within + ".")):
                continue
            theirs = _rank(layers, _part(imported, depth))
            if own is not None and theirs is not None and theirs < own:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {imported}")
    return wrong


def _unplaced(layers: list[set[str]], depth: int, within: str) -> list[str]:
    names = {
        _part(_module_name(p), depth)
        for p in _sources()
        if _module_name(p).startswith(within + ".") or _module_name(p) == within
    }
    return sorted(n for n in names if _rank(layers, n) is None)


def test_every_module_has_a_layer() -> None:
    assert _unplaced(LAYERS, 1, "swarmnode") == []
    assert _unplaced(SIMULATION_LAYERS, 2, "swarmnode.simulation") == []


def test_no_module_imports_a_layer_above_its_own() -> None:
    assert _upward(LAYERS, 1, "swarmnode") == []


def test_inside_the_simulator_no_module_imports_a_layer_above_its_own() -> None:
    assert _upward(SIMULATION_LAYERS, 2, "swarmnode.simulation") == []


def _graph(within: str) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in _sources():
        module = _module_name(path)
        if module.startswith(within + "."):
            graph[module] = {m for _, m in _imports(path) if m.startswith(within + ".")}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of `graph` as the modules along it, or [] if there is none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str]:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return []
        path.append(module)
        for imported in sorted(graph.get(module, ())):
            found = visit(imported)
            if found:
                return found
        path.pop()
        done.add(module)
        return []

    for module in sorted(graph):
        found = visit(module)
        if found:
            return found
    return []


def test_the_simulator_has_no_import_cycle() -> None:
    assert _cycle(_graph("swarmnode.simulation")) == []


@pytest.mark.parametrize(
    ("graph", "cycle"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ],
)
def test_the_cycle_finder_finds_a_cycle_and_only_a_cycle(
    graph: dict[str, set[str]], cycle: list[str]
) -> None:
    assert _cycle(graph) == cycle
