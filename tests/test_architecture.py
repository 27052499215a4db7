"""The package's shape: data flows one way (no import cycle among kinject modules, counting
imports inside functions too) and no module grows past ~600 lines."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parent.parent / "src" / "kinject"
MAX_LINES = 650
"""~600 lines, with a little slack for a docstring."""


def _imports(path: Path) -> set[str]:
    """The kinject modules a file imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kinject"):
            if node.module == "kinject":  # from kinject import cloze, corpus
                found.update(f"kinject.{a.name}" for a in node.names if (SRC / f"{a.name}.py").is_file())
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("kinject."))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {f"kinject.{p.stem}": p for p in SRC.glob("*.py") if p.stem not in ("__init__", "__main__")}
    return {m: {d for d in _imports(p) if d in modules and d != m} for m, p in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_among_kinject_modules() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, " → ".join(cycle or [])


def test_data_modules_import_downward_only() -> None:
    graph = _graph()
    order = ["kinject.tasks", "kinject.corpus", "kinject.furniture", "kinject.spans", "kinject.cloze",
             "kinject.newfacts", "kinject.registry"]
    for i, m in enumerate(order):
        assert not graph[m] & set(order[i + 1:]), f"{m} imports {graph[m] & set(order[i + 1:])}"


def test_no_module_is_over_about_600_lines() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in SRC.glob("*.py")}
    assert {n: s for n, s in sizes.items() if s > MAX_LINES} == {}


def test_every_third_party_import_is_declared() -> None:
    """A package kinject imports by name is in pyproject.toml's dependencies (or dev extras), not
    left to arrive through another package's requirements."""
    import importlib.metadata as md
    import re
    import sys
    import tomllib

    project = tomllib.loads((SRC.parent.parent / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower().replace("_", "-")
                for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    owners = md.packages_distributions()
    missing = set()
    for path in SRC.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            for name in names:
                top = name.split(".")[0]
                if top == "kinject" or top in sys.stdlib_module_names:
                    continue
                dists = {d.lower().replace("_", "-") for d in owners.get(top, [top])}
                if not dists & declared:
                    missing.add(f"{top} ({path.name})")
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"
