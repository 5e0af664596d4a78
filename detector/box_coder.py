"""One coder for both directions: boxes and landmarks relative to anchors (SSD / RetinaFace coding).

Anchors are ``[..., 4]`` ``(cx, cy, w, h)``; boxes x1y1x2y2; landmarks ``[..., 5, 2]``; all in the
same pixel frame. With variances ``(v0, v1)``:

    box:      d_xy = (c_xy - a_xy) / (v0 * a_wh),   d_wh = log(wh / a_wh) / v1
    landmark: d_k  = (p_k - a_xy) / (v0 * a_wh)

The same maths serves torch tensors (eager detector, training) and numpy arrays (the ONNX runtimes'
postprocess, :mod:`detector.postprocess`): each method works on either, returning the type it gets.
This module does not import torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["BoxCoder"]


def _exp_log_cat(x: Any) -> tuple[Callable, Callable, Callable]:
    """``exp``, ``log`` and last-axis concatenation for numpy arrays or torch tensors."""
    if isinstance(x, np.ndarray):
        return np.exp, np.log, lambda parts: np.concatenate(parts, axis=-1)
    import torch  # a tensor came in: torch is loaded already

    return torch.exp, torch.log, lambda parts: torch.cat(parts, dim=-1)


class BoxCoder:
    def __init__(self, variance: tuple[float, float] = (0.1, 0.2)) -> None:
        self.variance = (float(variance[0]), float(variance[1]))

    def encode_boxes(self, boxes: Any, anchors: Any) -> Any:
        """``boxes: [..., 4]`` x1y1x2y2, ``anchors: [..., 4]`` -> deltas ``[..., 4]``."""
        v0, v1 = self.variance
        _, log, cat = _exp_log_cat(boxes)
        centre = (boxes[..., :2] + boxes[..., 2:]) / 2
        size = boxes[..., 2:] - boxes[..., :2]
        d_xy = (centre - anchors[..., :2]) / (v0 * anchors[..., 2:])
        d_wh = log(size / anchors[..., 2:]) / v1
        return cat([d_xy, d_wh])

    def decode_boxes(self, deltas: Any, anchors: Any) -> Any:
        """``deltas: [..., 4]``, ``anchors: [..., 4]`` -> boxes ``[..., 4]`` x1y1x2y2."""
        v0, v1 = self.variance
        exp, _, cat = _exp_log_cat(deltas)
        centre = anchors[..., :2] + deltas[..., :2] * v0 * anchors[..., 2:]
        size = anchors[..., 2:] * exp(deltas[..., 2:] * v1)
        x1y1 = centre - size / 2
        return cat([x1y1, x1y1 + size])

    def encode_landmarks(self, landmarks: Any, anchors: Any) -> Any:
        """``landmarks: [..., 5, 2]``, ``anchors: [..., 4]`` -> ``[..., 10]``."""
        v0 = self.variance[0]
        d = (landmarks - anchors[..., None, :2]) / (v0 * anchors[..., None, 2:])
        return d.reshape(*d.shape[:-2], 10)

    def decode_landmarks(self, deltas: Any, anchors: Any) -> Any:
        """``deltas: [..., 10]``, ``anchors: [..., 4]`` -> ``[..., 5, 2]``."""
        v0 = self.variance[0]
        d = deltas.reshape(*deltas.shape[:-1], 5, 2)
        return anchors[..., None, :2] + d * v0 * anchors[..., None, 2:]
