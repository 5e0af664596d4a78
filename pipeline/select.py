"""Which detected faces of an image to align.

Modes (each is an ordering; ``max_faces`` then keeps the first ones):

* ``"largest"``: box area, largest first.
* ``"central"``: facenet's ``align_dataset`` rule, box area penalised by the squared distance of the
  box centre from the image centre, ``area - 2.0 * offset_dist_squared``, highest first.
* ``"score"``: detector confidence, highest first.
* ``"all"``: every face, in the detector's order (confidence, highest first).
* ``"identity"``: the face nearest to its identity's centre, smallest ``distances`` first (the
  align job's ``--select identity``: per-face cosine distances from its recogniser pass; faces
  with a NaN distance come last). Needs ``distances``.

Ties keep the detector's order (stable sort), so ``max_faces=1`` picks exactly what
``np.argmax`` of the key picks (facenet's behaviour).

Filters are applied before the ordering: ``score >= min_score`` and
``min(box width, box height) >= min_face_size`` (box sides in image pixels).

:func:`box_iou` (numpy, pairwise) tells which detection of one pass is which face of another
(coarse-to-fine refinement, the benchmarks' matching).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["SELECT_MODES", "SelectMode", "box_iou", "default_max_faces", "selection_key", "select_faces"]

SelectMode = Literal["largest", "central", "score", "all", "identity"]
SELECT_MODES: tuple[str, ...] = ("largest", "central", "score", "all", "identity")


def default_max_faces(mode: str) -> int | None:
    """1 for the single-face modes, ``None`` (unlimited) for ``"all"``."""
    return None if mode == "all" else 1


def selection_key(boxes: np.ndarray, scores: np.ndarray, image_shape: tuple[int, ...],
                  mode: str, *, distances: np.ndarray | None = None) -> np.ndarray:
    """The per-face ``[K]`` float64 key that ``mode`` sorts by (descending).

    Args:
        boxes: ``[K, 4]`` x1 y1 x2 y2 in image pixels.
        scores: ``[K]`` confidences.
        image_shape: the image's shape (``(H, W, ...)``), used by ``"central"``.
        mode: one of :data:`SELECT_MODES`.
        distances: ``[K]`` per-face distances to the identity's centre (``"identity"`` only).
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if mode == "identity":
        if distances is None:
            raise ValueError("selection mode 'identity' needs per-face distances (the align job's --recognizer)")
        d = np.asarray(distances, dtype=np.float64).reshape(-1)
        if d.shape[0] != b.shape[0]:
            raise ValueError(f"{b.shape[0]} boxes but {d.shape[0]} distances")
        return np.where(np.isfinite(d), -d, -np.inf)
    if mode == "largest":
        return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    if mode == "central":
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        h, w = float(image_shape[0]), float(image_shape[1])
        dx = (b[:, 0] + b[:, 2]) / 2.0 - w / 2.0
        dy = (b[:, 1] + b[:, 3]) / 2.0 - h / 2.0
        return area - (dx * dx + dy * dy) * 2.0
    if mode in ("score", "all"):
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        # "all" keeps detector order; detectors sort by score, a stable sort on score preserves it.
        return s if mode == "score" else -np.arange(s.shape[0], dtype=np.float64)
    raise ValueError(f"unknown selection mode {mode!r}; expected one of {SELECT_MODES}")


def select_faces(boxes: np.ndarray, scores: np.ndarray, *, image_shape: tuple[int, ...],
                 mode: str = "largest", min_score: float = 0.0, min_face_size: float = 0.0,
                 max_faces: int | None = None, distances: np.ndarray | None = None) -> np.ndarray:
    """Indices of the faces to keep, in selection order.

    Args:
        boxes: ``[K, 4]`` x1 y1 x2 y2 in image pixels.
        scores: ``[K]`` confidences.
        image_shape: ``(H, W, ...)`` of the image the boxes are in.
        mode: ``"largest"``, ``"central"``, ``"score"`` or ``"all"``.
        min_score: keep faces with ``score >= min_score``.
        min_face_size: keep faces whose shorter box side is ``>= min_face_size`` pixels.
        max_faces: keep at most this many (>= 1); ``None``: :func:`default_max_faces` of ``mode``
            (1 for the single-face modes, no limit for ``"all"``).
        distances: ``[K]`` per-face distances, for ``mode="identity"``.

    Returns:
        ``[M]`` int64 indices into ``boxes``/``scores`` (M <= K, possibly 0).
    """
    if mode not in SELECT_MODES:
        raise ValueError(f"unknown selection mode {mode!r}; expected one of {SELECT_MODES}")
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if b.shape[0] != s.shape[0]:
        raise ValueError(f"{b.shape[0]} boxes but {s.shape[0]} scores")
    if max_faces is None:
        max_faces = default_max_faces(mode)
    elif max_faces < 1:
        raise ValueError(f"max_faces must be >= 1 or None, got {max_faces}")
    side = np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
    keep = np.flatnonzero((s >= min_score) & (side >= min_face_size))
    if keep.size == 0:
        return keep.astype(np.int64)
    key = selection_key(b[keep], s[keep], image_shape, mode,
                        distances=None if distances is None else np.asarray(distances).reshape(-1)[keep])
    order = np.argsort(-key, kind="stable")
    chosen = keep[order]
    if max_faces is not None:
        chosen = chosen[:max_faces]
    return chosen.astype(np.int64)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection over union of boxes ``a`` ``[N, 4]`` and ``b`` ``[M, 4]`` (x1 y1 x2 y2,
    continuous convention: area ``(x2 - x1) * (y2 - y1)``) -> ``[N, M]`` float64.

    Boxes that do not overlap have IoU 0; a union of zero area (degenerate boxes) is clamped to
    ``1e-9``, so the IoU is 0 there instead of NaN. The numpy twin of :func:`detector.boxes.box_iou`
    (torch, ``plus_one=False``)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)
