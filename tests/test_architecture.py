"""The package's shape, read from its imports with `ast` (no import runs): no import cycle between
modules, and no module imports from a layer above its own (docs/architecture.md states the layers)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tbray"
# Bottom up; a module may import its own part and the parts of lower layers only. "tbray" stands for the
# modules at the top of the package (errors, config, outputs), the ground every part stands on.
LAYERS = [
    {"tbray"},
    {"stats"},
    {"data"},
    {"report", "rayops"},
    {"model"},
    {"train", "external", "predict", "runs"},
    {"audit"},
    {"search", "bench"},
    {"commands"},
]
LAYER = {part: i for i, parts in enumerate(LAYERS) for part in parts}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part(module: str) -> str:
    """'tbray.data.cache' -> 'data'; a top-level module ('tbray.errors') -> 'tbray'."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 2 else "tbray"


def imports() -> dict[str, set[str]]:
    """Every tbray module -> the tbray modules it imports (at its top or inside a function)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tbray":
                for alias in node.names:  # `from tbray.data import cache` names a module; else the module itself
                    found.add(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.split(".")[0] == "tbray"}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles, each as the list of modules around it (depth-first search)."""
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def upward(graph: dict[str, set[str]]) -> list[str]:
    """Imports from a part in a higher layer, or from another part of the same layer."""
    bad = []
    for module, targets in graph.items():
        for target in targets:
            here, there = part(module), part(target)
            if here != there and LAYER[there] >= LAYER[here]:
                bad.append(f"{module} -> {target}")
    return sorted(bad)


def test_every_part_has_a_layer_and_an_empty_init():
    parts = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert parts == set(LAYER) - {"tbray"}
    # Tune's actors unpickle the driver, and rayops.loopback must run before Ray loads: no part's
    # __init__ may import anything.
    assert all((PACKAGE / p / "__init__.py").read_text() == "" for p in parts)


def test_no_import_cycle():
    assert cycles(imports()) == []


def test_no_import_from_a_layer_above():
    assert upward(imports()) == []


@pytest.mark.parametrize("graph, expected", [
    ({"tbray.a.x": {"tbray.b.y"}, "tbray.b.y": {"tbray.a.x"}}, [["tbray.a.x", "tbray.b.y", "tbray.a.x"]]),
    ({"tbray.a.x": {"tbray.b.y"}, "tbray.b.y": set()}, []),
])
def test_the_cycle_check_finds_a_cycle(graph, expected):
    assert cycles(graph) == expected


def test_the_layer_check_finds_an_upward_import():
    assert upward({"tbray.data.cache": {"tbray.search.run"}, "tbray.search.run": set()}) == \
        ["tbray.data.cache -> tbray.search.run"]
    assert upward({"tbray.train.driver": {"tbray.predict.local"}, "tbray.predict.local": set()}) == \
        ["tbray.train.driver -> tbray.predict.local"]
    assert upward({"tbray.search.run": {"tbray.data.cache", "tbray.errors"}, "tbray.data.cache": set(),
                   "tbray.errors": set()}) == []
