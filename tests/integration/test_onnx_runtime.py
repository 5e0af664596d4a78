"""RetinaFace exported to ONNX on onnxruntime and OpenVINO: golden parity, dynamic shapes, batching,
the file checks of ``DetectorSpec.check()``, and clear errors.

The model is exported once per session (``exported_onnx``)."""

from __future__ import annotations

import subprocess
import sys

from tests.shared import REPO_ROOT


def test_onnx_models_needs_no_torch(exported_onnx, mobilenet_weights):
    code = ("import sys; from detector.onnx_models import inspect_onnx, check_weights_file; "
            f"assert inspect_onnx({str(exported_onnx)!r}).family == 'retinaface'; "
            f"check_weights_file({str(mobilenet_weights)!r}, family='retinaface'); "
            f"check_weights_file({str(exported_onnx)!r}, family='retinaface'); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)
