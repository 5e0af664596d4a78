"""Coarse-to-fine detection in the one alignment path: window geometry, refinement, retry."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from detector.spec import DetectorSpec
from pipeline.config import AlignConfig
from pipeline.refine import RefineWindow, match_face, needs_refinement, refine_windows, window_side
from pipeline.select import box_iou
from pipeline.stage import FaceAligner, PhotoInput
from tests.shared import asset


def test_window_maps_photo_pixels_both_ways_and_extracts_them_where_it_says():
    w = RefineWindow(centre=(310.5, 220.25), scale=0.4, side=window_side(160))
    assert w.side % 32 == 0 and w.side >= 320
    pts = np.array([[300.0, 200.0], [512.3, 10.9]])
    np.testing.assert_allclose(w.to_photo(w.to_window(pts)), pts, atol=1e-9)
    # a bright square at a known photo position lands where to_window says, from the photo and
    # from a 1/2 draft of it
    photo = np.zeros((480, 640, 3), np.uint8)
    photo[196:204, 296:304] = 255  # centre (300, 200)
    draft = cv2.resize(photo, (320, 240), interpolation=cv2.INTER_AREA)
    expected = w.to_window(np.array([300.0, 200.0]))
    for source, ratio in ((photo, (1.0, 1.0)), (draft, (2.0, 2.0))):
        win = w.extract(source, ratio).astype(np.float64).sum(axis=2)
        ys, xs = np.nonzero(win > 0)
        centre = np.array([np.average(xs, weights=win[ys, xs]), np.average(ys, weights=win[ys, xs])])
        np.testing.assert_allclose(centre + 0.5, expected + 0.5, atol=0.6)


def test_refinement_is_asked_only_for_faces_the_coarse_pass_saw_small():
    side = np.array([100.0, 400.0, 1000.0])
    np.testing.assert_array_equal(needs_refinement(side, 1.0, 160), [False, False, False])  # photo's own size
    np.testing.assert_array_equal(needs_refinement(side, 0.25, 160), [True, True, False])
    windows = refine_windows(np.array([[0, 0, 100, 80], [0, 0, 400, 300]], np.float64), 160)
    assert windows[0].scale == 1.0  # never enlarged beyond the photo's pixels
    assert windows[1].scale == 2.0 ** (-11 / 8)  # 160 / 400 = 0.4 snapped to a power of 2 ** (1 / 8)
    # sub-percent changes of the coarse box (another precision) give the same window
    assert {refine_windows(np.array([[0, 0, 400 * f, 300]]), 160)[0].scale for f in (0.995, 1.0, 1.005)} == {
        2.0 ** (-11 / 8)}
    assert match_face(np.array([0, 0, 10, 10]), np.zeros((0, 4))) == -1
    assert match_face(np.array([0, 0, 10, 10]), np.array([[50, 50, 60, 60], [1, 1, 10, 11]])) == 1


def _errors(got, ref) -> list[float]:
    """Mean landmark distance in % of the reference box width, per reference face found (IoU >= 0.7)."""
    out = []
    ious = box_iou(ref.boxes, got.boxes)
    for box, lm, iou in zip(ref.boxes, ref.landmarks, ious):
        j = int(np.argmax(iou))
        if iou[j] >= 0.7:
            out.append(float(np.linalg.norm(got.landmarks[j] - lm, axis=1).mean() / (box[2] - box[0]) * 100))
    return out


def test_box_iou_golden_values_and_the_torch_reference():
    a = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 20, 30]], np.float64)  # the last one has no area
    b = np.array([[0, 0, 10, 10], [0, 0, 5, 10], [10, 10, 20, 20]], np.float64)
    expected = np.array([[1.0, 0.5, 0.0], [25 / 175, 0.0, 25 / 175], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(box_iou(a, b), expected, rtol=1e-12, atol=0)
    assert box_iou(a, np.zeros((0, 4))).shape == (3, 0) and box_iou(a[0], b).shape == (1, 3)
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 100, (2, 40, 2, 2))
    x, y = np.sort(corners[..., 0], axis=-1), np.sort(corners[..., 1], axis=-1)
    boxes = np.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)  # [2, 40, 4] valid boxes
    torch = pytest.importorskip("torch")
    from detector.boxes import box_iou as torch_box_iou

    want = torch_box_iou(torch.from_numpy(boxes[0]), torch.from_numpy(boxes[1])).numpy()
    np.testing.assert_allclose(box_iou(boxes[0], boxes[1]), want, rtol=1e-12, atol=1e-15)
    assert (box_iou(boxes[0], boxes[1]) > 0).any()


@pytest.fixture(scope="module")
def torch_detector(mobilenet_weights):
    return DetectorSpec(weights=str(mobilenet_weights), runtime="torch").build()


def test_refined_landmarks_agree_with_the_full_size_detection_better_than_coarse_ones(torch_detector):
    """The crowd photo (1024 px wide, ~28 faces) at cap:512: every face found is refined, and the
    refined landmarks are closer to the detection at the photo's own size."""
    data = asset("images/crowd_biubug6_curve_test.jpg").read_bytes()
    every = dict(select="all", min_score=0.8, retry_resize=None)

    def run(**kw):
        aligner = FaceAligner(detector=torch_detector, config=AlignConfig(**every, **kw))
        return aligner.run([PhotoInput(data=data, source="crowd")])[0]

    ref = run(resize="original", refine_size=None)
    coarse = run(resize="cap:512", refine_size=None)
    fine = run(resize="cap:512", refine_size=128)
    assert len(ref.boxes) >= 15 and fine.refined[fine.selected].mean() >= 0.9  # a face cut by the border may not match
    before, after = _errors(coarse, ref), _errors(fine, ref)
    assert len(after) >= len(before) >= 10
    assert np.median(after) < 0.6 * np.median(before), (np.median(before), np.median(after))
    # the refined faces' quality is measured on their final crops
    assert fine.quality != coarse.quality


def test_a_photo_without_a_face_at_the_coarse_size_is_retried_finer(torch_detector):
    """A 60-px face on a 3000x3000 canvas is ~13 px at cap:640 (not found); cap:1600 finds it."""
    face = cv2.imread(str(asset("verification/deepface/img1.jpg")))
    canvas = np.full((3000, 3000, 3), 128, np.uint8)
    canvas[1500:1580, 1500:1560] = cv2.resize(face, (60, 80), interpolation=cv2.INTER_AREA)
    data = cv2.imencode(".png", canvas)[1].tobytes()
    without = FaceAligner(detector=torch_detector, config=AlignConfig(retry_resize=None)).run([PhotoInput(data=data)])
    with_retry = FaceAligner(detector=torch_detector, config=AlignConfig()).run([PhotoInput(data=data)])
    assert without[0].selected == [] and not without[0].error
    assert with_retry[0].selected == [0] and with_retry[0].crops.shape == (1, 112, 112, 3)
    box = with_retry[0].boxes[0]
    assert 1490 <= (box[0] + box[2]) / 2 <= 1570 and 1490 <= (box[1] + box[3]) / 2 <= 1590


def test_one_set_of_defaults_for_the_python_api_the_job_and_verification():
    from jobs.align_dataset import build_parser, config_from_args

    defaults = AlignConfig()
    assert (defaults.select, defaults.min_score, defaults.resize.to_string()) == ("central", 0.8, "cap:640")
    job = config_from_args(build_parser().parse_args(["--src", "a", "--dst", "b"]))
    fields = ("image_size", "crop", "select", "max_faces", "min_score", "min_face_size", "resize", "refine_size",
              "retry_resize", "vote_iou")
    assert {f: getattr(job.align, f) for f in fields} == {f: getattr(defaults, f) for f in fields}
    from pipeline.job.config import AlignJobConfig

    assert AlignJobConfig(src="a", dst="b").align == job.align
    # verification: the command line, the Python API and the study's base row use the same AlignConfig
    from pipeline.verification import EvaluationConfig
    from pipeline.verification.cli import build_parser as verification_parser
    from pipeline.verification.cli import evaluation_config_from_args
    from pipeline.verification.study import default_variants

    args = verification_parser().parse_args(["--lfw", "x", "--model", "m.onnx", "--out", "o"])
    verification = evaluation_config_from_args(args, has_landmarks=False)
    assert {f: getattr(verification.align, f) for f in fields} == {f: getattr(defaults, f) for f in fields}
    assert EvaluationConfig().align == defaults
    from tests.shared import MOBILENET_WEIGHTS

    spec = DetectorSpec(weights=str(asset(MOBILENET_WEIGHTS)), runtime="torch")
    assert default_variants(spec)[0].align == defaults
