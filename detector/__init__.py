"""RetinaFace face detector: model, weights, anchors, box coding and batched inference.

Names are imported lazily, so numpy-only tools (``detector.evaluation``) start without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "AnchorConfig": "config",
    "ModelConfig": "config",
    "available_presets": "config",
    "get_preset": "config",
    "Detections": "api",
    "Detector": "inference",
    "DetectorSpec": "spec",
    "FaceDetector": "api",
    "InputImageError": "api",
    "PostprocessConfig": "api",
    "ResizePolicy": "config",
    "RetinaFace": "model",
    "RetinaFaceOutput": "model",
    "CheckpointError": "hub",
    "load_model": "weights",
    "resolve_weights": "hub",
    "save_checkpoint": "weights",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .api import Detections, FaceDetector, InputImageError, PostprocessConfig  # noqa: F401
    from .config import AnchorConfig, ModelConfig, ResizePolicy, available_presets, get_preset  # noqa: F401
    from .hub import CheckpointError, resolve_weights  # noqa: F401
    from .inference import Detector  # noqa: F401
    from .model import RetinaFace, RetinaFaceOutput  # noqa: F401
    from .spec import DetectorSpec  # noqa: F401
    from .weights import load_model, save_checkpoint  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
