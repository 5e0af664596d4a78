"""Verification metrics against brute-force definitions on synthetic scores."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.verification.metrics import (
    DEFAULT_FARS,
    VerificationMetrics,
    best_accuracy,
    far_key,
    far_rank,
    roc_curve,
    tar_at_far,
)


def brute_tar_at_far(scores, labels, far):
    """Pure Python, by definition: the highest TAR over every threshold whose FAR does not exceed ``far``
    (accept score > threshold); ``None`` when fewer than 1 / far negatives make FAR ``far`` unmeasurable."""
    negatives = [s for s, same in zip(scores, labels) if not same]
    positives = [s for s, same in zip(scores, labels) if same]
    allowed = int(math.floor(round(far * len(negatives), 9)))  # negatives that may be accepted
    if allowed == 0:
        return None
    best = 0.0
    for t in set(scores) | {min(scores) - 1.0}:
        if sum(1 for s in negatives if s > t) <= allowed:
            best = max(best, sum(1 for s in positives if s > t) / len(positives))
    return best


def brute_auc(scores, labels):
    pos = scores[labels]
    neg = scores[~labels]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return (greater + 0.5 * ties) / (pos.size * neg.size)


@pytest.fixture(params=[0, 1, 2])
def synthetic(request):
    rng = np.random.default_rng(request.param)
    n_pos, n_neg = 60, 1200
    pos = rng.normal(0.6, 0.2, n_pos)
    neg = rng.normal(0.1, 0.2, n_neg)
    if request.param == 2:  # heavy ties: scores on a coarse grid
        pos, neg = np.round(pos, 1), np.round(neg, 1)
    scores = np.r_[pos, neg]
    labels = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
    order = rng.permutation(scores.size)
    return scores[order], labels[order]


def test_tar_at_far_matches_brute_force(synthetic):
    scores, labels = synthetic
    fars = DEFAULT_FARS + (0.05, 0.0025, 0.29)
    got = tar_at_far(scores, labels, fars)
    for far in fars:
        assert got[far] == brute_tar_at_far(scores.tolist(), labels.tolist(), far), far
    # 1200 negatives: 1e-3 is the smallest measurable decade; smaller ones are not available.
    assert got[1e-6] is None and got[1e-5] is None and got[1e-4] is None
    assert got[1e-3] is not None and 0.0 < got[1e-1] <= 1.0
    assert got[1e-3] <= got[1e-2] <= got[1e-1]


def test_tar_at_far_hand_example():
    # 10 negatives. FAR 0.2 may accept 2 of them: threshold 0.7 (accepts 0.95, 0.8); positives > 0.7: 3 of 4.
    neg = [0.95, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]
    pos = [0.9, 0.85, 0.8, 0.3]
    scores = np.array(pos + neg)
    labels = np.array([1] * 4 + [0] * 10)
    got = tar_at_far(scores, labels, (0.2, 0.1, 0.05, 0.5))
    assert got[0.2] == 0.75  # 0.8 is strictly above 0.7
    assert got[0.1] == 0.5  # threshold 0.8: 0.8 itself is not strictly above
    assert got[0.05] is None  # floor(0.5) = 0 negatives: not measurable
    assert got[0.5] == 0.75  # threshold 0.4
    # ties: three negatives at 0.9; FAR 0.2 (2 allowed) cannot accept any of them
    tied = tar_at_far(np.array([0.95, 0.92, 0.9, 0.9, 0.9, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.0]),
                      np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), (0.2,))
    assert tied[0.2] == 1.0


def test_far_rank_is_exact_on_decimal_fars():
    assert far_rank(0.29, 100) == 29  # 0.29 * 100 == 28.999999999999996 in floats
    assert far_rank(0.01, 262) == 2 and far_rank(0.001, 262) == 0
    assert far_rank(1e-6, 15_658_489 - 19_557) == 15
    with pytest.raises(ValueError):
        far_rank(0.0, 10)


def test_roc_auc_matches_mann_whitney(synthetic):
    scores, labels = synthetic
    roc = roc_curve(scores, labels)
    assert roc.auc == pytest.approx(brute_auc(scores, labels), abs=1e-12)
    assert roc.fpr[0] == 0 and roc.tpr[0] == 0 and roc.fpr[-1] == 1 and roc.tpr[-1] == 1
    assert np.all(np.diff(roc.fpr) >= 0) and np.all(np.diff(roc.tpr) >= 0)
    # every ROC point is the accepted fraction at "score >= threshold"
    for i in range(1, roc.fpr.size, 37):
        t = roc.thresholds[i]
        assert roc.tpr[i] == np.mean(scores[labels] >= t)
        assert roc.fpr[i] == np.mean(scores[~labels] >= t)


def test_best_accuracy_matches_brute_force(synthetic):
    scores, labels = synthetic
    acc, threshold = best_accuracy(scores, labels)
    candidates = np.r_[np.unique(scores), scores.min() - 1]
    brute = max(np.mean((scores > t) == labels) for t in candidates)
    assert acc == pytest.approx(brute, abs=1e-12)
    assert np.mean((scores > threshold) == labels) == pytest.approx(acc, abs=1e-12)


def test_report_json_marks_unmeasurable_fars_as_null():
    rng = np.random.default_rng(5)
    scores = np.r_[rng.normal(1, 0.1, 38), rng.normal(0, 0.1, 262)]
    labels = np.r_[np.ones(38, bool), np.zeros(262, bool)]
    js = VerificationMetrics.compute(scores, labels).to_json()
    assert list(js["tar_at_far"]) == ["1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1"]
    assert [js["tar_at_far"][k] for k in ("1e-06", "1e-05", "0.0001", "0.001")] == [None] * 4
    assert js["tar_at_far"]["0.01"] == 1.0 and js["auc"] == 1.0
    assert js["negatives"] == 262 and js["positives"] == 38
    assert far_key(1e-6) == "1e-06"


def test_metrics_refuse_degenerate_input():
    with pytest.raises(ValueError, match="positive and negative"):
        tar_at_far(np.array([0.1, 0.2]), np.array([0, 0]))
    with pytest.raises(ValueError, match="NaN"):
        roc_curve(np.array([0.1, np.nan]), np.array([0, 1]))
    with pytest.raises(ValueError, match="0/1"):
        roc_curve(np.array([0.1, 0.2]), np.array([0, 2]))
