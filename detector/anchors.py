"""Anchor (prior box) generation, vectorised and cached per input size.

:func:`anchor_grid` is the one computation (numpy, no torch); :class:`AnchorGenerator` serves it as
torch tensors for the eager detector and training, :class:`AnchorCache` as numpy arrays for the ONNX
runtimes' postprocess.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .config import AnchorConfig

__all__ = ["AnchorCache", "AnchorGenerator", "anchor_grid", "feature_map_sizes"]


def feature_map_sizes(height: int, width: int, steps: tuple[int, ...]) -> list[tuple[int, int]]:
    """Spatial size of each pyramid level for an ``height x width`` input (``ceil(size / step)``)."""
    return [(math.ceil(height / s), math.ceil(width / s)) for s in steps]


def anchor_grid(config: AnchorConfig, height: int, width: int) -> np.ndarray:
    """Square anchors in biubug6's ``PriorBox`` order, in input pixels: ``float32[A, 4]`` ``(cx, cy, w, h)``.

    Order: level, then row, then column, then anchor size -- the order in which the heads emit
    predictions (``permute(0, 2, 3, 1)`` of ``[B, anchors*values, H, W]``).
    """
    levels = []
    for (fh, fw), step, sizes in zip(feature_map_sizes(height, width, config.steps), config.steps,
                                     config.min_sizes):
        # biubug6 computes centres as (j + 0.5) * step / width and scales back by width; doing the
        # same arithmetic in float64 keeps us within float32 rounding of its priors.
        cy = (np.arange(fh, dtype=np.float64) + 0.5) * step
        cx = (np.arange(fw, dtype=np.float64) + 0.5) * step
        s = np.asarray(sizes, dtype=np.float64)
        gy, gx, gs = np.meshgrid(cy, cx, s, indexing="ij")  # [fh, fw, n]
        levels.append(np.stack([gx, gy, gs, gs], axis=-1).reshape(-1, 4))
    return np.concatenate(levels, axis=0).astype(np.float32)


class AnchorCache:
    """:func:`anchor_grid` of one :class:`AnchorConfig`, cached per ``(height, width)`` (numpy)."""

    def __init__(self, config: AnchorConfig, *, cache_size: int = 32) -> None:
        self.config = config
        self._cache: dict[tuple, Any] = {}
        self._cache_size = cache_size

    def num_anchors(self, height: int, width: int) -> int:
        sizes = feature_map_sizes(height, width, self.config.steps)
        return sum(h * w * n for (h, w), n in zip(sizes, self.config.anchors_per_location))

    def _cached(self, key: tuple, make) -> Any:
        value = self._cache.get(key)
        if value is None:
            value = make()
            if len(self._cache) >= self._cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = value
        return value

    def __call__(self, height: int, width: int) -> np.ndarray:
        return self._cached((int(height), int(width)), lambda: anchor_grid(self.config, int(height), int(width)))


class AnchorGenerator(AnchorCache):
    """:func:`anchor_grid` as a torch ``Tensor[A, 4]``, cached per ``(height, width, device, dtype)``."""

    def __call__(self, height: int, width: int, *, device: Any = "cpu", dtype: Any = None) -> Any:
        import torch

        dtype = torch.float32 if dtype is None else dtype
        return self._cached((int(height), int(width), str(device), dtype), lambda: torch.from_numpy(
            anchor_grid(self.config, int(height), int(width))).to(device=device, dtype=dtype))
