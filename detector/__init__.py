"""RetinaFace face detector: model, weights, anchors, box coding and batched inference."""

from .config import AnchorConfig, ModelConfig, available_presets, get_preset
from .inference import Detections, Detector, InputImageError, PostprocessConfig, ResizePolicy
from .model import RetinaFace, RetinaFaceOutput
from .weights import CheckpointError, load_model, resolve_weights, save_checkpoint

__all__ = [
    "AnchorConfig",
    "CheckpointError",
    "Detections",
    "Detector",
    "InputImageError",
    "ModelConfig",
    "PostprocessConfig",
    "ResizePolicy",
    "RetinaFace",
    "RetinaFaceOutput",
    "available_presets",
    "get_preset",
    "load_model",
    "resolve_weights",
    "save_checkpoint",
]
