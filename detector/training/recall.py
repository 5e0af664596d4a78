"""A quick accuracy signal during training: recall of labelled faces at a fixed IoU and score.

Not the WIDER FACE protocol (:mod:`detector.evaluation.widerface` is): no ignore regions, no
precision; a cheap check that a run (or a fine-tune) still finds the faces it should.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import torch

from detector.boxes import box_iou
from detector.inference import Detector, PostprocessConfig
from detector.model import RetinaFace
from detector.training.dataset import LabeledImage

__all__ = ["RecallReport", "evaluate_recall", "matched_faces"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RecallReport:
    """Recall of labelled faces: a face counts as found when a detection with score >= the
    threshold matches it one-to-one (greedy by score) at IoU >= the threshold.

    Attributes:
        num_faces: labelled faces considered (wider than the minimum width).
        num_found: of those, found.
        per_image: ``(path, num_faces, num_found)`` per image.
    """

    num_faces: int
    num_found: int
    per_image: tuple[tuple[str, int, int], ...]

    @property
    def recall(self) -> float:
        return self.num_found / self.num_faces if self.num_faces else float("nan")


def matched_faces(
    detections: torch.Tensor, scores: torch.Tensor, faces: torch.Tensor, *, iou_threshold: float, score_threshold: float
) -> torch.Tensor:
    """``bool [G]``: which of ``faces [G, 4]`` a detection ``[D, 4]`` with ``scores [D]`` matches.

    Greedy one-to-one matching in decreasing score order, each detection taking its best unmatched
    face with IoU >= ``iou_threshold``.
    """
    found = torch.zeros(faces.shape[0], dtype=torch.bool)
    keep = scores >= score_threshold
    detections, scores = detections[keep].float().cpu(), scores[keep].float().cpu()
    if faces.shape[0] == 0 or detections.shape[0] == 0:
        return found
    overlaps = box_iou(detections[torch.argsort(scores, descending=True, stable=True)], faces.float().cpu())
    for row in overlaps:
        candidates = torch.where(found, torch.full_like(row, -1.0), row)
        best = int(torch.argmax(candidates))
        if float(candidates[best]) >= iou_threshold:
            found[best] = True
    return found


def evaluate_recall(
    model: RetinaFace,
    images: Sequence[LabeledImage],
    *,
    device: torch.device | str,
    min_face_width: float = 20.0,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.5,
    resize: str | None = None,
) -> RecallReport:
    """Detect on each labelled image (original size unless ``resize``) and count found faces."""
    detector = Detector(model, device=device, resize=resize, postprocess=PostprocessConfig())
    per_image: list[tuple[str, int, int]] = []
    for labeled in images:
        image = cv2.imread(str(labeled.path), cv2.IMREAD_COLOR)
        if image is None:
            raise OSError(f"cannot decode {labeled.path}")
        faces = torch.from_numpy(labeled.boxes)
        faces = faces[(faces[:, 2] - faces[:, 0]) > min_face_width]
        result = detector.detect([image])[0]
        found = matched_faces(
            result.boxes, result.scores, faces, iou_threshold=iou_threshold, score_threshold=score_threshold
        )
        per_image.append((str(labeled.path), int(faces.shape[0]), int(found.sum())))
    return RecallReport(
        num_faces=sum(n for _, n, _ in per_image), num_found=sum(f for _, _, f in per_image), per_image=tuple(per_image)
    )
