"""The house keeps its shape: every import of the library, read from the source (ast), makes a
package graph that is acyclic and whose arrows point down the floors below (the layout section of
DESIGN.md). A new upward import fails here with the module and line that made it.

Imports inside ``if TYPE_CHECKING:`` are left out: they never run, so they make no arrow at
import time (a type named in an annotation, e.g. telemetry's ``RunRecord``).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "outerloop"

# Floors, bottom first: a package may import its own floor and those below, never one above.
FLOORS: list[tuple[str, ...]] = [
    ("errors", "clock", "config", "ports", "progress", "telemetry", "cli", "capacity"),  # ground floor
    ("contracts",),
    ("storage",),
    ("data", "topology"),
    ("inner_loop.model",),  # what training produces: no serving, no outer loop
    ("budgets",),
    ("memory",),
    ("tools",),
    ("inner_loop.serving",),
    ("conversation",),
    ("agents",),
    ("inner_loop",),  # ranker_train: trains on the funnel's own candidates (above model and serving)
    ("scheduler",),
    ("console",),
    ("api",),
    ("tools.mcp",),
    ("evals",),  # composes the loops; nothing in the library imports it
    ("demo", "benchmarks", "bench_cli"),  # consumers of the library
    ("",),  # outerloop/__init__.py: the public SDK
]
CONSUMERS = {"demo", "benchmarks", "bench_cli"}
TRAINING = {"inner_loop.model", "inner_loop"}  # the transformer's and the ranker's training
OUTER_LOOP = {"agents", "evals", "scheduler", "console", "conversation", "tools.mcp", "api"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


# Sub-packages that are floors of their own (the rest of a package's sub-packages are its parts).
SUBPACKAGES = {"inner_loop.model", "inner_loop.serving", "tools.mcp"}


def unit_of(module: str) -> str:
    """The package a module belongs to, below ``outerloop.``: a sub-package of :data:`SUBPACKAGES`
    (``inner_loop.model``) when the module is in one, else the top-level package or module
    (``scheduler``, ``clock``)."""
    parts = module.split(".")[1:]
    if ".".join(parts[:2]) in SUBPACKAGES:
        return ".".join(parts[:2])
    return parts[0] if parts else ""


def _runtime_nodes(tree: ast.Module) -> list[ast.AST]:
    """Every node except the bodies of ``if TYPE_CHECKING:`` blocks."""
    out: list[ast.AST] = []
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        out.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return out


@cache
def imports() -> list[tuple[str, str, int]]:
    """(importing module, imported module, line) for every outerloop import in the library."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = module_name(path)
        for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module]
                if node.module == "outerloop":  # `from outerloop import telemetry` is the module
                    targets = [f"outerloop.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            found += [(me, t, node.lineno) for t in targets if t == "outerloop" or t.startswith("outerloop.")]
    assert len(found) > 500, "the scan found too few imports: is the package where this test looks?"
    return found


@cache
def package_graph() -> dict[str, dict[str, str]]:
    """unit -> {imported unit: "module:line" of one import that makes the arrow}."""
    graph: dict[str, dict[str, str]] = defaultdict(dict)
    for me, target, line in imports():
        a, b = unit_of(me), unit_of(target)
        if a != b:
            graph[a].setdefault(b, f"{me}:{line}")
    return graph


def find_cycle(graph: dict[str, dict[str, str]]) -> list[str] | None:
    """One cycle of the graph as a path (first node repeated at the end), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def floor_of(unit: str) -> int:
    for i, floor in enumerate(FLOORS):
        if unit in floor:
            return i
    raise AssertionError(f"outerloop.{unit} is on no floor of FLOORS: add it where it belongs")


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b": ""}, "b": {"c": ""}, "c": {"a": ""}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": ""}, "b": {"c": ""}}) is None


def test_the_package_graph_is_acyclic() -> None:
    graph = package_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(
        f"{a} ({graph[a][b]})" for a, b in zip(cycle, cycle[1:]))


@pytest.mark.parametrize("unit", sorted({u for floor in FLOORS for u in floor}))
def test_arrows_point_down(unit: str) -> None:
    """A package imports its own floor and those below it, never a floor above."""
    graph = package_graph()
    mine = floor_of(unit)
    upward = {b: where for b, where in graph.get(unit, {}).items() if floor_of(b) > mine}
    assert not upward, f"outerloop.{unit} (floor {mine}) imports above itself: " + ", ".join(
        f"outerloop.{b} (floor {floor_of(b)}) at {where}" for b, where in sorted(upward.items()))


def test_every_package_is_on_a_floor() -> None:
    for path in PACKAGE.rglob("*.py"):
        floor_of(unit_of(module_name(path)))


def test_training_never_imports_the_outer_loop() -> None:
    graph = package_graph()
    for unit in TRAINING:
        wrong = {b: w for b, w in graph.get(unit, {}).items() if b in OUTER_LOOP}
        assert not wrong, f"outerloop.{unit} imports the outer loop: {wrong}"


def test_the_library_never_imports_demo_or_benchmarks() -> None:
    wrong = [(me, t, line) for me, t, line in imports()
             if unit_of(t) in CONSUMERS and unit_of(me) not in CONSUMERS]
    assert not wrong, f"the library imports its consumers: {wrong}"
