"""Anchor (prior box) generation, vectorised and cached per input size."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .config import AnchorConfig

__all__ = ["AnchorGenerator", "feature_map_sizes"]


def feature_map_sizes(height: int, width: int, steps: tuple[int, ...]) -> list[tuple[int, int]]:
    """Spatial size of each pyramid level for an ``height x width`` input (``ceil(size / step)``)."""
    return [(math.ceil(height / s), math.ceil(width / s)) for s in steps]


class AnchorGenerator:
    """Square anchors in biubug6's ``PriorBox`` order, in input pixels.

    Order: level, then row, then column, then anchor size -- the order in which the heads emit
    predictions (``permute(0, 2, 3, 1)`` of ``[B, anchors*values, H, W]``).

    Calling it returns ``Tensor[A, 4]`` as ``(cx, cy, w, h)`` in pixels of the network input.
    Results are cached per ``(height, width, device, dtype)``.
    """

    def __init__(self, config: AnchorConfig, *, cache_size: int = 32) -> None:
        self.config = config
        self._cache: dict[tuple, Tensor] = {}
        self._cache_size = cache_size

    def num_anchors(self, height: int, width: int) -> int:
        sizes = feature_map_sizes(height, width, self.config.steps)
        return sum(h * w * n for (h, w), n in zip(sizes, self.config.anchors_per_location))

    def __call__(self, height: int, width: int, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> Tensor:
        key = (int(height), int(width), str(device), dtype)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        anchors = self._generate(int(height), int(width)).to(device=device, dtype=dtype)
        if len(self._cache) >= self._cache_size:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = anchors
        return anchors

    def _generate(self, height: int, width: int) -> Tensor:
        levels = []
        for (fh, fw), step, sizes in zip(feature_map_sizes(height, width, self.config.steps),
                                         self.config.steps, self.config.min_sizes):
            # biubug6 computes centres as (j + 0.5) * step / width and scales back by width; doing the
            # same arithmetic in float64 keeps us within float32 rounding of its priors.
            cy = (torch.arange(fh, dtype=torch.float64) + 0.5) * step
            cx = (torch.arange(fw, dtype=torch.float64) + 0.5) * step
            s = torch.tensor(sizes, dtype=torch.float64)
            gy, gx, gs = torch.meshgrid(cy, cx, s, indexing="ij")  # [fh, fw, n]
            levels.append(torch.stack([gx, gy, gs, gs], dim=-1).reshape(-1, 4))
        return torch.cat(levels, dim=0).to(torch.float32)
