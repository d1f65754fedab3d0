"""The code's structure: no import cycle among toolchain modules (function-level imports included, so
a cycle cannot hide inside a function), none at module level across toolchain and exporters, no
module-level toolchain → exporters import (exporters depend on toolchain), and every "DESIGN §N"
the code or README cites is a section of docs/DESIGN.md."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> dict[str, Path]:
    mods = {}
    for package in ("toolchain", "exporters"):
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            mods[name] = path
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path], everywhere: bool) -> set[str]:
    """The repository modules `name` imports (at module level, or anywhere when `everywhere`)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    if everywhere:
        nodes = list(ast.walk(tree))
    else:  # top-level statements, and those inside a top-level if / try (guarded imports)
        nodes = [n for top in tree.body
                 for n in (ast.walk(top) if isinstance(top, (ast.If, ast.Try)) else [top])]
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found.update(c for c in [target, *(f"{target}.{a.name}" for a in node.names)] if c in mods)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in mods)
    return found - {name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle in `graph`, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state and (found := visit(v)):
                return found
        stack.pop()
        state[u] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_graph_walk_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("everywhere, packages", [(True, ("toolchain",)), (False, ("toolchain", "exporters"))])
def test_no_import_cycles(everywhere, packages):
    mods = {k: v for k, v in _modules().items() if k.split(".")[0] in packages}
    graph = {name: _imports(name, path, mods, everywhere) for name, path in mods.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_toolchain_imports_no_exporter_at_module_level():
    mods = _modules()
    bad = {(name, dep) for name, path in mods.items() if name.startswith("toolchain")
           for dep in _imports(name, path, mods, everywhere=False) if dep.startswith("exporters")}
    assert not bad


def test_every_design_reference_names_a_section_that_exists():
    import re

    sections = set(re.findall(r"^## (\d+)\.", (ROOT / "docs" / "DESIGN.md").read_text(), re.M))
    cited = {}
    for path in [*ROOT.glob("toolchain/**/*.py"), *ROOT.glob("exporters/**/*.py"), *ROOT.glob("benchmarks/**/*.py"),
                 *ROOT.glob("tests/*.py"), ROOT / "README.md"]:
        for number in re.findall(r"DESIGN(?:\.md)? §(\d+)", path.read_text()):
            cited.setdefault(number, path.relative_to(ROOT))
    missing = {n: str(p) for n, p in cited.items() if n not in sections}
    assert cited and not missing, f"cited but absent from docs/DESIGN.md: {missing}"
