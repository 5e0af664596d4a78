"""Pure box functions (torchvision ``ops/boxes.py`` style). Boxes are ``Tensor[N, 4]`` x1y1x2y2.

``plus_one=True`` uses the legacy pixel-inclusive convention (width = x2 - x1 + 1) of the WIDER FACE
evaluation and of biubug6's ``py_cpu_nms``; the default is the continuous convention.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["box_area", "box_iou", "batched_box_iou", "nms", "batched_nms", "padded_nms", "chunked_padded_nms"]


def box_area(boxes: Tensor, *, plus_one: bool = False) -> Tensor:
    """``Tensor[..., 4]`` -> ``Tensor[...]``."""
    o = 1.0 if plus_one else 0.0
    return (boxes[..., 2] - boxes[..., 0] + o) * (boxes[..., 3] - boxes[..., 1] + o)


def batched_box_iou(a: Tensor, b: Tensor, *, plus_one: bool = False) -> Tensor:
    """Pairwise IoU of ``Tensor[..., N, 4]`` and ``Tensor[..., M, 4]`` -> ``Tensor[..., N, M]``."""
    o = 1.0 if plus_one else 0.0
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = (rb - lt + o).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a, plus_one=plus_one)[..., :, None] + box_area(b, plus_one=plus_one)[..., None, :] - inter
    return inter / union


def box_iou(a: Tensor, b: Tensor, *, plus_one: bool = False) -> Tensor:
    """Pairwise IoU of ``Tensor[N, 4]`` and ``Tensor[M, 4]`` -> ``Tensor[N, M]``."""
    return batched_box_iou(a, b, plus_one=plus_one)


def _greedy_keep(suppresses: Tensor, valid: Tensor, rounds: int | None = None) -> Tensor:
    """Exact greedy NMS from a suppression relation, vectorised.

    Args:
        suppresses: ``BoolTensor[B, K, K]``; ``[b, i, j]`` is True when candidate ``i`` (higher
            ranked, ``i < j``) would suppress ``j``. Strictly upper triangular.
        valid: ``BoolTensor[B, K]``; invalid candidates neither survive nor suppress.

    Returns ``BoolTensor[B, K]``: the candidates greedy NMS keeps.

    Greedy NMS keeps ``j`` iff no kept ``i < j`` suppresses it. That recursion has a unique solution
    which the fixed-point iteration ``keep <- valid & ~any_i(keep_i & S_ij)`` reaches from
    ``keep = valid``: after ``t`` rounds every candidate whose suppression chain is shorter than
    ``t`` is final, so it stops after (longest chain + 1) rounds -- a handful in practice -- with each
    round one batched matrix product on the device instead of a Python loop over boxes.
    ``rounds`` between two tests for the fixed point (each a host sync; default 4 on a GPU, else 1)
    does not change the result.
    """
    s = suppresses.to(torch.float32)
    keep = valid
    if rounds is None:
        rounds = 4 if s.is_cuda else 1
    while True:
        for _ in range(rounds):
            previous = keep
            hit = torch.bmm(keep.to(torch.float32).unsqueeze(1), s).squeeze(1) > 0
            keep = valid & ~hit
        if torch.equal(keep, previous):  # the map's fixed point: further rounds change nothing
            return keep


def padded_nms(boxes: Tensor, scores: Tensor, valid: Tensor, iou_threshold: float, *,
               plus_one: bool = False) -> Tensor:
    """Greedy NMS on a padded batch whose candidates are already sorted by descending score.

    Args:
        boxes: ``Tensor[B, K, 4]``, each row sorted by score (highest first).
        scores: ``Tensor[B, K]`` (only used for its shape; ordering is the caller's).
        valid: ``BoolTensor[B, K]`` marks real candidates.

    Returns ``BoolTensor[B, K]`` of kept candidates. A box is suppressed when its IoU with a kept,
    higher-ranked box is strictly greater than ``iou_threshold``.
    """
    del scores
    k = boxes.shape[1]
    if k == 0:
        return valid.clone()
    iou = batched_box_iou(boxes, boxes, plus_one=plus_one)
    upper = torch.ones(k, k, dtype=torch.bool, device=boxes.device).triu_(1)
    return _greedy_keep((iou > iou_threshold) & upper, valid)


def chunked_padded_nms(boxes: Tensor, scores: Tensor, valid: Tensor, iou_threshold: float, *,
                       plus_one: bool = False, budget: int = 64_000_000) -> Tensor:
    """:func:`padded_nms` over slices of the batch, so that no slice's ``[b, K, K]`` IoU tensor
    holds more than ``budget`` elements (same result as one call)."""
    b, k = scores.shape
    per_chunk = max(1, budget // max(1, k * k))
    if per_chunk >= b:
        return padded_nms(boxes, scores, valid, iou_threshold, plus_one=plus_one)
    return torch.cat([
        padded_nms(boxes[i:i + per_chunk], scores[i:i + per_chunk], valid[i:i + per_chunk], iou_threshold,
                   plus_one=plus_one)
        for i in range(0, b, per_chunk)
    ])


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, *, plus_one: bool = False) -> Tensor:
    """Greedy NMS. ``boxes: Tensor[N, 4]``, ``scores: Tensor[N]`` -> ``LongTensor[K]`` kept indices,
    in decreasing score order (ties keep input order)."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    keep = padded_nms(boxes[order][None], scores[order][None],
                      torch.ones(1, order.numel(), dtype=torch.bool, device=boxes.device),
                      iou_threshold, plus_one=plus_one)[0]
    return order[keep]


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, *,
                plus_one: bool = False) -> Tensor:
    """NMS independently per category / image ``idxs`` (``Tensor[N]``); returns kept indices sorted by
    decreasing score. Boxes of different groups never suppress each other."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    # offset trick: move each group to its own region so cross-group IoU is zero
    span = (boxes.max() - boxes.min()).abs() + 2.0
    shifted = boxes + (idxs.to(boxes.dtype) * span)[:, None]
    return nms(shifted, scores, iou_threshold, plus_one=plus_one)
