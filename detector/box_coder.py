"""One coder for both directions: boxes and landmarks relative to anchors (SSD / RetinaFace coding).

Anchors are ``Tensor[..., 4]`` ``(cx, cy, w, h)``; boxes x1y1x2y2; landmarks ``[..., 5, 2]``; all in
the same pixel frame. With variances ``(v0, v1)``:

    box:      d_xy = (c_xy - a_xy) / (v0 * a_wh),   d_wh = log(wh / a_wh) / v1
    landmark: d_k  = (p_k - a_xy) / (v0 * a_wh)
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["BoxCoder"]


class BoxCoder:
    def __init__(self, variance: tuple[float, float] = (0.1, 0.2)) -> None:
        self.variance = (float(variance[0]), float(variance[1]))

    def encode_boxes(self, boxes: Tensor, anchors: Tensor) -> Tensor:
        """``boxes: Tensor[..., 4]`` x1y1x2y2, ``anchors: Tensor[..., 4]`` -> deltas ``Tensor[..., 4]``."""
        v0, v1 = self.variance
        centre = (boxes[..., :2] + boxes[..., 2:]) / 2
        size = boxes[..., 2:] - boxes[..., :2]
        d_xy = (centre - anchors[..., :2]) / (v0 * anchors[..., 2:])
        d_wh = torch.log(size / anchors[..., 2:]) / v1
        return torch.cat([d_xy, d_wh], dim=-1)

    def decode_boxes(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """``deltas: Tensor[..., 4]``, ``anchors: Tensor[..., 4]`` -> boxes ``Tensor[..., 4]`` x1y1x2y2."""
        v0, v1 = self.variance
        centre = anchors[..., :2] + deltas[..., :2] * v0 * anchors[..., 2:]
        size = anchors[..., 2:] * torch.exp(deltas[..., 2:] * v1)
        x1y1 = centre - size / 2
        return torch.cat([x1y1, x1y1 + size], dim=-1)

    def encode_landmarks(self, landmarks: Tensor, anchors: Tensor) -> Tensor:
        """``landmarks: Tensor[..., 5, 2]``, ``anchors: Tensor[..., 4]`` -> ``Tensor[..., 10]``."""
        v0 = self.variance[0]
        d = (landmarks - anchors[..., None, :2]) / (v0 * anchors[..., None, 2:])
        return d.flatten(-2)

    def decode_landmarks(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """``deltas: Tensor[..., 10]``, ``anchors: Tensor[..., 4]`` -> ``Tensor[..., 5, 2]``."""
        v0 = self.variance[0]
        d = deltas.unflatten(-1, (5, 2))
        return anchors[..., None, :2] + d * v0 * anchors[..., None, 2:]
