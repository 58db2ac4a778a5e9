"""The package's layers, read from its source: no two modules import each other (directly or around a cycle), and the
core at the top of the package never imports an application (the subpackages). Every import counts: those inside
functions and under TYPE_CHECKING too."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "src" / "altclip"
APPLICATIONS = ("cli", "server", "index", "train", "evaluate", "bench", "export", "diffusion")


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["altclip", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    modules = module_names()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
                ]
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_the_imports():
    graph = import_graph()
    assert "altclip.model" in graph["altclip.pipeline"]  # a module-level import
    assert "altclip.index" in graph["altclip.server.service"]  # one inside a function
    assert "altclip.zeroshot" in graph["altclip.inference"]  # `from altclip import zeroshot`
    assert {"altclip.cli.predict", "altclip.cli.common"} <= graph["altclip.cli"] | graph["altclip.cli.predict"]


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_core_imports_no_application():
    graph = import_graph()
    core = [name for name in graph if name.count(".") == 1 and name.split(".")[1] not in (*APPLICATIONS, "__main__")]
    assert "altclip.model" in core and "altclip.zeroshot" in core
    reaching = {
        name: sorted(t for t in graph[name] if t.split(".")[1] in APPLICATIONS) for name in core if name != "altclip"
    }
    assert {name: targets for name, targets in reaching.items() if targets} == {}


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
