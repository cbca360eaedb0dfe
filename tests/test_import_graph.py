"""No import circle among the project's modules (trainer, launch, components, pipeline).

Every import counts, at module level, inside a function or under `if TYPE_CHECKING:`: an import hidden in a
function still makes two modules depend on each other, it only moves the failure to run time. `from pkg import
mod` counts as an import of pkg.mod; importing a submodule does not count as importing its parent packages.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("trainer", "launch", "components", "pipeline")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module `name` is, or the nearest project package above it; None outside the project."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, source: str, is_package: bool, modules: dict[str, Path]) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(source, module)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found.update(target for name in targets if (target := _resolve(name, modules)) and target != module)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {module: _imports(module, path.read_text(encoding="utf-8"), path.name == "__init__.py", modules)
            for module, path in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            child = next(edges, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
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


def _describe(component: list[str], graph: dict[str, set[str]]) -> str:
    members = set(component)
    edges = [f"{a} -> {b}" for a in component for b in sorted(graph[a] & members)]
    return f"{', '.join(component)} ({'; '.join(edges)})"


def test_circles_finds_a_circle_through_a_function_level_import_and_resolves_from_imports() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []
    source = ("import numpy\nfrom trainer import storage\ndef f():\n    from trainer.data import wds\n"
              "if TYPE_CHECKING:\n    import trainer.data.sources\nfrom . import names\nfrom .names import X\n")
    modules = {name: Path(name) for name in ("trainer", "trainer.storage", "trainer.data", "trainer.data.readers",
                                             "trainer.data.wds", "trainer.data.sources", "trainer.data.names")}
    assert _imports("trainer.data.readers", source, False, modules) == {
        "trainer.storage", "trainer.data.wds", "trainer.data.sources", "trainer.data.names"}


def test_the_project_has_no_import_circle() -> None:
    graph = import_graph()
    assert "trainer.data.sources" in graph and graph["trainer.data.sources"], "the graph was not read"
    found = circles(graph)
    assert not found, "import circles (break each by moving what the back edge needs below both):\n" + "\n".join(
        _describe(component, graph) for component in found)


if __name__ == "__main__":  # print the graph of trainer.data, for the docs
    graph = import_graph()
    prefix = sys.argv[1] if len(sys.argv) > 1 else "trainer.data"
    for module in sorted(graph):
        if module.startswith(prefix):
            print(module, "->", ", ".join(sorted(m for m in graph[module] if m.startswith(prefix))))
