"""The output layout of insightface SCRFD graphs, worked out once (no torch, no onnx).

insightface's own ``SCRFD`` class goes by the output COUNT (names differ between exports: ``score_8
...`` in ``scrfd_500m_bnkps.onnx``, numbers in buffalo_l's ``det_10g.onnx``): all score maps, then all
box-distance maps, then (with keypoints) all keypoint maps, shallowest stride first. The last
dimension (1 score, 4 box distances, 10 keypoint coordinates per anchor) confirms it where declared.
:func:`detector.onnx_models.inspect_onnx` recognises an SCRFD file with :func:`scrfd_outputs`, and
:class:`detector.scrfd.SCRFDDetector` reads its strides with :func:`scrfd_layout`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .hub import CheckpointError

__all__ = ["SCRFDLayout", "scrfd_layout", "scrfd_outputs"]

# output count -> (strides, anchors per location, has keypoints)
_LAYOUTS: dict[int, tuple[tuple[int, ...], int, bool]] = {
    9: ((8, 16, 32), 2, True),
    15: ((8, 16, 32, 64, 128), 1, True),
    6: ((8, 16, 32), 2, False),
    10: ((8, 16, 32, 64, 128), 1, False),
}


@dataclass(frozen=True)
class SCRFDLayout:
    """What the detector needs to know about an SCRFD graph.

    Attributes:
        strides: feature strides, shallowest first (8, 16, 32 or 8 ... 128).
        num_anchors: anchors per feature-map location (2 for 3-level models, 1 for 5-level ones).
        input_hw: the graph's fixed input ``(H, W)``, or ``None`` when any multiple of the largest
            stride runs.
        batch: the graph takes ``B > 1`` images in one call, giving ``[B, A, C]`` outputs.
    """

    strides: tuple[int, ...]
    num_anchors: int
    input_hw: tuple[int, int] | None = None
    batch: bool = False

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    @property
    def align(self) -> int:
        return max(self.strides)

    def anchors_per_level(self, height: int, width: int) -> list[int]:
        return [(height // s) * (width // s) * self.num_anchors for s in self.strides]

    def expected_shapes(self, hw: tuple[int, int]) -> list[tuple[int, int]]:
        """``(anchors, width)`` of each output at input ``hw``, in output order."""
        counts = self.anchors_per_level(*hw)
        return [(c, width) for width in (1, 4, 10) for c in counts]


def scrfd_outputs(shapes: Sequence[Sequence[Any]]) -> tuple[tuple[int, ...], int, bool] | None:
    """``(strides, anchors per location, has keypoints)`` of a graph with these output shapes
    (declared dims: ints, or names / ``None``), or ``None`` when it is not SCRFD's layout."""
    entry = _LAYOUTS.get(len(shapes))
    if entry is None:
        return None
    strides, _, kps = entry
    n = len(strides)
    widths = [1] * n + [4] * n + ([10] * n if kps else [])
    for shape, width in zip(shapes, widths):
        last = shape[-1] if len(shape) else None
        if isinstance(last, int) and last != width:
            return None
    return entry


def scrfd_layout(num_outputs: int) -> tuple[tuple[int, ...], int]:
    """``(strides, anchors per location)`` of an SCRFD graph with keypoints, from its output count
    (insightface's rule); raises :class:`CheckpointError` for anything else."""
    entry = _LAYOUTS.get(num_outputs)
    if entry is None:
        raise CheckpointError(f"not an SCRFD model: {num_outputs} outputs (SCRFD with keypoints has 9 or 15)")
    strides, anchors, kps = entry
    if not kps:
        raise CheckpointError(
            f"this SCRFD model has {num_outputs} outputs: no keypoints. The pipeline aligns faces on 5 "
            "landmarks; use a *_kps / *_bnkps model (9 or 15 outputs), e.g. det_10g.onnx or scrfd_500m_bnkps.onnx")
    return strides, anchors
