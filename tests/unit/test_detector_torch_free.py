"""A worker that runs the ONNX runtimes imports neither torch nor ``onnx``; OpenVINO's compiled-model
cache; no import cycle among the detector's modules.

Each check builds and runs the detector in a fresh process (``sys.modules`` of this one has both)
with its own cache folder, pre-seeded by this process with what only a first run makes (the ONNX
export of the ``.pth``, the shape-generic copy of the fixed-size SCRFD file)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.shared import REPO_ROOT

# ---------------------------------------------------------------------------- import graph


def _imports(path: Path, package_root: Path) -> set[str]:
    """Modules of the project ``path`` imports (module level or in functions; TYPE_CHECKING aside)."""
    tree = ast.parse(path.read_text())
    module = ".".join(path.relative_to(package_root).with_suffix("").parts)
    package = module.removesuffix(".__init__") if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def test_detector_modules_have_no_import_cycle():
    root = REPO_ROOT
    files = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (root / "detector").rglob("*.py")}
    graph = {m: {i for i in _imports(p, root) if i in files and i != m} for m, p in files.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                dfs(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            dfs(m)


def test_detector_modules_are_under_500_lines():
    long = {str(p.relative_to(REPO_ROOT)): n for p in (REPO_ROOT / "detector").glob("*.py")
            if (n := len(p.read_text().splitlines())) >= 500}
    assert not long, long
