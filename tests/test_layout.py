"""The package's shape: no import loops, a storage layer that stands alone, thin stages, short files."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("cache", "pipeline", "stages")
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    """Dotted module name → file, for every module of the three packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every import in a module, function-local ones included."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, None, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name if _is_package(name) else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in MODULES:
                    found.append((submodule, None, node.lineno))
                else:
                    found.append((source, alias.name, node.lineno))
    return found


def _graph() -> dict[str, set[str]]:
    """Module → the package modules it imports (the nearest known module of each dotted import)."""
    graph = {}
    for name in MODULES:
        edges = set()
        for module, _, _ in _imports(name):
            while module and module not in MODULES:
                module = module.rpartition(".")[0]
            if module and module != name:
                edges.add(module)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for neighbour in sorted(graph[node]):
            if neighbour not in index:
                visit(neighbour)
                low[node] = min(low[node], low[neighbour])
            elif neighbour in on_stack:
                low[node] = min(low[node], index[neighbour])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_the_checker_sees_the_package():
    assert {"cache", "pipeline", "stages"} <= {name.split(".")[0] for name in MODULES}
    assert len(MODULES) > 30


def test_the_cycle_finder_finds_a_planted_loop():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_loop():
    assert _cycles(_graph()) == []


def test_cache_imports_nothing_from_pipeline_or_stages():
    offending = [
        f"{MODULES[name].relative_to(ROOT)}:{line} imports {module}"
        for name in MODULES if name.split(".")[0] == "cache"
        for module, _, line in _imports(name) if module.split(".")[0] in ("pipeline", "stages")
    ]
    assert offending == []


def test_no_stage_reaches_into_another_stage():
    """A stage may call another stage's public names (its `run`, its config), never a private one."""
    offending = []
    for name in MODULES:
        if name.split(".")[0] != "stages":
            continue
        tree = ast.parse(MODULES[name].read_text())
        stage_aliases = {}
        for module, imported, line in _imports(name):
            if module.startswith("stages.") and module != name:
                if imported is not None and imported.startswith("_"):
                    offending.append(f"{name}:{line} imports {module}.{imported}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "stages":
                for alias in node.names:
                    stage_aliases[alias.asname or alias.name] = f"stages.{alias.name}"
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in stage_aliases and node.attr.startswith("_")
                    and stage_aliases[node.value.id] != name):
                offending.append(f"{name}:{node.lineno} uses {stage_aliases[node.value.id]}.{node.attr}")
    assert offending == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_file_over_the_limit(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name].relative_to(ROOT)} has {lines} lines (limit {MAX_LINES})"
