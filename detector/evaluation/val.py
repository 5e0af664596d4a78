"""WIDER FACE validation AP of a detector in memory: what training reports per epoch.

The same code path as the benchmark (``benchmarks/bench_widerface_val.py``) and the evaluation job:
the images are read and detected by :func:`detector.evaluation.predict.iter_detections`, the subset
is :func:`~detector.evaluation.predict.select_images`, and each image's detections go straight to a
:class:`~detector.evaluation.widerface.WiderFaceEvaluator` (no submission files written).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detector.evaluation.predict import iter_detections, iter_image_files, select_images, xyxy_to_xywh
from detector.evaluation.submission import WiderFaceGroundTruth, load_ground_truth
from detector.evaluation.widerface import WiderFaceEvaluator, WiderFaceResult

__all__ = ["WiderValSet"]


@dataclass(frozen=True, kw_only=True)
class WiderValSet:
    """WIDER FACE validation images to score a detector on.

    Attributes:
        images_dir: ``<images_dir>/<event>/<image>.jpg`` (all 3,226 images, or some of them: the
            images present are evaluated).
        gt_dir: folder with ``wider_face_val.mat`` and ``wider_{easy,medium,hard}_val.mat``.
        every: every N-th image of each event (:func:`select_images`; 1: all).
        resize: detector input size (``"original"``: the published protocol).
        batch_size: same-size images per forward pass.
        every_epochs: training evaluates every this many epochs (and at the end of the run).
    """

    images_dir: Path
    gt_dir: Path
    every: int = 1
    resize: str = "original"
    batch_size: int = 4
    every_epochs: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "images_dir", Path(self.images_dir))
        object.__setattr__(self, "gt_dir", Path(self.gt_dir))
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"WIDER val image folder not found: {self.images_dir}")
        if not (self.gt_dir / "wider_face_val.mat").is_file():
            raise FileNotFoundError(f"{self.gt_dir} holds no wider_face_val.mat (the WIDER FACE ground truth)")
        if min(self.every, self.batch_size, self.every_epochs) < 1:
            raise ValueError("every, batch_size and every_epochs must be >= 1")

    def keys(self) -> list[str]:
        """The ``"<event>/<name>"`` images evaluated."""
        return select_images((key for key, _ in iter_image_files(self.images_dir)), every=self.every)

    def evaluate(self, detect: Callable[[list[np.ndarray]], Sequence[Any]], *,
                 ground_truth: WiderFaceGroundTruth | None = None, progress: bool = False) -> WiderFaceResult:
        """Easy / medium / hard AP of ``detect`` (``Detector.detect``-like: BGR images in, results
        with ``.boxes`` x1 y1 x2 y2 and ``.scores`` out) on :meth:`keys`."""
        gt = ground_truth if ground_truth is not None else load_ground_truth(self.gt_dir)
        evaluator = WiderFaceEvaluator(ground_truth=gt)
        for key, det in iter_detections(self.images_dir, detect, batch_size=self.batch_size, progress=progress,
                                        keys=self.keys()):
            evaluator.process(key, xyxy_to_xywh(det.boxes), det.scores, box_format="xywh")
        return evaluator.compute()

    def evaluate_model(self, model: Any, *, device: Any = "cpu") -> WiderFaceResult:
        """:meth:`evaluate` of a RetinaFace ``nn.Module`` with the reference postprocessing (a fused
        copy runs; ``model`` itself is not changed)."""
        from detector.inference import Detector, PostprocessConfig

        detector = Detector(model, device=device, resize=self.resize, postprocess=PostprocessConfig())
        return self.evaluate(detector.detect)

    def to_dict(self) -> dict[str, Any]:
        return {"images_dir": os.fspath(self.images_dir), "gt_dir": os.fspath(self.gt_dir), "every": self.every,
                "resize": self.resize, "batch_size": self.batch_size, "every_epochs": self.every_epochs}
