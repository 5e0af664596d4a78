"""The builders behind :data:`detector.spec.FAMILIES`: a resolved :class:`DetectorSpec` -> a detector.

Each builder imports only what its runtime needs, so a process that runs OpenVINO never builds a
torch model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .api import FaceDetector

if TYPE_CHECKING:  # pragma: no cover
    from .spec import DetectorSpec

__all__ = ["build_retinaface", "build_scrfd"]


def build_retinaface(spec: "DetectorSpec") -> FaceDetector:
    """RetinaFace on ``spec.runtime``: eager torch (reference-exact), or the exported ONNX graph on
    onnxruntime / OpenVINO (a ``.pth`` is exported once into the cache, see
    :func:`detector.export.onnx_for_weights`)."""
    if spec.threads:  # the torch postprocess runs in every runtime: its threads follow the spec too
        import torch

        torch.set_num_threads(int(spec.threads))
    if spec.runtime == "torch":
        from .inference import Detector

        return Detector.from_weights(spec.weights, preset=spec.preset, device=spec.device,
                                     fp16=spec.precision == "fp16", resize=spec.resize,
                                     postprocess=spec.postprocess)
    from .onnx_runtime import OnnxRetinaFace

    return OnnxRetinaFace.from_spec(spec)


def build_scrfd(spec: "DetectorSpec") -> FaceDetector:
    """insightface SCRFD (``*_kps.onnx`` / ``det_10g.onnx``) on onnxruntime or OpenVINO, decoded by
    the project (:mod:`detector.scrfd`)."""
    from .scrfd import SCRFDDetector

    return SCRFDDetector.from_spec(spec)
