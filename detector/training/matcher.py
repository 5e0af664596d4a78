"""Anchor-to-face matching and target encoding (SSD-style, as RetinaFace trains).

For one image with ``G`` faces and ``A`` anchors:

1. IoU of every face with every anchor (:func:`detector.boxes.box_iou`, continuous convention).
2. Each anchor takes the face it overlaps most; it is positive when that IoU is at least
   ``positive_iou``, background when below ``negative_iou``, and ignored in between (the paper:
   0.5 / 0.3; the reference: 0.35 / 0.35, i.e. no ignored band).
3. Forcing: every face's best anchor is made positive for that face (IoU set to 2), unless even
   that best IoU is below ``min_forced_iou`` (the reference's "ignore hard gt" at 0.2, which keeps
   tiny or odd faces from pulling in anchors that do not fit them). When two faces share a best
   anchor the later face wins, as in the reference loop. (The reference also re-points the best
   anchor of an unforced face at that face without making it positive; that has no effect unless
   the anchor is positive for another face, in which case it mislabels it, so it is not copied.)
4. Positive anchors get box targets, and those matched to faces with landmarks landmark targets,
   encoded with the detector's own :class:`detector.box_coder.BoxCoder`.

Shapes: anchors ``[A, 4]`` (cx, cy, w, h) and boxes ``[G, 4]`` x1y1x2y2 in the same pixel frame.
Works on whatever device its inputs are on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from detector.box_coder import BoxCoder
from detector.boxes import box_iou

__all__ = ["MatcherConfig", "MatchResult", "AnchorMatcher", "POSITIVE", "NEGATIVE", "IGNORE"]

POSITIVE = 1
NEGATIVE = 0
IGNORE = -1

FORCED_IOU = 2.0
"""IoU given to a face's best anchor when it is forced (above any real IoU)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MatcherConfig:
    """Anchor matching thresholds.

    Attributes:
        positive_iou: anchors with best IoU ``>=`` this are positive.
        negative_iou: anchors with best IoU ``<`` this are background; in between they are ignored.
        force_best_anchor: make every face's best anchor positive for it.
        min_forced_iou: faces whose best anchor IoU is below this are not forced (0 forces all).
    """

    positive_iou: float = 0.35
    negative_iou: float = 0.35
    force_best_anchor: bool = True
    min_forced_iou: float = 0.2

    def __post_init__(self) -> None:
        if not 0.0 < self.positive_iou <= 1.0:
            raise ValueError(f"positive_iou must lie in (0, 1], got {self.positive_iou}")
        if not 0.0 <= self.negative_iou <= self.positive_iou:
            raise ValueError(
                f"negative_iou must lie in [0, positive_iou={self.positive_iou}], got {self.negative_iou}"
            )
        if not 0.0 <= self.min_forced_iou <= 1.0:
            raise ValueError(f"min_forced_iou must lie in [0, 1], got {self.min_forced_iou}")

    @classmethod
    def reference(cls) -> MatcherConfig:
        """biubug6/Pytorch_Retinaface: one threshold 0.35, forced best anchors above IoU 0.2."""
        return cls(positive_iou=0.35, negative_iou=0.35, force_best_anchor=True, min_forced_iou=0.2)

    @classmethod
    def paper(cls) -> MatcherConfig:
        """RetinaFace paper: positive above 0.5, background below 0.3, ignored in between."""
        return cls(positive_iou=0.5, negative_iou=0.3, force_best_anchor=True, min_forced_iou=0.2)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class MatchResult:
    """Per-anchor targets; leading dims ``[A]`` for one image or ``[B, A]`` for a batch.

    Attributes:
        labels: ``int64`` :data:`POSITIVE` (1), :data:`NEGATIVE` (0) or :data:`IGNORE` (-1).
        matched: ``int64`` index of the face each positive anchor regresses to; -1 elsewhere.
        box_targets: ``float32 [..., 4]`` encoded boxes (zero where not positive).
        landmark_targets: ``float32 [..., 10]`` encoded landmarks (zero where ``landmark_mask`` is false).
        landmark_mask: ``bool`` positive anchors whose face has landmarks.
        iou: ``float32`` best IoU of each anchor with any face (forced anchors show 2).
    """

    labels: Tensor
    matched: Tensor
    box_targets: Tensor
    landmark_targets: Tensor
    landmark_mask: Tensor
    iou: Tensor

    @property
    def positive(self) -> Tensor:
        return self.labels == POSITIVE

    @property
    def negative(self) -> Tensor:
        return self.labels == NEGATIVE

    @staticmethod
    def stack(results: Sequence[MatchResult]) -> MatchResult:
        return MatchResult(
            labels=torch.stack([r.labels for r in results]),
            matched=torch.stack([r.matched for r in results]),
            box_targets=torch.stack([r.box_targets for r in results]),
            landmark_targets=torch.stack([r.landmark_targets for r in results]),
            landmark_mask=torch.stack([r.landmark_mask for r in results]),
            iou=torch.stack([r.iou for r in results]),
        )


def _anchors_xyxy(anchors: Tensor) -> Tensor:
    half = anchors[:, 2:] / 2
    return torch.cat([anchors[:, :2] - half, anchors[:, :2] + half], dim=1)


class AnchorMatcher:
    """Assigns faces to anchors and encodes regression targets; see the module docstring."""

    def __init__(self, *, config: MatcherConfig, coder: BoxCoder) -> None:
        self.config = config
        self.coder = coder

    def match(
        self,
        *,
        boxes: Tensor,
        landmarks: Tensor,
        has_landmarks: Tensor,
        anchors: Tensor,
    ) -> MatchResult:
        """Match one image.

        Args:
            boxes: ``[G, 4]`` x1y1x2y2 (``G`` may be 0).
            landmarks: ``[G, 5, 2]``.
            has_landmarks: ``bool [G]``.
            anchors: ``[A, 4]`` (cx, cy, w, h), same frame and device.
        """
        config = self.config
        device = anchors.device
        num_anchors = anchors.shape[0]
        boxes = boxes.to(device=device, dtype=torch.float32).reshape(-1, 4)
        landmarks = landmarks.to(device=device, dtype=torch.float32).reshape(-1, 5, 2)
        has_landmarks = has_landmarks.to(device=device, dtype=torch.bool).reshape(-1)
        anchors = anchors.to(torch.float32)
        num_faces = boxes.shape[0]

        labels = torch.full((num_anchors,), NEGATIVE, dtype=torch.int64, device=device)
        matched = torch.full((num_anchors,), -1, dtype=torch.int64, device=device)
        box_targets = torch.zeros((num_anchors, 4), dtype=torch.float32, device=device)
        landmark_targets = torch.zeros((num_anchors, 10), dtype=torch.float32, device=device)
        landmark_mask = torch.zeros((num_anchors,), dtype=torch.bool, device=device)
        if num_faces == 0:
            return MatchResult(
                labels=labels, matched=matched, box_targets=box_targets, landmark_targets=landmark_targets,
                landmark_mask=landmark_mask, iou=torch.zeros((num_anchors,), dtype=torch.float32, device=device),
            )

        overlaps = box_iou(boxes, _anchors_xyxy(anchors))  # [G, A]
        best_iou, best_face = overlaps.max(dim=0)  # [A]
        if config.force_best_anchor:
            face_best_iou, face_best_anchor = overlaps.max(dim=1)  # [G]
            forced = face_best_iou >= config.min_forced_iou
            if bool(forced.any()):
                faces = torch.arange(num_faces, device=device)
                # later faces win a shared best anchor (as the reference's loop): max over face index
                winner = torch.full((num_anchors,), -1, dtype=torch.int64, device=device)
                winner.scatter_reduce_(0, face_best_anchor[forced], faces[forced], reduce="amax")
                is_forced = winner >= 0
                best_face = torch.where(is_forced, winner, best_face)
                best_iou = torch.where(is_forced, torch.full_like(best_iou, FORCED_IOU), best_iou)

        positive = best_iou >= config.positive_iou
        labels[(best_iou >= config.negative_iou) & ~positive] = IGNORE
        labels[positive] = POSITIVE
        matched[positive] = best_face[positive]

        positive_faces = best_face[positive]
        positive_anchors = anchors[positive]
        box_targets[positive] = self.coder.encode_boxes(boxes[positive_faces], positive_anchors)
        with_landmarks = has_landmarks[positive_faces]
        landmark_mask[positive] = with_landmarks
        landmark_targets[positive] = torch.where(
            with_landmarks[:, None],
            self.coder.encode_landmarks(landmarks[positive_faces], positive_anchors),
            torch.zeros((), dtype=torch.float32, device=device),
        )
        return MatchResult(
            labels=labels, matched=matched, box_targets=box_targets, landmark_targets=landmark_targets,
            landmark_mask=landmark_mask, iou=best_iou,
        )

    def match_batch(
        self,
        *,
        boxes: Sequence[Tensor],
        landmarks: Sequence[Tensor],
        has_landmarks: Sequence[Tensor],
        anchors: Tensor,
    ) -> MatchResult:
        """Match ``B`` images against the same ``[A, 4]`` anchors -> fields with leading ``[B, A]``."""
        if not (len(boxes) == len(landmarks) == len(has_landmarks)):
            raise ValueError("boxes, landmarks and has_landmarks must have one entry per image")
        return MatchResult.stack(
            [
                self.match(boxes=b, landmarks=lm, has_landmarks=h, anchors=anchors)
                for b, lm, h in zip(boxes, landmarks, has_landmarks)
            ]
        )
