"""The shape of the code: no import cycle between the files of ``common/``, ``detector/`` and
``pipeline/`` (module-level and function-level imports; imports under ``if TYPE_CHECKING:`` aside),
and no module over :data:`MAX_LINES` lines. Pure ``ast``: nothing is imported.

An import is an edge from the importing file to the file Python executes for the name:
``import a.b`` and ``from a import b`` (``b`` a submodule) -> ``a/b.py`` (or ``a/b/__init__.py``);
``from a import name`` (``name`` defined in ``a``) -> ``a/__init__.py``. Relative imports are
resolved against the importing file's package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "detector", "pipeline")
MAX_LINES = 500


def module_files(root: Path = REPO) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under :data:`PACKAGES` (``a/__init__.py`` is ``a``)."""
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except the bodies of ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _deepest(name: str, modules: dict[str, Path]) -> str | None:
    """``name`` if it is a known module, else its longest known parent (``None`` outside the tree)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of the tree it imports (see the module docstring)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base_parts = package.split(".")
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            for target in targets:
                resolved = _deepest(target, modules)
                if resolved is not None and resolved != name:
                    edges.add(resolved)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle path ``[a, b, ..., a]`` per strongly connected component with a cycle (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0

    def connect(v: str) -> None:  # recursion depth is bounded by the number of modules
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_cycle_in(component, graph) for component in sorted(components)]


def _cycle_in(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first inside it)."""
    inside = set(component)
    start = component[0]
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & inside):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in parent:
                    parent[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # a strongly connected component always has one


# ------------------------------------------------------------------------------ the checker itself


def _write_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_graph_resolves_every_import_form(tmp_path: Path) -> None:
    _write_tree(tmp_path, {
        "pipeline/__init__.py": "",
        "pipeline/a.py": "import pipeline.b\nfrom pipeline import c\nfrom . import d as dd\n",
        "pipeline/b.py": "from pipeline.sub import thing\n",
        "pipeline/c.py": "def f():\n    from .sub.x import y\n",
        "pipeline/d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pipeline.a import z\n"
                         "else:\n    import numpy\n",
        "pipeline/sub/__init__.py": "from .x import thing\n",
        "pipeline/sub/x.py": "from .. import b\nfrom ..sub import x2\nimport os\n",
        "pipeline/sub/x2.py": "",
        "common/__init__.py": "",
        "detector/__init__.py": "",
    })
    graph = import_graph(module_files(tmp_path))
    assert graph["pipeline.a"] == {"pipeline.b", "pipeline.c", "pipeline.d"}
    assert graph["pipeline.b"] == {"pipeline.sub"}  # a name of the package: its __init__
    assert graph["pipeline.c"] == {"pipeline.sub.x"}  # function-level, relative
    assert graph["pipeline.d"] == set()  # TYPE_CHECKING only
    assert graph["pipeline.sub"] == {"pipeline.sub.x"}
    assert graph["pipeline.sub.x"] == {"pipeline.b", "pipeline.sub.x2"}
    # b -> sub -> sub.x -> b
    assert find_cycles(graph) == [["pipeline.b", "pipeline.sub", "pipeline.sub.x", "pipeline.b"]]


def test_find_cycles_reports_each_cycle_once() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"d"}, "f": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"], ["d", "e", "d"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


# ------------------------------------------------------------------------------ the tree


def test_no_import_cycles() -> None:
    modules = module_files()
    assert len(modules) > 50 and "pipeline.job.config" in modules  # the tree was found
    cycles = find_cycles(import_graph(modules))
    assert not cycles, f"{len(cycles)} import cycle(s):\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_over_the_line_limit(package: str) -> None:
    long = {}
    for name, path in module_files().items():
        if name.split(".")[0] == package:
            lines = len(path.read_text(encoding="utf-8").splitlines())
            if lines > MAX_LINES:
                long[str(path.relative_to(REPO))] = lines
    assert not long, f"modules over {MAX_LINES} lines: " + ", ".join(f"{p} ({n})" for p, n in sorted(long.items()))


ALIGNMENT_CALLS = ("select_faces", "norm_crop(", "estimate_norm")
"""Face choice and alignment live in library code (:mod:`pipeline.select`, :mod:`pipeline.align`,
:mod:`pipeline.stage`, :mod:`pipeline.curation`); the batch job only calls it."""


def test_the_job_never_chooses_or_aligns_faces_itself() -> None:
    files = sorted((REPO / "pipeline" / "job").rglob("*.py"))
    assert len(files) > 10 and any(p.name == "actors.py" for p in files)  # the tree was found
    found = {f"{p.relative_to(REPO)}:{i}: {name}": line.strip()
             for p in files for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             for name in ALIGNMENT_CALLS if name in line}
    assert not found, "pipeline/job/ calls alignment code directly:\n" + "\n".join(found)
