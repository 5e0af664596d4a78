"""Test-time augmentation as in the RetinaFace paper: flip + multi-scale, merged by box voting.

The paper (Deng et al., 2019, sec. 4.2) evaluates WIDER FACE with "flip as well as multi-scale
(the short edge of image at [500, 800, 1100, 1400, 1700])" and applies box voting on the union of
the predicted boxes at IoU 0.4. :func:`detect_tta` runs the detector at each short side on the image
and its horizontal mirror (both in one batch: same size, so no padding), maps the mirrored results
back, and merges everything with :func:`box_vote`.

Box voting, exactly (:func:`box_vote`):

1. Candidates are ordered by score, descending (stable: ties keep input order).
2. Take the highest remaining candidate ``t``. Its cluster is every remaining candidate ``c`` with
   ``IoU(t, c) >= iou_threshold`` (``t`` itself included; IoU with the +1 pixel convention by
   default, like the reference NMS and the WIDER FACE evaluation).
3. The merged box is the score-weighted mean of the cluster's boxes,
   ``sum_c s_c * box_c / sum_c s_c``; landmarks likewise (each of the 10 coordinates). The merged
   score is the cluster's highest score, ``s_t`` (voting moves boxes, it does not re-rank them).
   Singleton clusters are kept unchanged (unlike the S3FD-era ``bbox_vote``, which drops them).
4. Remove the cluster and repeat; output order is the order of the clusters' top scores
   (descending), truncated to ``top_k``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:  # torch-dependent types only; importing this module needs no detector objects
    from detector.inference import Detections, Detector

__all__ = ["PAPER_SCALES", "TTAConfig", "VotedBoxes", "box_vote", "flip_detections_xyxy", "detect_tta"]

PAPER_SCALES: tuple[int, ...] = (500, 800, 1100, 1400, 1700)

# Landmark order is image-left first (left eye, right eye, nose, left mouth, right mouth); a mirror
# swaps the eyes and the mouth corners.
_FLIP_LANDMARK_ORDER = (1, 0, 2, 4, 3)


@dataclass(frozen=True)
class TTAConfig:
    """Test-time augmentation settings (paper defaults).

    Attributes:
        scales: short-side lengths; each is ``ResizePolicy.short_side(s, max_size)``.
        max_size: optional cap on the resized long side (``None``: the paper's plain short side).
        flip: also run every scale on the horizontal mirror.
        vote_iou: box-voting IoU threshold.
        plus_one: +1 pixel IoU convention for voting.
        top_k: boxes kept per image after voting.
        conf_threshold: per-run score threshold (``None``: the detector's).
    """

    scales: tuple[int, ...] = PAPER_SCALES
    max_size: int | None = None
    flip: bool = True
    vote_iou: float = 0.4
    plus_one: bool = True
    top_k: int = 750
    conf_threshold: float | None = None

    def __post_init__(self) -> None:
        if not self.scales or any(int(s) <= 0 for s in self.scales):
            raise ValueError(f"scales must be positive short-side lengths, got {self.scales}")
        if not 0.0 < self.vote_iou <= 1.0:
            raise ValueError(f"vote_iou must be in (0, 1], got {self.vote_iou}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")


class VotedBoxes(NamedTuple):
    """Result of :func:`box_vote` (``K`` clusters, by descending score).

    boxes ``float64 [K, 4]`` x1 y1 x2 y2; scores ``float64 [K]``; landmarks ``float64 [K, 5, 2]``
    or ``None``; sizes ``int64 [K]`` number of candidates merged into each box.
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray | None
    sizes: np.ndarray


def _iou_one_to_many(box: np.ndarray, boxes: np.ndarray, plus_one: bool) -> np.ndarray:
    o = 1.0 if plus_one else 0.0
    iw = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]) + o
    ih = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]) + o
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area = (box[2] - box[0] + o) * (box[3] - box[1] + o)
    areas = (boxes[:, 2] - boxes[:, 0] + o) * (boxes[:, 3] - boxes[:, 1] + o)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (area + areas - inter)
    return np.nan_to_num(iou, nan=0.0)


def box_vote(boxes: np.ndarray, scores: np.ndarray, landmarks: np.ndarray | None = None, *,
             iou_threshold: float = 0.4, plus_one: bool = True, top_k: int | None = None) -> VotedBoxes:
    """Merge overlapping detections by score-weighted box voting (see the module docstring).

    Args:
        boxes: ``[N, 4]`` x1 y1 x2 y2.
        scores: ``[N]``, positive (they are the voting weights).
        landmarks: optional ``[N, 5, 2]``, merged with the same weights.
        iou_threshold: a candidate joins the cluster of the top box when ``IoU >= iou_threshold``.
        plus_one: +1 pixel IoU convention.
        top_k: keep at most this many merged boxes.

    Returns:
        :class:`VotedBoxes`.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    lm = None if landmarks is None else np.asarray(landmarks, dtype=np.float64).reshape(-1, 10)
    if len(b) != len(s) or (lm is not None and len(lm) != len(s)):
        raise ValueError(f"box_vote: {len(b)} boxes, {len(s)} scores"
                         + ("" if lm is None else f", {len(lm)} landmarks"))
    if len(s) and (not np.all(np.isfinite(s)) or s.min() <= 0):
        raise ValueError("box_vote: scores must be finite and positive (they weight the mean)")
    order = np.argsort(-s, kind="stable")
    b, s = b[order], s[order]
    lm = None if lm is None else lm[order]
    limit = len(s) if top_k is None else top_k

    out_boxes, out_scores, out_lms, sizes = [], [], [], []
    remaining = np.arange(len(s))
    while remaining.size and len(out_scores) < limit:
        top = remaining[0]
        in_cluster = _iou_one_to_many(b[top], b[remaining], plus_one) >= iou_threshold
        in_cluster[0] = True  # a degenerate top box still forms its own cluster
        members = remaining[in_cluster]
        if members.size == 1:  # exactly unchanged (a weighted mean of one can round)
            out_boxes.append(b[top])
            if lm is not None:
                out_lms.append(lm[top])
        else:
            w = s[members]
            wsum = w.sum()
            out_boxes.append(w @ b[members] / wsum)
            if lm is not None:
                out_lms.append(w @ lm[members] / wsum)
        out_scores.append(s[top])
        sizes.append(members.size)
        remaining = remaining[~in_cluster]
    k = len(out_scores)
    return VotedBoxes(
        boxes=np.array(out_boxes, dtype=np.float64).reshape(k, 4),
        scores=np.array(out_scores, dtype=np.float64),
        landmarks=None if lm is None else np.array(out_lms, dtype=np.float64).reshape(k, 5, 2),
        sizes=np.array(sizes, dtype=np.int64),
    )


def flip_detections_xyxy(boxes: np.ndarray, landmarks: np.ndarray | None, width: int
                         ) -> tuple[np.ndarray, np.ndarray | None]:
    """Map detections of a horizontally mirrored image back to the original image.

    Continuous pixel coordinates (pixel ``i`` spans ``[i, i + 1)``), so ``x -> width - x``; box
    corners swap, and so do the left/right eyes and mouth corners of the landmarks.

    Args:
        boxes: ``[N, 4]`` x1 y1 x2 y2 in the mirrored image.
        landmarks: ``[N, 5, 2]`` or ``None``.
        width: image width in pixels.
    """
    b = np.asarray(boxes, dtype=np.float64)
    out = np.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], axis=1)
    if landmarks is None:
        return out, None
    lm = np.asarray(landmarks, dtype=np.float64)[:, _FLIP_LANDMARK_ORDER].copy()
    lm[..., 0] = width - lm[..., 0]
    return out, lm


def detect_tta(detector: Detector, images: Sequence[np.ndarray], *,
               config: TTAConfig = TTAConfig()) -> list[Detections]:
    """Flip + multi-scale detection merged by box voting.

    Args:
        detector: a :class:`detector.inference.Detector`.
        images: ``HxWx3`` uint8 BGR images.
        config: :class:`TTAConfig`.

    Returns:
        One :class:`detector.inference.Detections` per image (float32 tensors on the detector's
        device, sorted by score), in original-image pixels. Scores are the best score of each
        voted cluster.
    """
    import torch

    from detector.inference import Detections, ResizePolicy

    results: list[Detections] = []
    for image in images:
        width = image.shape[1]
        batch = [image, np.ascontiguousarray(image[:, ::-1])] if config.flip else [image]
        boxes, scores, landmarks = [], [], []
        for size in config.scales:
            policy = ResizePolicy.short_side(int(size), config.max_size)
            dets = detector.detect(batch, resize=policy, conf_threshold=config.conf_threshold)
            for view, det in enumerate(dets):
                d = det.numpy()
                b, lm = d.boxes.astype(np.float64), d.landmarks.astype(np.float64)
                if view == 1:
                    b, lm = flip_detections_xyxy(b, lm, width)
                boxes.append(b)
                scores.append(d.scores.astype(np.float64))
                landmarks.append(lm)
        voted = box_vote(np.concatenate(boxes), np.concatenate(scores), np.concatenate(landmarks),
                         iou_threshold=config.vote_iou, plus_one=config.plus_one, top_k=config.top_k)
        device = getattr(detector, "device", "cpu")  # the ONNX runtimes have none: CPU

        def to_tensor(x: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(x.astype(np.float32)).to(device)

        results.append(Detections(to_tensor(voted.boxes), to_tensor(voted.scores),
                                  to_tensor(voted.landmarks)))  # type: ignore[arg-type]
    return results
