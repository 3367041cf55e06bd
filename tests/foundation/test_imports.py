"""The import graph of the shipped package (`include/catsdogs`) and of the Bento service
(`bentoservice/`), read from the source with `ast` (nothing is imported, so no heavy dependency
loads): no import cycle, neither between modules nor between the package's sub-packages, and the
package never imports upward.

Every `import x` / `from x import y` of a `catsdogs.*` or `bentoservice.*` module counts, at any
level (function-level imports too). `from pkg import name` is an edge to `pkg.name` when that is a
module, else to `pkg`. Python's implicit import of a module's parent packages is not an edge: a
package `__init__` that imports its submodules is fine, as long as no submodule imports the
package `__init__` back.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ROOTS = {"catsdogs": REPO_ROOT / "include" / "catsdogs",
         "bentoservice": REPO_ROOT / "bentoservice"}
# What `catsdogs` must never import: the service beside it, the tooling, the DAGs, the tests.
UPWARD = ("bentoservice", "demo", "dags", "plugins", "tests", "benchmarks", "scripts")


def module_files() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the package and the service."""
    found: dict[str, Path] = {}
    for top, folder in ROOTS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [top, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imported_names(path: Path, module: str) -> Iterator[str]:
    """Every dotted name `path` imports (relative imports resolved against `module`); for
    `from x import a` both `x` and `x.a` (the caller keeps the one that is a module)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of the package and the service it imports, plus every other
    top-level name it imports (to check the upward rule)."""
    files = module_files()
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        edges: set[str] = set()
        for name in imported_names(path, module):
            if name in files:
                edges.add(name)
            elif name.rpartition(".")[0] not in files:   # `from mod import function`: mod counts
                edges.add(name.split(".")[0])
        edges.discard(module)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root] & graph.keys())))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(frozenset(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child] & graph.keys()))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def test_the_graph_sees_function_level_and_package_imports() -> None:
    graph = import_graph()
    # a function-level import (choose's lazy import of each target)
    assert "catsdogs.deployment.targets.local" in graph["catsdogs.deployment.targets"]
    # `from catsdogs.deployment import targets` is an edge to the targets package
    assert "catsdogs.deployment.targets" in graph["catsdogs.stages.deploy"]
    # `from catsdogs.config import Params`: an edge to the module, not to a `Params` module
    assert "catsdogs.config" in graph["catsdogs.deployment.targets"]


def test_no_import_cycle() -> None:
    found = [sorted(component) for component in cycles(import_graph())]
    assert not found, f"import cycles: {found}"


def subpackage_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph of `catsdogs` collapsed to its sub-packages (`catsdogs.registry`,
    `catsdogs.stages`...; a top-level module is its own node)."""
    def node(module: str) -> str:
        return ".".join(module.split(".")[:2])

    collapsed: dict[str, set[str]] = {}
    for module, edges in graph.items():
        if module.startswith("catsdogs."):
            collapsed.setdefault(node(module), set()).update(
                node(edge) for edge in edges if edge.startswith("catsdogs."))
    for source, edges in collapsed.items():
        edges.discard(source)
    return collapsed


def test_no_import_cycle_between_the_packages_sub_packages() -> None:
    """The sub-packages form layers (e.g. registry above data and training, below deployment and
    stages): no two import each other, not even through a third."""
    assert cycles(subpackage_graph(import_graph())) == []


def test_the_package_never_imports_upward() -> None:
    graph = import_graph()
    upward = {module: sorted(name for name in edges if name.split(".")[0] in UPWARD)
              for module, edges in graph.items() if module.startswith("catsdogs")}
    assert not {module: names for module, names in upward.items() if names}
