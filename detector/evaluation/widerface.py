"""WIDER FACE validation evaluation (easy / medium / hard AP), vectorised.

Follows the official protocol as the widely used Python port implements it
(``widerface_evaluate/evaluation.py`` shipped with biubug6/Pytorch_Retinaface), reproducing its
numbers to the last bit on complete prediction sets:

* Ground truth: ``wider_face_val.mat`` (``face_bbx_list``, ``event_list``, ``file_list``) and
  ``wider_{easy,medium,hard}_val.mat`` (``gt_list``: 1-based indices of the faces a setting keeps).
  Faces outside a setting's keep list are *ignored*: a prediction matching one is neither a true
  nor a false positive.
* Scores are min-max normalised over the whole prediction set, with the port's initial values
  (``min = min(1, lowest score)``, ``max = max(0, highest score)``).
* Per image, predictions are visited **in the order given** (file order; not re-sorted). Each is
  assigned to the ground-truth box of highest IoU (first one on ties); IoU uses the +1 pixel
  convention of ``bbox_overlaps`` on boxes ``x2 = x + w``. With IoU >= 0.5 it either matches a kept
  face (the first such prediction recalls it) or an ignored face (the prediction stops being a
  proposal).
* For 1000 thresholds ``1 - (t + 1) / 1000`` an image contributes, up to the *last* prediction
  whose normalised score reaches the threshold, the number of proposals and of recalled faces.
  Precision is their ratio over the dataset, recall divides by the number of kept faces; AP is
  the VOC (all-point, precision-envelope) area.
* Images without ground-truth boxes or without predictions contribute nothing but their kept-face
  count (always zero / the faces they miss).

Vectorisation: with ``M_p`` the suffix maximum of the scores of image ``p``'s file from ``p`` on,
the port's per-threshold prefix (up to the last score >= threshold) is exactly the set of
predictions with ``M_p >= threshold``; the counts are then sums over all predictions of
per-prediction indicators (``proposal``, ``first recall of a kept face``), computed for all
thresholds at once with one sort and ``searchsorted``. All sums are integer counts, so the result
is bit-identical to the port's float accumulation.

Partial prediction sets (only some images present) are evaluated over the images present: both
the normalisation and the face counts use only those images. The port itself would fail on them.

Submission files and the ground truth are in :mod:`detector.evaluation.submission`, running a
detector over the images in :mod:`detector.evaluation.predict`, PR curves in
:mod:`detector.evaluation.plots`; their public names are importable from here too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from detector.evaluation.plots import plot_pr_curves
from detector.evaluation.predict import iter_image_files, predict_submission, write_detections
from detector.evaluation.submission import (
    SETTINGS,
    PredictionFormatError,
    WiderFaceGroundTruth,
    _check_values,
    _to_numpy,
    load_ground_truth,
    read_prediction_file,
    read_submission,
    write_prediction_file,
    write_submission,
)

__all__ = [
    "SETTINGS",
    "PredictionFormatError",
    "WiderFaceGroundTruth",
    "WiderFaceEvalConfig",
    "SettingResult",
    "WiderFaceResult",
    "WiderFaceEvaluator",
    "load_ground_truth",
    "read_prediction_file",
    "read_submission",
    "write_prediction_file",
    "write_submission",
    "evaluate_folder",
    "bbox_overlaps_plus_one",
    "voc_ap",
    "plot_pr_curves",
    "iter_image_files",
    "write_detections",
    "predict_submission",
]

BoxFormat = Literal["xywh", "xyxy"]


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WiderFaceEvalConfig:
    """Protocol constants (the official values are the defaults)."""

    iou_threshold: float = 0.5
    num_thresholds: int = 1000
    settings: tuple[str, ...] = SETTINGS

    def __post_init__(self) -> None:
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {self.iou_threshold}")
        if self.num_thresholds < 1:
            raise ValueError(f"num_thresholds must be >= 1, got {self.num_thresholds}")
        unknown = set(self.settings) - set(SETTINGS)
        if unknown or not self.settings:
            raise ValueError(f"settings must be a non-empty subset of {SETTINGS}, got {self.settings}")

    def thresholds(self) -> np.ndarray:
        """``float64 [T]``: ``1 - (t + 1) / T`` for ``t = 0 .. T-1`` (descending, last is 0)."""
        t = self.num_thresholds
        return 1.0 - np.arange(1, t + 1, dtype=np.float64) / t


@dataclass(frozen=True, eq=False)
class SettingResult:
    """One setting. ``precision`` / ``recall`` are ``float64 [T]`` over the config's thresholds
    (precision is NaN where no prediction is counted yet, as in the port)."""

    ap: float
    precision: np.ndarray
    recall: np.ndarray
    num_faces: int


@dataclass(frozen=True, eq=False)
class WiderFaceResult:
    """AP per setting plus the PR curves and bookkeeping."""

    settings: Mapping[str, SettingResult]
    thresholds: np.ndarray
    images_evaluated: int
    images_total: int
    num_predictions: int
    score_min: float
    score_max: float
    iou_threshold: float

    def __getitem__(self, setting: str) -> float:
        return self.settings[setting].ap

    @property
    def complete(self) -> bool:
        return self.images_evaluated == self.images_total

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: ``{"easy": ap, "medium": ap, "hard": ap, "images_evaluated": N, ...}``."""
        out: dict[str, Any] = {name: float(r.ap) for name, r in self.settings.items()}
        out.update(
            images_evaluated=self.images_evaluated,
            images_total=self.images_total,
            complete=self.complete,
            num_predictions=self.num_predictions,
            faces={name: r.num_faces for name, r in self.settings.items()},
            score_range=[self.score_min, self.score_max],
            iou_threshold=self.iou_threshold,
            num_thresholds=len(self.thresholds),
        )
        return out

    def summary(self) -> str:
        aps = "  ".join(f"{name} {r.ap:.4f}" for name, r in self.settings.items())
        scope = "" if self.complete else f" (partial: {self.images_evaluated} of {self.images_total} images)"
        return f"WIDER FACE val AP: {aps}  [{self.images_evaluated} images, {self.num_predictions} predictions]{scope}"


def bbox_overlaps_plus_one(boxes: np.ndarray, query_boxes: np.ndarray) -> np.ndarray:
    """IoU with the +1 pixel convention, exactly as the Cython ``bbox_overlaps`` of the port.

    Args:
        boxes: ``float64 [N, 4]`` x1 y1 x2 y2.
        query_boxes: ``float64 [K, 4]`` x1 y1 x2 y2.

    Returns:
        ``float64 [N, K]``; 0 where the boxes do not overlap (``iw <= 0`` or ``ih <= 0``).
    """
    b = np.asarray(boxes, dtype=np.float64)
    q = np.asarray(query_boxes, dtype=np.float64)
    q_area = (q[:, 2] - q[:, 0] + 1) * (q[:, 3] - q[:, 1] + 1)
    b_area = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    iw = np.minimum(b[:, None, 2], q[None, :, 2]) - np.maximum(b[:, None, 0], q[None, :, 0]) + 1
    ih = np.minimum(b[:, None, 3], q[None, :, 3]) - np.maximum(b[:, None, 1], q[None, :, 1]) + 1
    inter = iw * ih
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (b_area[:, None] + q_area[None, :] - inter)
    return np.where((iw > 0) & (ih > 0), iou, 0.0)


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point VOC AP: area under the precision envelope (NaN propagates as in the port).

    Args:
        recall, precision: ``float64 [T]``.
    """
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


class WiderFaceEvaluator:
    """Accumulates per-image predictions and scores them (detectron2 evaluator style).

    Example::

        ev = WiderFaceEvaluator(ground_truth=load_ground_truth(gt_dir))
        for key, det in results:               # key "0--Parade/0_Parade_marchingband_1_465"
            ev.process(key, det.boxes, det.scores, box_format="xyxy")
        print(ev.evaluate())                   # {"easy": ..., "medium": ..., "hard": ..., ...}
    """

    def __init__(self, *, ground_truth: WiderFaceGroundTruth,
                 config: WiderFaceEvalConfig = WiderFaceEvalConfig(), progress: bool = False) -> None:
        self.ground_truth = ground_truth
        self.config = config
        self.progress = progress
        self._predictions: dict[int, np.ndarray] = {}

    @classmethod
    def from_mat_dir(cls, gt_dir: str | os.PathLike[str], *,
                     config: WiderFaceEvalConfig = WiderFaceEvalConfig(),
                     progress: bool = False) -> WiderFaceEvaluator:
        return cls(ground_truth=load_ground_truth(gt_dir), config=config, progress=progress)

    def reset(self) -> None:
        self._predictions = {}

    def __len__(self) -> int:
        """Number of images processed so far."""
        return len(self._predictions)

    def process(self, image_key: str, boxes: Any, scores: Any, *, box_format: BoxFormat = "xywh") -> None:
        """Add the predictions of one image.

        Args:
            image_key: ``"<event>/<name>"`` or ``"<name>"`` (an image extension is allowed).
            boxes: ``[N, 4]`` numpy array or tensor, ``x y w h`` or ``x1 y1 x2 y2`` (``box_format``)
                in original-image pixels.
            scores: ``[N]``. Order matters as in the protocol (a submission file's order); pass
                them sorted by score, descending, as detectors return them.

        Raises:
            KeyError: unknown image or wrong event. ValueError: duplicate image, bad shapes,
            non-finite values, negative sizes.
        """
        index = self.ground_truth.index(image_key)
        if index in self._predictions:
            raise ValueError(f"image {image_key!r} was already processed")
        b = _to_numpy(boxes)
        b = b.reshape(-1, 4) if b.size else np.zeros((0, 4))
        s = _to_numpy(scores).reshape(-1)
        if len(b) != len(s):
            raise ValueError(f"{image_key}: {len(b)} boxes but {len(s)} scores")
        if box_format == "xyxy":
            b = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)
        elif box_format != "xywh":
            raise ValueError(f"box_format must be 'xywh' or 'xyxy', got {box_format!r}")
        values = np.concatenate([b, s[:, None]], axis=1)
        _check_values(values, lambda r, msg: ValueError(f"{image_key}: prediction {r}: {msg}"))
        self._predictions[index] = values

    def process_submission(self, predictions: Mapping[str, np.ndarray]) -> None:
        """Add a :func:`read_submission` result (``key -> [N, 5]`` x, y, w, h, score)."""
        for key, values in predictions.items():
            self.process(key, values[:, :4], values[:, 4], box_format="xywh")

    def missing_images(self) -> list[str]:
        """``"<event>/<name>"`` of the ground-truth images not processed."""
        return [self.ground_truth.key(i) for i in range(self.ground_truth.num_images)
                if i not in self._predictions]

    def compute(self) -> WiderFaceResult:
        """Score what was processed (the images present; see the module docstring)."""
        return _evaluate(self.ground_truth, self._predictions, self.config, progress=self.progress)

    def evaluate(self) -> dict[str, Any]:
        """``compute().to_dict()``: ``{"easy": ap, "medium": ap, "hard": ap, "images_evaluated": N, ...}``."""
        return self.compute().to_dict()


def _evaluate(gt: WiderFaceGroundTruth, predictions: Mapping[int, np.ndarray],
              config: WiderFaceEvalConfig, *, progress: bool) -> WiderFaceResult:
    images = sorted(predictions)
    if not images:
        raise ValueError("no predictions to evaluate (no image was processed)")
    # Min-max normalisation over the whole set, with the port's initial min 1 / max 0.
    nonempty = [predictions[i][:, 4] for i in images if len(predictions[i])]
    all_scores = np.concatenate(nonempty) if nonempty else np.zeros(0)
    lo = min(1.0, float(all_scores.min())) if all_scores.size else 1.0
    hi = max(0.0, float(all_scores.max())) if all_scores.size else 0.0
    diff = hi - lo
    if all_scores.size and diff == 0.0:
        raise ValueError(f"all {all_scores.size} prediction scores equal {lo!r}: the protocol's "
                         "min-max score normalisation is undefined (the reference port divides by zero)")

    suffix_max: list[np.ndarray] = []
    matched: list[np.ndarray] = []
    face_index: list[np.ndarray] = []
    iou_thr = config.iou_threshold
    for i in tqdm(images, desc="matching", unit="img", disable=not progress, mininterval=0.5):
        pred = predictions[i]
        start, stop = int(gt.offsets[i]), int(gt.offsets[i + 1])
        if stop == start or len(pred) == 0:
            continue
        g = gt.boxes[start:stop]
        g_xyxy = np.concatenate([g[:, :2], g[:, 2:] + g[:, :2]], axis=1)
        p_xyxy = np.concatenate([pred[:, :2], pred[:, 2:4] + pred[:, :2]], axis=1)
        iou = bbox_overlaps_plus_one(p_xyxy, g_xyxy)
        best = iou.argmax(axis=1)
        matched.append(iou[np.arange(len(pred)), best] >= iou_thr)
        face_index.append(best + start)
        score = (pred[:, 4] - lo) / diff
        suffix_max.append(np.maximum.accumulate(score[::-1])[::-1])

    thresholds = config.thresholds()
    if suffix_max:
        m = np.concatenate(suffix_max)
        hit = np.concatenate(matched)
        face = np.concatenate(face_index)
    else:
        m, hit, face = np.zeros(0), np.zeros(0, bool), np.zeros(0, np.int64)
    order = np.argsort(m, kind="stable")
    # Number of predictions with suffix max >= each threshold lie at sorted positions [pos, n).
    pos = np.searchsorted(m[order], thresholds, side="left")

    def count_at_thresholds(indicator: np.ndarray) -> np.ndarray:
        csum = np.concatenate(([0], np.cumsum(indicator[order], dtype=np.int64)))
        return (csum[-1] - csum[pos]).astype(np.float64)

    present = np.zeros(gt.num_images, dtype=bool)
    present[images] = True
    face_present = np.repeat(present, np.diff(gt.offsets))

    results: dict[str, SettingResult] = {}
    for setting in config.settings:
        keep = gt.keep[setting]
        kept_hit = hit & keep[face]
        proposal = ~(hit & ~keep[face])
        first = np.zeros(len(m), dtype=bool)
        hits = np.flatnonzero(kept_hit)
        _, first_pos = np.unique(face[hits], return_index=True)
        first[hits[first_pos]] = True
        n_proposals = count_at_thresholds(proposal)
        n_recalled = count_at_thresholds(first)
        num_faces = int(np.count_nonzero(keep & face_present))
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = n_recalled / n_proposals
            recall = n_recalled / num_faces
        results[setting] = SettingResult(ap=voc_ap(recall, precision), precision=precision,
                                         recall=recall, num_faces=num_faces)
    return WiderFaceResult(
        settings=MappingProxyType(results), thresholds=thresholds, images_evaluated=len(images),
        images_total=gt.num_images, num_predictions=int(all_scores.size),
        score_min=lo, score_max=hi, iou_threshold=iou_thr)


def evaluate_folder(pred_dir: str | os.PathLike[str], *, ground_truth: WiderFaceGroundTruth | None = None,
                    gt_dir: str | os.PathLike[str] | None = None,
                    config: WiderFaceEvalConfig = WiderFaceEvalConfig(), require_all: bool = False,
                    progress: bool = True) -> WiderFaceResult:
    """Score a submission folder against the ground truth (given loaded, or as the .mat folder).

    Args:
        require_all: raise ``ValueError`` unless every validation image has a prediction file;
            otherwise the images present are evaluated (see ``WiderFaceResult.images_evaluated``).
    """
    if (ground_truth is None) == (gt_dir is None):
        raise ValueError("pass exactly one of ground_truth and gt_dir")
    if ground_truth is None:
        ground_truth = load_ground_truth(gt_dir)  # type: ignore[arg-type]
    predictions = read_submission(pred_dir, progress=progress)
    if not predictions:
        raise FileNotFoundError(f"no prediction files under {pred_dir}/<event>/<image>.txt")
    evaluator = WiderFaceEvaluator(ground_truth=ground_truth, config=config, progress=progress)
    for key, values in predictions.items():
        try:
            evaluator.process(key, values[:, :4], values[:, 4], box_format="xywh")
        except KeyError as exc:
            raise PredictionFormatError(Path(pred_dir) / f"{key}.txt", 1, exc.args[0]) from None
    if require_all and len(evaluator) != ground_truth.num_images:
        missing = evaluator.missing_images()
        raise ValueError(f"{pred_dir}: {len(missing)} of {ground_truth.num_images} validation images have no "
                         f"prediction file, e.g. {', '.join(missing[:3])}")
    return evaluator.compute()
