"""A worker that runs the ONNX runtimes imports neither torch nor ``onnx``; OpenVINO's compiled-model
cache; no import cycle among the detector's modules.

Each check builds and runs the detector in a fresh process (``sys.modules`` of this one has both)
with its own cache folder, pre-seeded by this process with what only a first run makes (the ONNX
export of the ``.pth``, the shape-generic copy of the fixed-size SCRFD file)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from detector.hub import sha256sum
from tests.shared import REPO_ROOT, asset

SCRFD = "weights/peers/scrfd_500m_bnkps.onnx"
IMAGE = "images/group_insightface_t1.jpg"

_CHILD = """
import json, sys
import cv2
from detector.spec import DetectorSpec
spec = DetectorSpec(**json.loads(sys.argv[1]))
det = spec.build()
d = det.detect([cv2.imread(sys.argv[2])], conf_threshold=0.5)[0]
print(json.dumps({"faces": len(d), "type": type(d.boxes).__module__,
                  "torch": "torch" in sys.modules, "onnx": "onnx" in sys.modules}))
"""


@pytest.fixture(scope="module")
def seeded_cache(tmp_path_factory, mobilenet_weights):
    """A cache folder holding the export of the .pth and the rewritten SCRFD file."""
    from detector.export import export_onnx
    from detector.spec import DetectorSpec

    cache = tmp_path_factory.mktemp("cache")
    export = cache / "onnx" / f"{mobilenet_weights.stem}-{sha256sum(mobilenet_weights)[:16]}.onnx"
    export_onnx(mobilenet_weights, export)
    old = os.environ.get("FACEPREP_CACHE")
    os.environ["FACEPREP_CACHE"] = str(cache)
    try:
        DetectorSpec(weights=str(asset(SCRFD)), runtime="onnxruntime", threads=1).build()
    finally:
        if old is None:
            del os.environ["FACEPREP_CACHE"]
        else:
            os.environ["FACEPREP_CACHE"] = old
    assert list((cache / "scrfd").glob("*.onnx"))
    return cache, export


def _run_child(cache: Path, **spec) -> dict:
    env = {**os.environ, "FACEPREP_CACHE": str(cache), "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(spec), str(asset(IMAGE))], env=env,
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
@pytest.mark.parametrize("weights", ["onnx", "pth"])
def test_retinaface_on_onnx_runtimes_imports_neither_torch_nor_onnx(seeded_cache, mobilenet_weights, runtime,
                                                                    weights):
    cache, export = seeded_cache
    path = export if weights == "onnx" else mobilenet_weights  # a .pth: its export from the cache
    got = _run_child(cache, weights=str(path), runtime=runtime, threads=1)
    assert got == {"faces": 6, "type": "numpy", "torch": False, "onnx": False}


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_scrfd_imports_neither_torch_nor_onnx(seeded_cache, runtime):
    cache, _ = seeded_cache
    got = _run_child(cache, weights=str(asset(SCRFD)), runtime=runtime, threads=1, resize="long:640")
    assert got == {"faces": 6, "type": "numpy", "torch": False, "onnx": False}


def test_openvino_keeps_compiled_models_in_the_cache(seeded_cache):
    """The first OpenVINO build writes a compiled blob under cache/openvino; the next one reuses it."""
    cache, export = seeded_cache
    folder = cache / "openvino"
    _run_child(cache, weights=str(export), runtime="openvino", threads=1)
    blobs = sorted(folder.glob("*.blob"))
    assert blobs
    stamps = {b: b.stat().st_mtime_ns for b in blobs}
    _run_child(cache, weights=str(export), runtime="openvino", threads=1)
    assert sorted(folder.glob("*.blob")) == blobs and all(b.stat().st_mtime_ns == t for b, t in stamps.items())


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
