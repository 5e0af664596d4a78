"""The base of the dense detector families on the ONNX runtimes (detectron2's ``DenseDetector`` idea).

:meth:`DenseDetector.detect` is written once: image checks, the per-call postprocess override, a
plan per image (its size after resizing and the network input it lands on), grouping by network
input (each group runs as one unpadded batch, so every image gets exactly its single-image result),
per image top-k, decode of the survivors only, rescale, NMS and keep-top-k
(:mod:`detector.postprocess`, numpy, no torch). A family supplies:

* :meth:`~DenseDetector.plan` - ``(H, W)`` of a photo and the resize policy -> :class:`InputPlan`;
* :meth:`~DenseDetector.forward_group` - the images of one group -> the network's raw outputs (any object);
* :meth:`~DenseDetector.select` - one image's raw outputs -> the best anchors and their scores;
* :meth:`~DenseDetector.decode` - those anchors -> boxes and landmarks in network-input pixels.

Families: RetinaFace (:class:`detector.onnx_runtime.OnnxRetinaFace`) and SCRFD
(:class:`detector.scrfd.SCRFDDetector`). The eager torch :class:`detector.inference.Detector` keeps
its batched on-device postprocess.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .api import Detections, PostprocessConfig, as_bgr_uint8, check_image_list
from .config import ResizePolicy
from .postprocess import empty_detections, finish

__all__ = ["DenseDetector", "InputPlan"]


@dataclass(frozen=True)
class InputPlan:
    """Where one image goes: resized to ``new_hw``, top-left on a ``canvas_hw`` network input (images
    with the same canvas run as one batch); network-input coordinates are divided by
    ``scale = (sx, sy)`` to get original pixels."""

    new_hw: tuple[int, int]
    canvas_hw: tuple[int, int]
    scale: tuple[float, float]


class DenseDetector(abc.ABC):
    """A :class:`detector.api.FaceDetector` whose ``detect`` is this class's; see the module docstring.

    Subclasses set :attr:`resize` and :attr:`postprocess_config`.
    """

    resize: ResizePolicy
    postprocess_config: PostprocessConfig

    @abc.abstractmethod
    def plan(self, height: int, width: int, policy: ResizePolicy) -> InputPlan:
        """Where an ``height x width`` photo goes under ``policy``."""

    @abc.abstractmethod
    def forward_group(self, images: Sequence[np.ndarray], plans: Sequence[InputPlan],
                      canvas_hw: tuple[int, int]) -> Any:
        """Raw outputs for uint8 BGR ``images`` sharing ``canvas_hw`` (valid until the next call)."""

    @abc.abstractmethod
    def select(self, raw: Any, index: int, config: PostprocessConfig) -> tuple[np.ndarray, np.ndarray]:
        """Image ``index`` of ``raw``: ``int64[K]`` anchors passing the threshold, the ``top_k`` best,
        best first, and their ``float32[K]`` scores."""

    @abc.abstractmethod
    def decode(self, raw: Any, index: int, anchors: np.ndarray,
               canvas_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Boxes ``float32[K, 4]`` and landmarks ``float32[K, 5, 2]`` of image ``index``'s ``anchors``,
        in network-input pixels."""

    def postprocess(self, raw: Any, plans: Sequence[InputPlan], canvas_hw: tuple[int, int],
                    config: PostprocessConfig) -> list[Detections]:
        """One group's raw outputs -> one :class:`Detections` per image (numpy, original pixels)."""
        out = []
        for j, plan in enumerate(plans):
            anchors, scores = self.select(raw, j, config)
            if anchors.size == 0:
                out.append(empty_detections())
                continue
            boxes, landmarks = self.decode(raw, j, anchors, canvas_hw)
            out.append(finish(boxes, scores, landmarks, plan.scale, config))
        return out

    def detect(self, images: Sequence[np.ndarray], *, resize: ResizePolicy | str | int | None = None,
               conf_threshold: float | None = None, nms_threshold: float | None = None,
               top_k: int | None = None, keep_top_k: int | None = None,
               vote_iou: float | None = None) -> list[Detections]:
        """Detect faces; one :class:`Detections` per image (float32 numpy arrays, original pixels,
        sorted by score)."""
        check_image_list(images)
        config = self.postprocess_config.override(conf_threshold=conf_threshold, nms_threshold=nms_threshold,
                                                  top_k=top_k, keep_top_k=keep_top_k, vote_iou=vote_iou)
        policy = self.resize if resize is None else ResizePolicy.parse(resize)
        images = [as_bgr_uint8(img, i) for i, img in enumerate(images)]
        plans = [self.plan(img.shape[0], img.shape[1], policy) for img in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, p in enumerate(plans):
            groups.setdefault(p.canvas_hw, []).append(i)
        results: list[Any] = [None] * len(images)
        for canvas_hw, members in groups.items():
            group_plans = [plans[i] for i in members]
            raw = self.forward_group([images[i] for i in members], group_plans, canvas_hw)
            for i, det in zip(members, self.postprocess(raw, group_plans, canvas_hw, config)):
                results[i] = det
        return results

    __call__ = detect
