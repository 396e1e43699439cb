"""Modules import only modules below them: no import cycles among sidecar's modules.

A cycle works until someone reorders two imports or calls a function at import time, and
it hides layering mistakes (the account stage reaching back into the cache, say). The
graph is read from the source with `ast`: every `import` and `from … import` of a sidecar
module counts, at module level or inside a function (a lazy import is still a dependency;
laziness only hides the cycle). Imports under `if TYPE_CHECKING:` are not executed and do
not count. Importing a module does not count as importing its package's `__init__`.
This is stricter than importing each module first in a fresh interpreter: an import that
works only in some order needs a cycle, and a lazy import's cycle shows only here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import sidecar

ROOT = Path(sidecar.__file__).parent


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _imports(node)


def _edges(name: str, source: str, is_package: bool) -> set[str]:
    package = name if is_package else name.rpartition(".")[0]
    out = set()
    for node in _imports(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name in MODULES)
            continue
        base = node.module or ""
        if node.level:  # relative: from the package, up `level - 1` packages
            anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            base = f"{anchor}.{base}" if base else anchor
        for alias in node.names:
            if f"{base}.{alias.name}" in MODULES:
                out.add(f"{base}.{alias.name}")  # a submodule
            elif base in MODULES:
                out.add(base)  # a name from the module
    out.discard(name)
    return out


GRAPH = {
    name: _edges(name, path.read_text(), path.name == "__init__.py")
    for name, path in MODULES.items()
}


def _cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.add(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _describe(cycles: set[frozenset[str]]) -> list[str]:
    return [" <-> ".join(sorted(cycle)) for cycle in cycles]


def test_the_graph_sees_lazy_imports():
    """The reader counts what it should, or the tests below prove nothing."""
    assert "sidecar.pipeline.run" in GRAPH["sidecar.api.proxy"]
    assert "sidecar.app" in GRAPH["sidecar.jobs.process"]  # imported inside a function
    typing_only = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import sidecar.app\n"
    assert _edges("sidecar.cli", typing_only, False) == set()
    relative = "from . import keys\nfrom .state import Usage\n"
    assert _edges("sidecar.stores.x", relative, False) == {
        "sidecar.stores.keys",
        "sidecar.stores.state",
    }
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == {frozenset({"a", "b", "c"})}


def test_no_import_cycles_among_sidecar_modules():
    assert _describe(_cycles(GRAPH)) == []


def test_the_policy_layer_imports_nothing_outside_itself():
    """policy/ reads, checks, compiles and swaps policies; what runs one (provider clients,
    stores, telemetry) is built around it a layer up, in sidecar/runtime.py."""
    outside = {
        f"{name} -> {dependency}"
        for name, dependencies in GRAPH.items()
        if name.startswith("sidecar.policy.")
        for dependency in dependencies
        if not dependency.startswith("sidecar.policy")
    }
    assert not outside, sorted(outside)
