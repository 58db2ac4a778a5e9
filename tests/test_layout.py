"""The package's layers, read from its source: no two modules import each other (directly or around a cycle), the core
(the public API at the top of the package and the folders it is grouped in) never imports an application, and an
application imports another only where the layout says so (the command line fronts them all; the service searches the
index). Every import counts: those inside functions and under TYPE_CHECKING too."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "src" / "altclip"
APPLICATIONS = ("cli", "server", "index", "train", "evaluate", "bench", "export", "diffusion")
CORE_FOLDERS = ("modeling", "processing", "loading", "compat", "data", "utils")
# Which application may import which other one: the command line is the front of every application, and the service
# searches the index. Nothing else crosses between applications; what two of them share belongs in the core.
MAY_IMPORT = {"cli": set(APPLICATIONS), "server": {"index"}}


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
    assert "altclip.modeling.model" in graph["altclip.pipelines"]  # a module-level import
    assert "altclip.index" in graph["altclip.server.service"]  # one inside a function
    assert "altclip.zeroshot" in graph["altclip.inference"]  # `from altclip import zeroshot`
    assert {"altclip.cli.predict", "altclip.cli.common"} <= graph["altclip.cli"] | graph["altclip.cli.predict"]


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def application(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in APPLICATIONS else None


def test_the_core_is_grouped_in_folders():
    top = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    folders = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").is_file()}
    assert folders == set(APPLICATIONS) | set(CORE_FOLDERS)
    # At the top: only the public API (load, the pipeline, embedding, zero-shot classification and its templates).
    assert top == {"pipelines", "inference", "zeroshot", "templates"}


def test_the_core_imports_no_application():
    graph = import_graph()
    core = [name for name in graph if application(name) is None and name != "altclip.__main__"]
    assert "altclip.modeling.model" in core and "altclip.zeroshot" in core and "altclip.data.readers" in core
    reaching = {name: sorted(t for t in graph[name] if application(t)) for name in core if name != "altclip"}
    assert {name: targets for name, targets in reaching.items() if targets} == {}


def test_applications_import_each_other_only_as_the_layout_says():
    graph = import_graph()
    crossing = sorted(
        f"{name} -> {target}"
        for name, targets in graph.items()
        for target in targets
        if application(name)
        and application(target)
        and application(target) != application(name)
        and application(target) not in MAY_IMPORT.get(application(name), set())
    )
    assert crossing == []


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
