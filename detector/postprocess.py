"""The NumPy postprocess of the dense (anchor-per-location) detectors on the ONNX runtimes (no torch).

The eager torch :class:`detector.inference.Detector` keeps its on-device torch postprocess
(:class:`detector.inference.RetinaFacePostprocess`); onnxruntime and OpenVINO hand back numpy arrays,
and these functions finish the job on them without importing torch. Both paths use the one
:class:`detector.box_coder.BoxCoder` and give the same detections (tested to 1e-5, same kept set).

* :func:`top_candidates` - the ``top_k`` best anchors of one image above a threshold, best first.
* :func:`greedy_nms` - greedy NMS of score-sorted boxes (legacy +1-pixel areas optional).
* :func:`vote` - score-weighted voting of boxes and landmarks over the candidates around each kept
  detection (:attr:`~detector.api.PostprocessConfig.vote_iou`; off by default).
* :func:`finish` - rescale to original pixels, NMS, keep-top-k, voting -> :class:`~detector.api.Detections`.

Why not ``cv2.dnn.NMSBoxes``: it takes ``(x, y, w, h)`` rectangles and computes the overlap in its own
(double, no +1) arithmetic; emulating the +1-pixel convention through ``w + 1`` gives the same
decision only up to rounding, so a box whose IoU sits at the threshold could be kept by one path and
suppressed by the other. :func:`greedy_nms` computes the IoU with the same float32 operations, in the
same order, as :func:`detector.boxes.batched_box_iou`.
"""

from __future__ import annotations

import numpy as np

from .api import Detections, PostprocessConfig

__all__ = ["empty_detections", "finish", "greedy_nms", "sigmoid", "top_candidates", "vote", "vote_weights"]


def empty_detections() -> Detections:
    """No face: ``float32[0, 4]``, ``[0]``, ``[0, 5, 2]``."""
    return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """float32 logistic function."""
    x = np.asarray(x, np.float32)
    return np.float32(1.0) / (np.float32(1.0) + np.exp(-x))


def top_candidates(rank: np.ndarray, mask: np.ndarray, top_k: int) -> np.ndarray:
    """Indices of the ``top_k`` highest ``rank`` among ``mask``, highest first (ties in index order).

    Args:
        rank: ``float32[A]`` the ranking key of one image's anchors (a score, or a logit margin).
        mask: ``bool[A]`` the anchors that passed the threshold.
        top_k: how many to keep at most.

    Returns ``int64[K]``, ``K <= top_k``.
    """
    idx = np.flatnonzero(mask)
    if idx.size > top_k:
        part = np.argpartition(-rank[idx], top_k - 1)[:top_k]
        idx = np.sort(idx[part])
    return idx[np.argsort(-rank[idx], kind="stable")]


def greedy_nms(boxes: np.ndarray, iou_threshold: float, *, plus_one: bool = False,
               max_keep: int | None = None) -> np.ndarray:
    """Greedy NMS of boxes already sorted by decreasing score.

    Args:
        boxes: ``float32[K, 4]`` x1y1x2y2, best first.
        iou_threshold: a box is suppressed when its IoU with a kept, better box is strictly greater.
        plus_one: legacy pixel-inclusive areas (width = x2 - x1 + 1), as biubug6 and insightface.
        max_keep: stop after this many kept boxes (greedy order is score order, so this is keep-top-k).

    Returns ``int64[M]``: kept indices, in score order. One vectorised IoU row per kept box.
    """
    boxes = np.asarray(boxes, np.float32)
    o = np.float32(1.0 if plus_one else 0.0)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + o) * (y2 - y1 + o)
    limit = len(boxes) if max_keep is None else int(max_keep)
    order = np.arange(len(boxes))
    keep: list[int] = []
    while order.size and len(keep) < limit:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + o, np.float32(0))
        h = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + o, np.float32(0))
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[~(iou > iou_threshold)]  # NaN (degenerate boxes) never suppresses, as in torch
    return np.asarray(keep, np.int64)


def vote_weights(boxes: np.ndarray, scores: np.ndarray, keep: np.ndarray, iou_threshold: float, *,
                 plus_one: bool = False) -> np.ndarray:
    """``float64[M, K]``: the voting weights of the ``K`` candidates for each of the ``M`` kept ones.

    Candidate ``j`` votes for kept detection ``m`` with weight ``scores[j]`` when
    ``IoU(boxes[keep[m]], boxes[j]) >= iou_threshold`` (a kept detection always votes for itself),
    else 0. The IoU is computed with the float32 operations of :func:`greedy_nms` (and of
    :func:`detector.boxes.batched_box_iou`), so both runtimes take the same decisions.
    """
    boxes = np.asarray(boxes, np.float32)
    o = np.float32(1.0 if plus_one else 0.0)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + o) * (y2 - y1 + o)
    k = keep[:, None]
    w = np.maximum(np.minimum(x2[k], x2[None]) - np.maximum(x1[k], x1[None]) + o, np.float32(0))
    h = np.maximum(np.minimum(y2[k], y2[None]) - np.maximum(y1[k], y1[None]) + o, np.float32(0))
    inter = w * h
    iou = inter / (areas[k] + areas[None] - inter)
    member = iou >= np.float32(iou_threshold)
    member[np.arange(len(keep)), keep] = True
    return np.where(member, np.asarray(scores, np.float64)[None], 0.0)


def vote(boxes: np.ndarray, scores: np.ndarray, landmarks: np.ndarray, keep: np.ndarray, iou_threshold: float, *,
         plus_one: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Score-weighted voting: each kept detection's box and landmarks become the weighted mean of
    the candidates that overlap it (weights :func:`vote_weights`).

    Args:
        boxes: ``float32[K, 4]`` every candidate that passed the threshold (and top-k), any order.
        scores: ``float32[K]``.
        landmarks: ``float32[K, 5, 2]``.
        keep: ``int64[M]`` the detections NMS kept (indices into the candidates).
        iou_threshold: a candidate votes when its IoU with the kept box is ``>=`` this.
        plus_one: legacy +1-pixel areas in the IoU.

    Returns ``float32[M, 4]`` boxes and ``float32[M, 5, 2]`` landmarks. The weighted mean is taken
    in float64. Near-tied candidates (scores within ~1e-4, e.g. under bf16) then give nearly the
    same result whichever of them NMS keeps: the output is continuous in the scores.
    """
    keep = np.asarray(keep, np.int64)
    if keep.size == 0:
        return np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32)
    weights = vote_weights(boxes, scores, keep, iou_threshold, plus_one=plus_one)
    total = weights.sum(axis=1, keepdims=True)
    vb = (weights @ np.asarray(boxes, np.float64)) / total
    vl = (weights @ np.asarray(landmarks, np.float64).reshape(-1, 10)) / total
    return vb.astype(np.float32), vl.reshape(-1, 5, 2).astype(np.float32)


def finish(boxes: np.ndarray, scores: np.ndarray, landmarks: np.ndarray, scale: tuple[float, float],
           config: PostprocessConfig) -> Detections:
    """One image's decoded candidates -> its :class:`Detections` in original-image pixels.

    Args:
        boxes: ``float32[K, 4]`` in network-input pixels, sorted by decreasing ``scores``.
        scores: ``float32[K]``.
        landmarks: ``float32[K, 5, 2]`` in network-input pixels.
        scale: ``(sx, sy)``: network-input pixels per original pixel.
        config: NMS threshold, +1 convention, keep-top-k and voting (``vote_iou``).

    NMS runs in original pixels, as the references do (with +1-pixel areas the IoU depends on the
    scale boxes are expressed at).
    """
    sxy = np.asarray(scale, np.float32)
    boxes = boxes / np.concatenate([sxy, sxy])
    landmarks = landmarks / sxy
    keep = greedy_nms(boxes, config.nms_threshold, plus_one=config.nms_plus_one, max_keep=config.keep_top_k)
    scores = np.asarray(scores, np.float32)
    if config.vote_iou is None:
        return Detections(boxes[keep], scores[keep], landmarks[keep])
    vb, vl = vote(boxes, scores, landmarks, keep, config.vote_iou, plus_one=config.nms_plus_one)
    return Detections(vb, scores[keep], vl)
