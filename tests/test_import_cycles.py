"""No import cycles among the modules of harness/ and reports/ (imports inside functions count).

The same rule as ``../shared/tools/import_cycles.py``, written here so CI needs nothing outside the
checkout: every ``import``/``from ... import`` anywhere in a module (top level, functions,
``TYPE_CHECKING`` blocks) is an edge; ``from pkg import name`` is an edge to ``pkg.name`` when that is a
module of ours, else to ``pkg``. A cycle means two modules are one idea split badly, or one module
holds two ideas: fold them, or move the shared part down into a module both import.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "reports")


def module_name(path: Path, root: Path) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")


def imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """Modules of ours that ``path`` (module ``name``) imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return {m for m in found if m in modules and m != name}


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """``module -> modules of ours it imports`` for every ``.py`` file under ``root/<package>``."""
    files = [p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))]
    modules = {module_name(p, root) for p in files}
    return {module_name(p, root): imports(p, module_name(p, root), modules) for p in files}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle per strongly connected component of more than one module, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[set[str]] = []

    def connect(v: str) -> None:  # Tarjan; graphs here are a few hundred modules deep at most
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(_shortest_cycle(graph, c) for c in components)


def _shortest_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """The shortest path from the component's first module back to itself, within the component."""
    start = min(component)
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        u = queue.popleft()
        for w in sorted(graph[u] & component):
            if w == start:
                path = [u]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if w not in parent:
                parent[w] = u
                queue.append(w)
    raise AssertionError(f"{start} is in a strongly connected component but on no cycle")


def test_checker_finds_cycles_through_function_level_imports(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import thing\n")
    (pkg / "b.py").write_text("def thing():\n    from pkg import c\n")
    (pkg / "c.py").write_text("from . import a\n")
    (pkg / "d.py").write_text("import pkg.a\n")  # imports into the cycle, is not on it
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.b"] == {"pkg.c"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
    (pkg / "c.py").write_text("")
    assert cycles(import_graph(tmp_path, ("pkg",))) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycles(package):
    found = [c for c in cycles(import_graph(ROOT)) if c[0].split(".")[0] == package]
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)
