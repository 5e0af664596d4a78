"""Box voting (hand-computed cases and invariants) and flip + multi-scale TTA on real photos."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from detector.evaluation.tta import TTAConfig, box_vote, detect_tta, flip_detections_xyxy
from detector.evaluation.widerface import (
    WiderFaceEvaluator,
    bbox_overlaps_plus_one,
    iter_image_files,
    load_ground_truth,
)
from detector.inference import ResizePolicy
from tests.shared import asset


def test_overlapping_boxes_merge_into_score_weighted_mean():
    boxes = np.array([[1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10]], dtype=np.float64)
    scores = np.array([0.6, 0.8, 0.9])
    lms = np.arange(30, dtype=np.float64).reshape(3, 5, 2)
    out = box_vote(boxes, scores, lms, iou_threshold=0.4)  # IoU(0, 2) = 100 / 142 under +1
    np.testing.assert_allclose(out.boxes, [[0.4, 0.4, 10.4, 10.4], [50, 50, 60, 60]])
    np.testing.assert_array_equal(out.scores, [0.9, 0.8])  # the cluster's best score
    np.testing.assert_allclose(out.landmarks[0], (0.9 * lms[2] + 0.6 * lms[0]) / 1.5)
    np.testing.assert_array_equal(out.landmarks[1], lms[1])  # singletons pass unchanged
    np.testing.assert_array_equal(out.sizes, [2, 1])


def test_vote_threshold_is_inclusive_and_clusters_are_not_transitive():
    a = [0, 0, 10, 10]
    exactly = box_vote(np.array([a, [0, 0, 10, 4]], float), np.array([0.9, 0.5]),
                       iou_threshold=0.4, plus_one=False)  # IoU = 40 / 100
    below = box_vote(np.array([a, [0, 0, 10, 3.9]], float), np.array([0.9, 0.5]),
                     iou_threshold=0.4, plus_one=False)
    assert exactly.sizes.tolist() == [2] and below.sizes.tolist() == [1, 1]
    # B overlaps both A and C, C does not overlap A: C forms its own cluster after A absorbs B.
    chain = box_vote(np.array([a, [4, 0, 14, 10], [8, 0, 18, 10]], float), np.array([0.9, 0.8, 0.7]),
                     iou_threshold=0.4, plus_one=False)
    assert chain.sizes.tolist() == [2, 1]
    np.testing.assert_allclose(chain.boxes[0], [0.8 * 4 / 1.7, 0, 10 + 0.8 * 4 / 1.7, 10])
    np.testing.assert_array_equal(chain.boxes[1], [8, 0, 18, 10])


def test_box_vote_invariants_on_random_boxes():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 200, (300, 2))
    boxes = np.column_stack([xy, xy + rng.uniform(5, 40, (300, 2))])
    scores = rng.uniform(0.05, 1.0, 300)
    out = box_vote(boxes, scores, iou_threshold=0.4)
    assert out.sizes.sum() == 300  # every candidate lands in exactly one cluster
    assert np.all(np.diff(out.scores) <= 0)
    assert set(out.scores) <= set(scores)
    singles = out.sizes == 1
    assert 0 < singles.sum() < len(out.sizes)
    top = box_vote(boxes, scores, iou_threshold=0.4, top_k=7)
    np.testing.assert_array_equal(top.boxes, out.boxes[:7])
    with pytest.raises(ValueError, match="positive"):
        box_vote(boxes[:2], np.array([0.5, 0.0]))
    empty = box_vote(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))
    assert empty.boxes.shape == (0, 4) and empty.landmarks.shape == (0, 5, 2)


def test_flip_maps_back_and_swaps_left_right_landmarks():
    boxes = np.array([[10.0, 5, 30, 25]])
    lms = np.array([[[12, 10], [28, 10], [20, 15], [14, 20], [26, 20]]], dtype=np.float64)
    b, lm = flip_detections_xyxy(boxes, lms, 100)
    np.testing.assert_array_equal(b, [[70, 5, 90, 25]])
    np.testing.assert_array_equal(lm[0, :, 0], [72, 88, 80, 74, 86])  # left eye is image-left again
    b2, lm2 = flip_detections_xyxy(b, lm, 100)
    np.testing.assert_array_equal(b2, boxes)
    np.testing.assert_array_equal(lm2, lms)


@pytest.fixture(scope="module")
def val_photos():
    return [(key, cv2.imread(str(path), cv2.IMREAD_COLOR))
            for key, path in iter_image_files(asset("widerface/val/images"))]


# Two small scales and a higher per-run threshold keep the CPU test short; the code path is the
# paper's (the job runs the full 500..1700 set with --tta).
SMALL_TTA = TTAConfig(scales=(320, 400), conf_threshold=0.05)


@pytest.mark.slow
def test_tta_on_val_photos(detector, val_photos):
    assert len(val_photos) == 4
    images = [img for _, img in val_photos]
    tta = detect_tta(detector, images, config=SMALL_TTA)
    plain = [d.numpy() for d in detector.detect(images, resize=ResizePolicy.short_side(SMALL_TTA.scales[-1]),
                                                 conf_threshold=SMALL_TTA.conf_threshold)]
    gt = load_ground_truth(asset("widerface/ground_truth"))
    ev = WiderFaceEvaluator(ground_truth=gt)
    ev_plain = WiderFaceEvaluator(ground_truth=gt)
    n_confident = 0
    for (key, _img), det, ref in zip(val_photos, tta, plain, strict=True):
        d = det.numpy()
        assert 0 < len(d) <= SMALL_TTA.top_k and np.all(np.diff(d.scores) <= 0)
        assert np.all(d.boxes[:, 2:] > d.boxes[:, :2]) and d.landmarks.shape == (len(d), 5, 2)
        # every confident face of one of the merged runs survives voting (merged with its cluster)
        confident = ref.boxes[ref.scores > 0.9]
        n_confident += len(confident)
        if len(confident):
            best = bbox_overlaps_plus_one(confident, d.boxes[d.scores > 0.9]).max(axis=1)
            assert np.mean(best >= 0.5) >= 0.95, (key, np.sort(best)[:5])
        ev.process(key, d.boxes, d.scores, box_format="xyxy")
        ev_plain.process(key, ref.boxes, ref.scores, box_format="xyxy")
    assert n_confident >= 10
    ap, ap_plain = ev.evaluate(), ev_plain.evaluate()
    assert ap["images_evaluated"] == 4
    # flip + a second scale beat the best single run (a wrong un-flip would add false positives)
    for setting in ("easy", "medium", "hard"):
        assert ap[setting] > ap_plain[setting] > 0.2, (setting, ap[setting], ap_plain[setting])


@pytest.mark.slow
def test_tta_is_mirror_equivariant(detector, val_photos):
    """TTA(mirror(image)) mirrored back equals TTA(image): same runs, coordinates mapped exactly."""
    image = val_photos[2][1]
    config = TTAConfig(scales=(320,), conf_threshold=0.05)
    a = detect_tta(detector, [image], config=config)[0].numpy()
    m = detect_tta(detector, [np.ascontiguousarray(image[:, ::-1])], config=config)[0].numpy()
    b, lm = flip_detections_xyxy(m.boxes, m.landmarks, image.shape[1])
    assert len(a) == len(m) > 10
    np.testing.assert_allclose(a.scores, m.scores, atol=1e-6)
    np.testing.assert_allclose(a.boxes, b, atol=1e-2)
    np.testing.assert_allclose(a.landmarks, lm, atol=1e-2)


@pytest.mark.slow
def test_single_run_tta_is_plain_detection(detector, val_photos):
    """One scale, no flip: voting after the detector's NMS (IoU > 0.4 suppressed) changes nothing."""
    image = val_photos[3][1]
    config = TTAConfig(scales=(320,), flip=False, conf_threshold=0.05)
    tta = detect_tta(detector, [image], config=config)[0].numpy()
    plain = detector.detect([image], resize=ResizePolicy.short_side(320), conf_threshold=0.05)[0].numpy()
    assert len(tta) == len(plain) > 10
    np.testing.assert_array_equal(tta.boxes, plain.boxes)
    np.testing.assert_array_equal(tta.scores, plain.scores)
    np.testing.assert_array_equal(tta.landmarks, plain.landmarks)
