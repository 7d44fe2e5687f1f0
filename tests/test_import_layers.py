"""The package's import graph has no cycles, counting every import statement (lazy ones included).

Each module's imports are read with ``ast`` -- top-level, inside functions,
under ``if TYPE_CHECKING`` -- and resolved to the module they load
(``from pkg import name`` is an import of ``pkg.name`` when that is a module).
Two graphs must be acyclic: modules, and packages (each subpackage or top-level
module of ``mergekit_transplant`` one node). docs/architecture.md draws the
layers this keeps apart.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "mergekit_transplant"


def modules(root: Path = ROOT) -> Dict[str, Path]:
    found = {}
    for path in (root / PACKAGE).rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def import_graph(mods: Dict[str, Path]) -> Dict[str, Set[str]]:
    """{module: the package modules its import statements load}, every statement counted."""

    def owner(name: str):
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: Dict[str, Set[str]] = {m: set() for m in mods}
    for module, path in mods.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                names = [f"{source}.{a.name}" if f"{source}.{a.name}" in mods else source for a in node.names]
            else:
                continue
            for name in names:
                if name == PACKAGE or name.startswith(PACKAGE + "."):
                    target = owner(name)
                    if target and target != module:
                        graph[module].add(target)
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def package_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def package_graph(graph: Dict[str, Set[str]]) -> Dict[str, Set[str]]:
    out: Dict[str, Set[str]] = {}
    for a, targets in graph.items():
        for b in targets:
            if package_of(a) != package_of(b):
                out.setdefault(package_of(a), set()).add(package_of(b))
    return out


def test_no_import_cycle_between_modules():
    assert cycles(import_graph(modules())) == []


def test_no_import_cycle_between_packages():
    assert cycles(package_graph(import_graph(modules()))) == []


@pytest.mark.parametrize("lower, upper", [
    ("mergekit_transplant.checkpoint", "mergekit_transplant.adapter"),
    ("mergekit_transplant.checkpoint", "mergekit_transplant.recipe"),
    ("mergekit_transplant.adapter", "mergekit_transplant.card"),
    ("mergekit_transplant.adapter", "mergekit_transplant.organ"),
    ("mergekit_transplant.adapter", "mergekit_transplant.preflight"),
    ("mergekit_transplant.adapter", "mergekit_transplant.flows"),
    ("mergekit_transplant.organ", "mergekit_transplant.flows"),
    ("mergekit_transplant.card", "mergekit_transplant.flows"),
    ("mergekit_transplant.flows", "mergekit_transplant.cli"),
])
def test_lower_layers_never_import_upper_ones(lower, upper):
    """A layer may import the ones below it only (docs/architecture.md): never flows, cli, or the adapter from checkpoint."""
    graph = package_graph(import_graph(modules()))
    reachable, todo = set(), [lower]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in reachable:
                reachable.add(nxt)
                todo.append(nxt)
    assert upper not in reachable


def test_no_package_init_reexports_orchestration():
    """``flows`` is imported by entry points (cli, the .pth hook) only, never by a package ``__init__``."""
    graph = import_graph(modules())
    importers = sorted(m for m, targets in graph.items() if "mergekit_transplant.flows" in targets)
    assert importers and all(m.startswith(("mergekit_transplant.cli", "mergekit_transplant._hook")) for m in importers)


def test_the_checker_finds_a_planted_cycle(tmp_path):
    """The check can fail: a lazy import inside a function closing a loop is caught."""
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from mergekit_transplant.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from mergekit_transplant import a\n")
    graph = import_graph(modules(tmp_path))
    assert cycles(graph) == [["mergekit_transplant.a", "mergekit_transplant.sub.b"]]
    assert cycles(package_graph(graph)) == [["mergekit_transplant.a", "mergekit_transplant.sub"]]

