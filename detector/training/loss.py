"""RetinaFace multi-task loss: classification with OHEM + box and landmark smooth-L1.

    L = w_cls * L_cls + w_box * L_box + w_lm * L_lm

* ``L_cls``: cross-entropy (face / background) over all positive anchors plus, per image, the
  ``negpos_ratio * num_positives`` background anchors with the highest classification loss (online
  hard example mining; ignored anchors never take part), summed and divided by the batch's number
  of positive anchors. Paper ratio 3 (negatives:positives = 3:1), reference 7.
* ``L_box``: smooth-L1 of encoded box offsets over positive anchors, divided by the positives.
* ``L_lm``: smooth-L1 of encoded landmark offsets over positive anchors whose face has landmarks,
  divided by their number.

Weights: the paper's lambda1 = 0.25 (box), lambda2 = 0.1 (landmarks); the reference uses 2.0 for
boxes and 1.0 for landmarks. The loss is computed in float32 whatever the outputs' dtype (AMP).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detector.anchors import AnchorGenerator
from detector.model import RetinaFaceOutput
from detector.training.dataset import TrainingBatch
from detector.training.matcher import AnchorMatcher, MatchResult

__all__ = ["LossConfig", "LossOutput", "RetinaFaceLoss", "hard_negative_mask"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LossConfig:
    """Weights and mining of the multi-task loss.

    Attributes:
        negpos_ratio: hard negatives kept per positive, per image.
        min_negatives: hard negatives kept in an image even when it has no positive anchor
            (reference 0: such an image adds nothing to the classification loss).
        cls_weight, box_weight, landmark_weight: term weights.
        smooth_l1_beta: transition point of the smooth-L1 (reference 1.0).
    """

    negpos_ratio: float = 7.0
    min_negatives: int = 0
    cls_weight: float = 1.0
    box_weight: float = 2.0
    landmark_weight: float = 1.0
    smooth_l1_beta: float = 1.0

    def __post_init__(self) -> None:
        if self.negpos_ratio < 0:
            raise ValueError("negpos_ratio must be non-negative")
        if self.min_negatives < 0:
            raise ValueError("min_negatives must be non-negative")
        if min(self.cls_weight, self.box_weight, self.landmark_weight) < 0:
            raise ValueError("loss weights must be non-negative")
        if self.smooth_l1_beta <= 0:
            raise ValueError("smooth_l1_beta must be positive")

    @classmethod
    def reference(cls) -> LossConfig:
        """biubug6: OHEM 7:1, loss = 2 * box + cls + landmarks."""
        return cls(negpos_ratio=7.0, cls_weight=1.0, box_weight=2.0, landmark_weight=1.0)

    @classmethod
    def paper(cls) -> LossConfig:
        """RetinaFace paper: OHEM 3:1, lambda1 = 0.25 (box), lambda2 = 0.1 (landmarks)."""
        return cls(negpos_ratio=3.0, cls_weight=1.0, box_weight=0.25, landmark_weight=0.1)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class LossOutput:
    """Loss terms (0-dim float32 tensors; ``total`` carries the graph) and counts.

    ``classification``, ``box`` and ``landmark`` are the unweighted terms.
    """

    total: Tensor
    classification: Tensor
    box: Tensor
    landmark: Tensor
    num_positives: int
    num_negatives: int
    num_landmark_positives: int

    def terms(self) -> dict[str, float]:
        """Detached float values for logging."""
        return {
            "loss": float(self.total.detach()),
            "cls": float(self.classification.detach()),
            "box": float(self.box.detach()),
            "landmark": float(self.landmark.detach()),
        }


def hard_negative_mask(
    anchor_loss: Tensor, *, positive: Tensor, negative: Tensor, negpos_ratio: float, min_negatives: int = 0
) -> Tensor:
    """Select the hardest background anchors per image.

    Args:
        anchor_loss: ``[B, A]`` per-anchor classification loss (no gradient needed).
        positive: ``bool [B, A]`` positive anchors.
        negative: ``bool [B, A]`` anchors eligible as negatives (background, not ignored).
        negpos_ratio: negatives per positive.
        min_negatives: floor on the number of negatives per image.

    Returns:
        ``bool [B, A]``: the ``min(max(ratio * P_b, min_negatives), N_b)`` eligible anchors of
        image ``b`` with the highest loss (ties broken by anchor order).
    """
    num_positive = positive.sum(dim=1)
    num_eligible = negative.sum(dim=1)
    wanted = torch.floor(num_positive.to(torch.float64) * negpos_ratio).to(torch.int64)
    wanted = torch.maximum(wanted, torch.full_like(wanted, min_negatives))
    wanted = torch.minimum(wanted, num_eligible)
    masked = torch.where(negative, anchor_loss, torch.full_like(anchor_loss, float("-inf")))
    order = torch.sort(masked, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return (rank < wanted[:, None]) & negative


class RetinaFaceLoss(nn.Module):
    """Matches a batch's faces to the anchors of its input size and returns :class:`LossOutput`.

    Args:
        matcher: assigns faces to anchors and encodes targets.
        anchor_generator: anchors of the model being trained (same config as the model).
        config: weights and mining.
    """

    def __init__(self, *, matcher: AnchorMatcher, anchor_generator: AnchorGenerator, config: LossConfig) -> None:
        super().__init__()
        self.matcher = matcher
        self.anchor_generator = anchor_generator
        self.config = config

    def targets(self, batch: TrainingBatch, *, device: torch.device) -> MatchResult:
        """Matched targets ``[B, A]`` of a batch on ``device``."""
        height, width = batch.images.shape[-2:]
        anchors = self.anchor_generator(int(height), int(width), device=device)
        return self.matcher.match_batch(
            boxes=batch.boxes, landmarks=batch.landmarks, has_landmarks=batch.has_landmarks, anchors=anchors
        )

    def forward(self, output: RetinaFaceOutput, batch: TrainingBatch) -> LossOutput:
        """``output``: the model's raw ``[B, A, 2 | 4 | 10]`` outputs for ``batch.images``."""
        cls_logits = output.cls_logits.float()
        bbox_deltas = output.bbox_deltas.float()
        landmark_deltas = output.landmark_deltas.float()
        device = cls_logits.device
        targets = self.targets(batch, device=device)
        if targets.labels.shape != cls_logits.shape[:2]:
            raise ValueError(
                f"model produced {tuple(cls_logits.shape[:2])} anchors, matcher {tuple(targets.labels.shape)}: "
                "anchor config and model disagree"
            )
        config = self.config
        positive = targets.positive
        negative = targets.negative
        num_positive = int(positive.sum())
        normaliser = max(num_positive, 1)

        with torch.no_grad():
            class_targets = positive.to(torch.int64)
            true_logit = cls_logits.gather(-1, class_targets[..., None]).squeeze(-1)
            anchor_loss = torch.logsumexp(cls_logits, dim=-1) - true_logit  # [B, A] cross-entropy
            hard = hard_negative_mask(
                anchor_loss,
                positive=positive,
                negative=negative,
                negpos_ratio=config.negpos_ratio,
                min_negatives=config.min_negatives,
            )
        selected = positive | hard
        classification = F.cross_entropy(
            cls_logits[selected], positive[selected].to(torch.int64), reduction="sum"
        ) / normaliser

        box = F.smooth_l1_loss(
            bbox_deltas[positive], targets.box_targets[positive], reduction="sum", beta=config.smooth_l1_beta
        ) / normaliser

        landmark_mask = targets.landmark_mask
        num_landmark = int(landmark_mask.sum())
        landmark = F.smooth_l1_loss(
            landmark_deltas[landmark_mask],
            targets.landmark_targets[landmark_mask],
            reduction="sum",
            beta=config.smooth_l1_beta,
        ) / max(num_landmark, 1)

        total = config.cls_weight * classification + config.box_weight * box + config.landmark_weight * landmark
        return LossOutput(
            total=total,
            classification=classification,
            box=box,
            landmark=landmark,
            num_positives=num_positive,
            num_negatives=int(hard.sum()),
            num_landmark_positives=num_landmark,
        )
