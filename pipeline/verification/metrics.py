"""Verification metrics: ROC, AUC, TAR at fixed FAR, best accuracy, k-fold accuracy (LFW).

Conventions (shared with ``golden/verification/deepface_expected.json``):

* a pair is *accepted* at threshold ``t`` when its score is strictly greater than ``t``;
* TAR at FAR ``f``: with ``k = floor(f * negatives)``, the threshold is the negative score at index
  ``k`` of the negatives sorted in decreasing order (0-based: the highest is index 0). At most ``k``
  negatives score strictly above it, so the measured FAR is ``<= k / negatives <= f``, and no lower
  threshold keeps FAR ``<= f``: the value is the highest TAR of any threshold whose FAR does not exceed
  ``f``. This reading of "the floor(f * negatives)-th highest negative" reproduces
  ``golden/verification/deepface_expected.json`` exactly (box crop TAR@1e-2 = 0.8947 = 34/38; the
  1-based reading, index ``k - 1``, gives 30/38 on the same scores);
* with fewer than ``1 / f`` negative pairs ``k`` is 0: the protocol cannot measure that FAR (only FAR 0),
  and the value is reported as not available (``None``), never as a number;
* the ROC has one point per distinct score (ties move TPR and FPR together), starting at (0, 0);
  AUC is the trapezoidal area under it, which equals the Mann-Whitney statistic with ties counted 1/2.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

#: The FARs of insightface's IJB-B/C table.
DEFAULT_FARS: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def far_key(far: float) -> str:
    """The report key of a FAR: Python's shortest float repr (``1e-06``, ``0.0001``, ``0.1``)."""
    return repr(float(far))


def _check_scores_labels(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores but {labels.size} labels")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{int((~np.isfinite(scores)).sum())} scores are NaN or infinite")
    if labels.dtype != bool:
        unique = np.unique(labels)
        if not np.all(np.isin(unique, (0, 1))):
            raise ValueError(f"labels must be 0/1 or boolean, got values {unique[:10].tolist()}")
        labels = labels.astype(bool)
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.size:
        raise ValueError(
            f"need both positive and negative pairs, got {n_pos} positive and {labels.size - n_pos} negative"
        )
    return scores, labels


@dataclass(frozen=True, eq=False, kw_only=True)
class RocCurve:
    """ROC points ordered by decreasing threshold; ``fpr[0] == tpr[0] == 0`` at ``threshold = +inf``.

    Point ``i`` counts the pairs whose score is ``>= thresholds[i]`` as accepted.
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    positives: int
    negatives: int

    @property
    def auc(self) -> float:
        return float(np.trapezoid(self.tpr, self.fpr))


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> RocCurve:
    scores, labels = _check_scores_labels(scores, labels)
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    sorted_labels = labels[order]
    # Last index of each run of equal scores: every distinct score is one ROC point.
    last_of_run = np.r_[np.flatnonzero(np.diff(sorted_scores) != 0), sorted_scores.size - 1]
    tps = np.cumsum(sorted_labels)[last_of_run]
    fps = (last_of_run + 1) - tps
    n_pos = int(labels.sum())
    n_neg = int(labels.size - n_pos)
    return RocCurve(
        fpr=np.r_[0.0, fps / n_neg],
        tpr=np.r_[0.0, tps / n_pos],
        thresholds=np.r_[np.inf, sorted_scores[last_of_run]],
        positives=n_pos,
        negatives=n_neg,
    )


def far_rank(far: float, negatives: int) -> int:
    """``floor(far * negatives)`` computed exactly on the decimal value of ``far`` (0.29 * 100 is 29, not 28)."""
    if not 0.0 < far < 1.0:
        raise ValueError(f"FAR must be in (0, 1), got {far}")
    return math.floor(Fraction(repr(float(far))) * negatives)


def tar_at_far(scores: np.ndarray, labels: np.ndarray,
               fars: Iterable[float] = DEFAULT_FARS) -> dict[float, float | None]:
    """TAR at each FAR (see the module docstring); ``None`` where ``floor(far * negatives) == 0``."""
    scores, labels = _check_scores_labels(scores, labels)
    negatives = np.sort(scores[~labels])[::-1]
    positives = scores[labels]
    result: dict[float, float | None] = {}
    for far in fars:
        k = far_rank(far, negatives.size)
        if k == 0:
            result[float(far)] = None
            continue
        threshold = negatives[k]  # k < negatives.size because far < 1
        result[float(far)] = float(np.count_nonzero(positives > threshold) / positives.size)
    return result


def best_accuracy(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Best verification accuracy over all thresholds (accept ``score > t``) and that threshold."""
    scores, labels = _check_scores_labels(scores, labels)
    roc = roc_curve(scores, labels)
    # At ROC point i the accepted set is score >= thresholds[i]; "score > t" with t just below it is the same set.
    accuracy = (roc.tpr * roc.positives + (1.0 - roc.fpr) * roc.negatives) / (roc.positives + roc.negatives)
    best = int(np.argmax(accuracy))
    if best == 0:
        threshold = float(roc.thresholds[1])  # reject everything: any t >= the highest score
    else:
        below = roc.thresholds[best + 1] if best + 1 < roc.thresholds.size else roc.thresholds[best] - 1.0
        threshold = float((roc.thresholds[best] + below) / 2.0)
    return float(accuracy[best]), threshold


@dataclass(frozen=True, eq=False, kw_only=True)
class VerificationMetrics:
    auc: float
    tar_at_far: Mapping[float, float | None]
    best_accuracy: float
    positives: int
    negatives: int
    roc: RocCurve

    @classmethod
    def compute(cls, scores: np.ndarray, labels: np.ndarray, *,
                fars: Iterable[float] = DEFAULT_FARS) -> VerificationMetrics:
        roc = roc_curve(scores, labels)
        return cls(
            auc=roc.auc,
            tar_at_far=tar_at_far(scores, labels, fars),
            best_accuracy=best_accuracy(scores, labels)[0],
            positives=roc.positives,
            negatives=roc.negatives,
            roc=roc,
        )

    @property
    def min_measurable_far(self) -> float:
        return 1.0 / self.negatives

    def to_json(self) -> dict:
        return {
            "auc": self.auc,
            "tar_at_far": {far_key(f): v for f, v in self.tar_at_far.items()},
            "best_accuracy": self.best_accuracy,
            "positives": self.positives,
            "negatives": self.negatives,
            "min_measurable_far": self.min_measurable_far,
        }


# ----------------------------------------------------------------------------------------- k-fold accuracy


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """``(threshold, accuracy)`` of the accept rule ``score > threshold`` that is most accurate on these pairs.

    Candidates are one threshold per gap between consecutive distinct scores (the midpoint), plus one
    below the lowest score (accept all) and one above the highest (reject all): every distinct
    accept set is tried once. When several are equally accurate, the middle one of them (in
    increasing order; the upper of the two middle ones for an even count) is taken, so the rule
    does not lean towards accepting or rejecting.
    """
    scores, labels = _check_scores_labels(scores, labels)
    values, inverse = np.unique(scores, return_inverse=True)
    m = values.size
    pos = np.bincount(inverse[labels], minlength=m)
    neg = np.bincount(inverse[~labels], minlength=m)
    # cut c rejects values[:c] and accepts values[c:]; c = 0 accepts everything, c = m rejects everything
    correct = np.r_[0, np.cumsum(neg)] + (pos.sum() - np.r_[0, np.cumsum(pos)])
    tied = np.flatnonzero(correct == correct.max())
    c = int(tied[tied.size // 2])
    if c == 0:
        threshold = float(values[0] - 1.0)
    elif c == m:
        threshold = float(values[-1] + 1.0)
    else:
        threshold = float((values[c - 1] + values[c]) / 2.0)
    return threshold, float(correct[c] / scores.size)


@dataclass(frozen=True, eq=False, kw_only=True)
class KFoldAccuracy:
    """LFW's figure: per fold, the threshold most accurate on the other folds, applied to this one."""

    accuracies: np.ndarray
    """``[K]`` test accuracy of each fold (folds in increasing id order)."""
    thresholds: np.ndarray
    """``[K]`` the threshold chosen on the other ``K - 1`` folds."""
    pairs: np.ndarray
    """``[K]`` pairs scored in each fold."""

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float:
        """Population standard deviation over folds (``np.std``), as LFW results are usually reported."""
        return float(np.std(self.accuracies))

    def to_json(self) -> dict:
        return {
            "mean": self.mean, "std": self.std, "folds": self.accuracies.tolist(),
            "thresholds": self.thresholds.tolist(), "pairs_per_fold": self.pairs.tolist(),
            "rule": "per fold: threshold = best_threshold on the other folds (accept score > t); "
                    "mean and population std of the fold accuracies",
        }


def kfold_accuracy(scores: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> KFoldAccuracy:
    """k-fold verification accuracy: for each fold, :func:`best_threshold` on the pairs of all other
    folds, then the accuracy of ``score > threshold`` on the fold's own pairs."""
    scores, labels = _check_scores_labels(scores, labels)
    folds = np.asarray(folds).reshape(-1)
    if folds.shape != scores.shape:
        raise ValueError(f"{folds.size} fold ids for {scores.size} scores")
    ids = np.unique(folds)
    if ids.size < 2:
        raise ValueError(f"need at least 2 folds, got {ids.size}")
    accuracies, thresholds, sizes = [], [], []
    for k in ids:
        test = folds == k
        threshold, _ = best_threshold(scores[~test], labels[~test])
        accuracies.append(float(np.mean((scores[test] > threshold) == labels[test])))
        thresholds.append(threshold)
        sizes.append(int(test.sum()))
    return KFoldAccuracy(accuracies=np.asarray(accuracies), thresholds=np.asarray(thresholds),
                         pairs=np.asarray(sizes, dtype=np.int64))
