"""Coarse-to-fine landmark placement: the geometry of the refinement windows (pure numpy + cv2).

The detector finds faces at a coarse size (:attr:`pipeline.config.AlignConfig.resize`: photos are
shrunk, never enlarged). A kept face that the coarse pass saw smaller than
:attr:`~pipeline.config.AlignConfig.refine_size` pixels is detected once more in a square window
around it, resampled so that the face is ``refine_size`` pixels wide (never enlarged beyond the
photo's own pixels): the landmarks are placed where this detector places them best, at a fraction
of the cost of detecting the whole photo at full size. Every window of a batch has the same shape
(``window_side(refine_size)``), so the detector runs them as one batch.

Coordinates: "photo" pixels are the full-resolution photo's; a window's pixels are
``s * (p - centre) + side / 2`` for photo pixel ``p``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.select import box_iou

__all__ = ["CONTEXT", "SCALE_STEPS", "RefineWindow", "match_face", "needs_refinement", "refine_windows", "window_side"]

CONTEXT = 2.0
"""Window side over the face side: the face fills half of its window (anchors of 2x the face and
the SSH context modules see the face's surroundings as they do in a whole photo)."""

MATCH_IOU = 0.4
"""A refined detection replaces the coarse one only when its box overlaps the coarse box this much."""


def window_side(refine_size: int) -> int:
    """Side in pixels of every refinement window for faces of ``refine_size`` pixels (a multiple
    of 32, the detector's largest stride, so the feature maps have no ragged edge)."""
    return int(np.ceil(CONTEXT * refine_size / 32.0) * 32)


def needs_refinement(face_side: np.ndarray, coarse_scale: float, refine_size: int) -> np.ndarray:
    """``[K]`` bool: faces whose coarse detection saw them smaller than ``refine_size`` pixels
    while the photo holds more pixels of them (a refinement at ``min(1, refine_size / side)``
    would see them larger).

    Args:
        face_side: ``[K]`` longer box side in photo pixels.
        coarse_scale: the coarse pass's resize factor (photo -> detector input), ``<= 1``.
        refine_size: the face size of the refinement.
    """
    side = np.asarray(face_side, np.float64)
    seen = side * coarse_scale
    return (coarse_scale < 1.0) & (seen < refine_size * 0.95)


@dataclass(frozen=True)
class RefineWindow:
    """One face's window: photo pixel ``p`` lands at ``scale * (p - centre) + side / 2``.

    ``scale`` is ``min(1, refine_size / face side)``: the face at ``refine_size`` pixels, or at the
    photo's own resolution when it is smaller than that.
    """

    centre: tuple[float, float]
    scale: float
    side: int

    def to_window(self, points: np.ndarray) -> np.ndarray:
        """``[..., 2]`` photo pixels -> window pixels."""
        c = np.asarray(self.centre, np.float64)
        return (np.asarray(points, np.float64) - c) * self.scale + self.side / 2.0

    def to_photo(self, points: np.ndarray) -> np.ndarray:
        """``[..., 2]`` window pixels -> photo pixels."""
        c = np.asarray(self.centre, np.float64)
        return (np.asarray(points, np.float64) - self.side / 2.0) / self.scale + c

    def matrix(self, source_ratio: tuple[float, float]) -> np.ndarray:
        """``[2, 3]`` ``cv2.warpAffine`` matrix from an image whose pixel ``q`` is photo pixel
        ``q * source_ratio`` (``(rx, ry)``: 1 for the photo itself, ~N for a 1/N JPEG draft)."""
        rx, ry = source_ratio
        cx, cy = self.centre
        h = self.side / 2.0
        return np.array([[self.scale * rx, 0.0, h - self.scale * cx],
                         [0.0, self.scale * ry, h - self.scale * cy]], np.float64)

    def extract(self, source: np.ndarray, source_ratio: tuple[float, float]) -> np.ndarray:
        """The ``[side, side, 3]`` uint8 window, bilinear; outside the photo: black, as beyond a
        photo's border."""
        return cv2.warpAffine(source, self.matrix(source_ratio), (self.side, self.side), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)


GRID = 32
"""The detector's largest stride: its outputs depend on where a face falls on this grid."""


SCALE_STEPS = 8
"""A shrinking window's scale is snapped to a power of ``2 ** (1 / SCALE_STEPS)`` (the face lands
within +-4.4 % of ``refine_size``): a coarse box a fraction of a percent larger or smaller (another
runtime or precision, e.g. OpenVINO bf16 against torch fp32) then gives the same window, whose
detection otherwise moved a face's landmarks by up to ~2 % of its box width (issue 23)."""


def refine_windows(boxes: np.ndarray, refine_size: int) -> list[RefineWindow]:
    """One :class:`RefineWindow` per ``[K, 4]`` photo-pixel box.

    A window at the photo's own scale (a face smaller than ``refine_size``) starts on a multiple
    of :data:`GRID` photo pixels: the detector then sees the face on the same stride grid as a
    detection of the whole photo at its original size. Its landmarks move by up to ~3% of the box
    width when a face shifts by 8 pixels against that grid (MobileNet-0.25, measured on the
    crowd photo), so a window off the grid would disagree with the full-size detection by that
    much for no other reason. The pixels are then copied, not resampled."""
    side = window_side(refine_size)
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    face = np.maximum(np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]), 1.0)
    scale = np.minimum(1.0, refine_size / face)
    shrink = scale < 1.0
    scale[shrink] = np.minimum(1.0, 2.0 ** (np.round(np.log2(scale[shrink]) * SCALE_STEPS) / SCALE_STEPS))
    centres = np.stack([(b[:, 0] + b[:, 2]) / 2.0, (b[:, 1] + b[:, 3]) / 2.0], axis=1)
    own = scale >= 1.0
    centres[own] = np.round((centres[own] - side / 2.0) / GRID) * GRID + side / 2.0
    return [RefineWindow(centre=(float(c[0]), float(c[1])), scale=float(s), side=side)
            for c, s in zip(centres, scale)]


def match_face(expected: np.ndarray, boxes: np.ndarray) -> int:
    """Index of the detection among ``boxes [M, 4]`` (window pixels) that is the face expected at
    ``expected [4]``: the best overlap, if it reaches :data:`MATCH_IOU`; else ``-1``."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    if not len(b):
        return -1
    ious = box_iou(expected, b)[0]
    j = int(np.argmax(ious))
    return j if ious[j] >= MATCH_IOU else -1
