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
    "Detections": "inference",
    "Detector": "inference",
    "InputImageError": "inference",
    "PostprocessConfig": "inference",
    "ResizePolicy": "inference",
    "RetinaFace": "model",
    "RetinaFaceOutput": "model",
    "CheckpointError": "weights",
    "load_model": "weights",
    "resolve_weights": "weights",
    "save_checkpoint": "weights",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .config import AnchorConfig, ModelConfig, available_presets, get_preset  # noqa: F401
    from .inference import Detections, Detector, InputImageError, PostprocessConfig, ResizePolicy  # noqa: F401
    from .model import RetinaFace, RetinaFaceOutput  # noqa: F401
    from .weights import CheckpointError, load_model, resolve_weights, save_checkpoint  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
