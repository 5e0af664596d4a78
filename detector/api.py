"""The detector interface every face detector of the project implements (no torch needed).

* :class:`FaceDetector` - the protocol: ``detect(images, *, resize=None, conf_threshold=None, ...)``
  -> ``list[Detections]``, one per image, in original-image pixels. RetinaFace in eager torch
  (:class:`detector.inference.Detector`), RetinaFace exported to ONNX and run by onnxruntime or
  OpenVINO, and insightface's SCRFD models all satisfy it; callers never care which.
* :class:`Detections` - the result of one image.
* :class:`PostprocessConfig` - score threshold, top-k, NMS and keep-top-k of any anchor detector.
* :func:`as_bgr_uint8` - the one validation of a caller's image (dtype, channels), with messages
  that name the image.

Build detectors from a :class:`detector.spec.DetectorSpec`, never by hand in callers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np

from .config import ResizePolicy

__all__ = ["Detections", "FaceDetector", "InputImageError", "PostprocessConfig", "as_bgr_uint8"]


class InputImageError(ValueError):
    """An input image cannot be used (empty, wrong dtype or channel count)."""


@dataclass(frozen=True)
class PostprocessConfig:
    """Reference (biubug6 ``detect.py``) defaults: keep scores > 0.02, 5000 best before NMS at IoU 0.4
    (legacy +1-pixel areas), 750 after.

    ``vote_iou``: ``None`` (default, the reference) keeps each NMS survivor's own box and landmarks;
    a value in (0, 1] replaces them by the score-weighted mean over the candidates whose IoU with
    the survivor is ``>=`` it (:func:`detector.postprocess.vote`): near-tied anchors then cannot
    swap the result (the bf16 landmark tail, issue 23). Scores and the kept set are unchanged."""

    conf_threshold: float = 0.02
    nms_threshold: float = 0.4
    top_k: int = 5000
    keep_top_k: int = 750
    nms_plus_one: bool = True
    vote_iou: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.conf_threshold) < 1.0:
            raise ValueError(f"conf_threshold must be in [0, 1), got {self.conf_threshold}")
        if not 0.0 < float(self.nms_threshold) <= 1.0:
            raise ValueError(f"nms_threshold must be in (0, 1], got {self.nms_threshold}")
        if int(self.top_k) < 1 or int(self.keep_top_k) < 1:
            raise ValueError(f"top_k and keep_top_k must be >= 1, got {self.top_k}, {self.keep_top_k}")
        if self.vote_iou is not None and not 0.0 < float(self.vote_iou) <= 1.0:
            raise ValueError(f"vote_iou must be None or in (0, 1], got {self.vote_iou}")

    def override(self, **fields: float | int | None) -> PostprocessConfig:
        """This config with the given non-``None`` fields replaced (a detector's per-call overrides)."""
        given = {k: v for k, v in fields.items() if v is not None}
        return dataclasses.replace(self, **given) if given else self


@dataclass(frozen=True)
class Detections:
    """Faces found in one image, sorted by decreasing score, in original-image pixels.

    Attributes:
        boxes: ``[N, 4]`` x1, y1, x2, y2.
        scores: ``[N]`` face probability.
        landmarks: ``[N, 5, 2]`` left eye, right eye, nose, left mouth corner, right mouth corner
            (image left first).

    The eager torch detector returns torch tensors on the model's device; the ONNX runtimes
    (onnxruntime, OpenVINO: RetinaFace and SCRFD) return float32 numpy arrays. :meth:`numpy` gives
    float32 numpy arrays either way: callers that need arrays call it.
    """

    boxes: Any
    scores: Any
    landmarks: Any

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def numpy(self) -> Detections:
        def conv(x: Any) -> np.ndarray:
            if hasattr(x, "detach"):  # a torch tensor; duck-typed so this module needs no torch
                x = x.detach().float().cpu().numpy()
            return np.asarray(x, np.float32)

        return Detections(conv(self.boxes), conv(self.scores), conv(self.landmarks))


@runtime_checkable
class FaceDetector(Protocol):
    """What the stage, the jobs, verification and WIDER evaluation need from a detector.

    ``images`` is a list of ``HxWx3`` uint8 BGR arrays (any sizes; ``HxW`` and ``HxWx4`` are
    converted, see :func:`as_bgr_uint8`). ``resize`` overrides the detector's own policy for
    this call; ``conf_threshold`` etc. override its :class:`PostprocessConfig`. One
    :class:`Detections` per image, in original-image pixels, sorted by score.
    """

    resize: ResizePolicy
    postprocess_config: PostprocessConfig

    def detect(self, images: Sequence[np.ndarray], *, resize: ResizePolicy | str | int | None = None,
               conf_threshold: float | None = None, nms_threshold: float | None = None,
               top_k: int | None = None, keep_top_k: int | None = None,
               vote_iou: float | None = None) -> list[Detections]: ...


def as_bgr_uint8(image: Any, index: int) -> np.ndarray:
    """Validate one input image; documented conversions: (H, W) and (H, W, 1) grayscale are
    replicated to 3 channels; (H, W, 4) BGRA drops alpha. Anything else non-uint8 is refused."""
    if not isinstance(image, np.ndarray):
        raise InputImageError(f"image {index}: expected a numpy array, got {type(image).__name__}")
    if image.size == 0:
        raise InputImageError(f"image {index}: empty array of shape {image.shape}")
    if image.dtype != np.uint8:
        raise InputImageError(
            f"image {index}: expected uint8 BGR pixels, got dtype {image.dtype}; convert first "
            "(e.g. np.clip(img * 255, 0, 255).astype(np.uint8) for floats in [0, 1])"
        )
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return np.ascontiguousarray(image[:, :, :3])
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise InputImageError(f"image {index}: expected (H, W), (H, W, 3) or (H, W, 4), got shape {image.shape}")


def check_image_list(images: Any) -> None:
    """Refuse a bare array where a list of images is expected, and an empty list."""
    if isinstance(images, np.ndarray) and images.ndim in (2, 3) and images.dtype != object:
        raise InputImageError("pass a list of images (for one image: [image])")
    if len(images) == 0:
        raise InputImageError("no images given")
