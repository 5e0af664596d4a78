"""A worker that runs the ONNX runtimes imports neither torch nor ``onnx``; OpenVINO's compiled-model
cache; no import cycle among the detector's modules.

Each check builds and runs the detector in a fresh process (``sys.modules`` of this one has both)
with its own cache folder, pre-seeded by this process with what only a first run makes (the ONNX
export of the ``.pth``, the shape-generic copy of the fixed-size SCRFD file)."""

from __future__ import annotations

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
