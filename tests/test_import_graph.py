"""The package's import graph: no cycle among module-level imports, and data flows one way
(DESIGN.md): collectors know nothing of rules or alerting, notifiers nothing of the state
database, the state database nothing of what is kept in it."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "piggywatch"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join([*base, node.module] if node.module else base)


def _imports(module: str, tree: ast.Module, is_package: bool, *,
             top_level_only: bool) -> set[str]:
    """The piggywatch modules ``tree`` imports (a name imported from a package counts as
    its submodule when there is one)."""
    nodes = ast.iter_child_nodes(tree) if top_level_only else ast.walk(tree)
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node, is_package)
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] == "piggywatch"}


@cache
def _graph(*, top_level_only: bool) -> dict[str, set[str]]:
    trees = {}
    for path in PACKAGE.rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        trees[_module_name(path)] = (ast.parse(path.read_text(), str(path)),
                                     path.name == "__init__.py")
    return {name: {t for t in _imports(name, tree, is_pkg, top_level_only=top_level_only)
                   if t in trees and t != name}
            for name, (tree, is_pkg) in trees.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle among modules (a package importing its own submodules in its
    ``__init__`` is how a package face works, so parent → child edges are left out)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_module_level_imports_have_no_cycle() -> None:
    cycle = _cycle(_graph(top_level_only=True))
    assert cycle == [], " -> ".join(cycle)


# (importer prefix, forbidden prefix): checked on every import, lazy ones included.
LAYERS = [
    ("piggywatch.collectors", "piggywatch.rules"),
    ("piggywatch.collectors", "piggywatch.alerting"),
    ("piggywatch.collectors", "piggywatch.ack"),
    ("piggywatch.collectors", "piggywatch.daemon"),
    ("piggywatch.store", "piggywatch.rules"),
    ("piggywatch.store", "piggywatch.alerting"),
    ("piggywatch.store", "piggywatch.collectors"),
    ("piggywatch.rules", "piggywatch.alerting"),
    ("piggywatch.rules", "piggywatch.collectors"),
    ("piggywatch.alerting.notifiers", "piggywatch.state"),
    ("piggywatch.alerting.channels", "piggywatch.state"),
    ("piggywatch.state", "piggywatch.alerting"),
    ("piggywatch.state", "piggywatch.rules"),
    ("piggywatch.state", "piggywatch.collectors"),
    # Delivery's data flows one way: what the dispatcher feeds (the outbox, the notifiers)
    # and the inbox that feeds it never reach back up into the dispatcher or the incidents.
    *[(low, high) for low in ("piggywatch.alerting.outbox", "piggywatch.alerting.outbox_lane",
                              "piggywatch.alerting.outbox_store", "piggywatch.alerting.inbox",
                              "piggywatch.alerting.notifiers", "piggywatch.alerting.channels")
      for high in ("piggywatch.alerting.dispatcher", "piggywatch.alerting.incidents",
                   "piggywatch.alerting.incident_book")],
    ("piggywatch.alerting.incident_book", "piggywatch.alerting.dispatcher"),
    ("piggywatch.alerting.incidents", "piggywatch.alerting.dispatcher"),
    # The daemon knows collectors by what they declare, never by class.
    ("piggywatch.daemon", "piggywatch.collectors.postgres.statements"),
]


@pytest.mark.parametrize(("importer", "forbidden"), LAYERS)
def test_layers_import_one_way(importer: str, forbidden: str) -> None:
    graph = _graph(top_level_only=False)
    wrong = sorted(f"{name} imports {target}" for name, targets in graph.items()
                   if name == importer or name.startswith(importer + ".")
                   for target in targets
                   if target == forbidden or target.startswith(forbidden + "."))
    assert wrong == []


def test_the_cycle_finder_finds_a_cycle_and_ignores_a_package_face() -> None:
    assert _cycle({"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}}) == [
        "p.a", "p.b", "p.c", "p.a"]
    assert _cycle({"p": {"p.a"}, "p.a": {"p"}}) == []


def test_the_graph_sees_the_imports_it_checks() -> None:
    # The checks above pass trivially on an empty graph: make sure it is not.
    graph = _graph(top_level_only=True)
    assert "piggywatch.state.base" in graph["piggywatch.state.sqlite"]
    assert "piggywatch.alerting.channels.registry" in graph["piggywatch.alerting.channels"]
