"""The package's shape: `src/kinject/` is one subpackage per layer of the pipeline, each importing
only from the layers below it (counting imports inside functions too), no import cycle among
modules, and no module past ~600 lines."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parent.parent / "src" / "kinject"
LAYERS = ["core", "runtime", "knowledge", "tasks", "lm", "rag", "synth", "train", "eval", "report", "experiment",
          "cli"]
"""Bottom to top: a module may import its own layer and the layers before it, never one after."""
MAX_LINES = 650
"""~600 lines, with a little slack for a docstring."""


def _modules() -> dict[str, Path]:
    """Every module under src/kinject, by dotted name (packages by their __init__)."""
    out = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The kinject modules a file imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kinject"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("kinject."))
    return {m for m in found if m in modules}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(p, modules) - {m} for m, p in modules.items()}


def _layer(module: str) -> int | None:
    """The layer index of `kinject.<layer>.…`; None for the package root (version, entry point)."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


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


def test_the_walk_sees_every_subpackage_and_module() -> None:
    """A check that globs one folder would pass on an empty tree: the walk must find the layers."""
    modules = _modules()
    assert {m.split(".")[1] for m in modules if m.count(".") >= 1} >= set(LAYERS)
    assert len([m for m in modules if m.count(".") == 2]) >= 50
    assert {p.name for p in SRC.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(LAYERS), \
        "a folder under src/kinject that is not a layer: add it to LAYERS in its place"
    assert sorted(p.name for p in SRC.glob("*.py")) == ["__init__.py", "__main__.py"]


def _upward(graph: dict[str, set[str]]) -> list[str]:
    """'a → b' for each import of a module in a higher layer than the importer's."""
    found = []
    for m, deps in graph.items():
        here = _layer(m)
        for d in deps:
            there = _layer(d)
            if here is not None and there is not None and there > here:
                found.append(f"{m} → {d}")
    return sorted(found)


def test_layers_import_downward_only() -> None:
    upward = _upward(_graph())
    assert not upward, f"imports from a higher layer: {upward}"


def test_an_upward_import_is_caught() -> None:
    """The check itself: a core module importing the report layer is flagged, the reverse is not,
    and the package root (version, entry point) belongs to no layer."""
    graph = {"kinject.core.errors": {"kinject.report.build"}, "kinject.report.build": {"kinject.core.errors"}}
    assert _upward(graph) == ["kinject.core.errors → kinject.report.build"]
    assert _layer("kinject") is None and _layer("kinject.__main__") is None


def test_no_import_cycle_among_kinject_modules() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, " → ".join(cycle or [])


def test_data_modules_import_downward_only() -> None:
    graph = _graph()
    order = ["kinject.tasks.task", "kinject.knowledge.corpus", "kinject.knowledge.furniture", "kinject.knowledge.spans",
             "kinject.tasks.cloze", "kinject.tasks.newfacts", "kinject.tasks.registry"]
    for i, m in enumerate(order):
        assert not graph[m] & set(order[i + 1:]), f"{m} imports {graph[m] & set(order[i + 1:])}"


def test_no_module_is_over_about_600_lines() -> None:
    sizes = {str(p.relative_to(SRC)): len(p.read_text().splitlines()) for p in SRC.rglob("*.py")}
    assert {n: s for n, s in sizes.items() if s > MAX_LINES} == {}


def test_every_public_function_and_class_has_a_docstring() -> None:
    """A reader learns why a public name exists from its docstring."""
    missing = []

    def walk(body: list[ast.stmt], path: Path, prefix: str) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                if not ast.get_docstring(node):
                    missing.append(f"{path.relative_to(SRC)}:{node.lineno} {prefix}{node.name}")
                if isinstance(node, ast.ClassDef):
                    walk(node.body, path, f"{prefix}{node.name}.")

    for path in sorted(SRC.rglob("*.py")):
        walk(ast.parse(path.read_text()).body, path, "")
    assert not missing, f"{len(missing)} public names without a docstring: {missing[:20]}"


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
    for path in SRC.rglob("*.py"):
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


def test_the_public_api_is_small_and_resolves() -> None:
    import kinject

    assert set(kinject.__all__) == {"__version__", "load_config", "run", "write_report", "load_task", "KinjectError"}
    for name in kinject.__all__:
        assert getattr(kinject, name) is not None
    assert issubclass(kinject.KinjectError, Exception)
