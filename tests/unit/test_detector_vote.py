"""Score-weighted voting of boxes and landmarks (:attr:`detector.api.PostprocessConfig.vote_iou`).

* A hand-computed weighted mean on a tiny synthetic case, in numpy (:func:`detector.postprocess.vote`)
  and batched torch (:func:`detector.inference.vote_torch`).
* Continuity: two near-tied candidates whose order a 1e-6 score change swaps give (nearly) the same
  voted landmarks, while the plain NMS survivor jumps to the other candidate's landmarks.
* On the golden photos the numpy postprocess of the ONNX runtimes equals the torch one with voting
  on (1e-5 relative, same kept faces, same scores as without voting).
* Off by default: the default config and ``vote_iou=None`` give the reference's result bit for bit
  (biubug6 parity itself is ``tests/test_detector_parity.py``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detector.api import PostprocessConfig
from detector.inference import vote_torch
from detector.postprocess import finish, vote
from pipeline.config import AlignConfig
from tests.golden_data import golden_detections, golden_image

ENTRIES = golden_detections()["images"]

# three candidates in score order: a far box (0.95), then two that overlap with IoU 0.8 (0.9, 0.6)
BOXES = np.array([[50, 50, 60, 60], [0, 0, 10, 10], [0, 0, 10, 8]], np.float32)
SCORES = np.array([0.95, 0.9, 0.6], np.float32)
LANDMARKS = np.stack([np.full((5, 2), v, np.float32) for v in (55.0, 4.0, 6.0)])


def test_vote_reproduces_a_hand_computed_weighted_mean():
    keep = np.array([0, 1])
    boxes, landmarks = vote(BOXES, SCORES, LANDMARKS, keep, 0.7)
    # kept 1 = [0, 0, 10, 10] (0.9) with candidate 2 = [0, 0, 10, 8] (0.6, IoU 0.8 >= 0.7)
    expected_box = (0.9 * np.array([0, 0, 10, 10]) + 0.6 * np.array([0, 0, 10, 8])) / 1.5
    np.testing.assert_allclose(boxes[1], expected_box, rtol=1e-6)
    np.testing.assert_allclose(landmarks[1], np.full((5, 2), (0.9 * 4 + 0.6 * 6) / 1.5), rtol=1e-6)
    # the far box votes alone: unchanged
    np.testing.assert_array_equal(boxes[0], BOXES[0])
    np.testing.assert_array_equal(landmarks[0], LANDMARKS[0])
    # above the pair's IoU nobody else votes
    boxes, landmarks = vote(BOXES, SCORES, LANDMARKS, keep, 0.81)
    np.testing.assert_array_equal(landmarks, LANDMARKS[keep])
    # torch: the same numbers
    # torch, batched: the same numbers for the kept rows, the other rows untouched, padding ignored
    pad = lambda x: torch.from_numpy(np.concatenate([x, np.full_like(x[:1], 7.0)]))[None].repeat(2, *[1] * x.ndim)  # noqa: E731
    valid = torch.tensor([[True, True, True, False]] * 2)
    kept = torch.tensor([[True, True, False, False]] * 2)
    tb, tl = vote_torch(pad(BOXES), pad(SCORES), pad(LANDMARKS), valid, kept, 0.7)
    vb, vl = vote(BOXES, SCORES, LANDMARKS, keep, 0.7)
    for j in range(2):
        np.testing.assert_allclose(tb[j, :2].numpy(), vb, rtol=1e-7)
        np.testing.assert_allclose(tl[j, :2].numpy(), vl, rtol=1e-7)
        np.testing.assert_array_equal(tl[j, 2:].numpy(), pad(LANDMARKS)[j, 2:].numpy())


@pytest.mark.parametrize("plus_one", [True, False])
def test_vote_is_continuous_in_near_tied_scores(plus_one):
    """Two overlapping candidates 1e-6 apart: whichever NMS keeps, the voted landmarks agree."""
    boxes = np.array([[100, 100, 164, 164], [101, 100, 165, 165]], np.float32)
    landmarks = np.stack([np.full((5, 2), 120.0, np.float32), np.full((5, 2), 124.0, np.float32)])
    results, plain = [], []
    for eps in (1e-6, -1e-6):
        scores = np.array([0.9 + eps, 0.9], np.float32)
        order = np.argsort(-scores, kind="stable")
        cfg = PostprocessConfig(nms_plus_one=plus_one)
        off = finish(boxes[order], scores[order], landmarks[order], (1.0, 1.0), cfg)
        on = finish(boxes[order], scores[order], landmarks[order], (1.0, 1.0),
                    PostprocessConfig(nms_plus_one=plus_one, vote_iou=0.6))
        assert len(off) == len(on) == 1
        plain.append(off.landmarks[0])
        results.append(on.landmarks[0])
    assert np.abs(plain[0] - plain[1]).max() == pytest.approx(4.0)  # the survivor swapped
    assert np.abs(results[0] - results[1]).max() < 1e-4  # the vote did not move
    np.testing.assert_allclose(results[0], 122.0, atol=1e-4)


def test_vote_off_by_default_is_bit_exact():
    cfg = PostprocessConfig()
    assert cfg.vote_iou is None
    off = finish(BOXES, SCORES, LANDMARKS, (1.0, 1.0), cfg)
    np.testing.assert_array_equal(off.landmarks, LANDMARKS[[0, 1]])
    with pytest.raises(ValueError, match="vote_iou"):
        PostprocessConfig(vote_iou=0.0)
    with pytest.raises(ValueError, match="vote_iou"):
        AlignConfig(vote_iou=1.5)


@pytest.fixture(scope="module")
def onnx_retinaface(tmp_path_factory, mobilenet_weights):
    from detector.export import export_onnx
    from detector.spec import DetectorSpec

    path = export_onnx(mobilenet_weights, tmp_path_factory.mktemp("onnx") / "retinaface.onnx")
    return DetectorSpec(weights=str(path), runtime="onnxruntime", threads=2).build()


@pytest.mark.parametrize("conf", [0.02, 0.5])
@pytest.mark.parametrize("index", range(len(ENTRIES)), ids=[e["image"].split("/")[-1] for e in ENTRIES])
def test_numpy_vote_equals_torch_vote_on_golden_photos(onnx_retinaface, index, conf):
    from detector.config import ResizePolicy
    from detector.inference import RetinaFacePostprocess
    from detector.model import RetinaFaceOutput

    entry = ENTRIES[index]
    image = golden_image(entry)
    det = onnx_retinaface
    resize = ResizePolicy.original() if entry["resize"] == 1.0 else ResizePolicy.long_side(640)
    plan = det.plan(image.shape[0], image.shape[1], resize)
    raw = [np.array(o) for o in det.forward_group([image], [plan], plan.canvas_hw)]
    cfg = PostprocessConfig(conf_threshold=conf, vote_iou=0.6)
    ours = det.postprocess(raw, [plan], plan.canvas_hw, cfg)[0]
    plain = det.postprocess(raw, [plan], plan.canvas_hw, PostprocessConfig(conf_threshold=conf))[0]
    ref = RetinaFacePostprocess(det.config, cfg)(
        RetinaFaceOutput(*(torch.from_numpy(r) for r in raw)), plan.canvas_hw,
        torch.tensor([plan.scale[0]], dtype=torch.float32))[0].numpy()
    assert len(ref) == len(ours) == len(plain) > 0
    np.testing.assert_allclose(ours.boxes, ref.boxes, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ours.landmarks, ref.landmarks, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(ours.scores, plain.scores)  # voting moves points, never scores
    np.testing.assert_allclose(ours.scores, ref.scores, rtol=0, atol=1e-6)


def test_detect_takes_vote_per_call(onnx_retinaface, detector):
    """The per-call option reaches both runtimes' postprocess (the aligner passes it this way)."""
    image = golden_image(ENTRIES[0])
    for det in (onnx_retinaface, detector):
        off = det.detect([image], conf_threshold=0.5)[0].numpy()
        on = det.detect([image], conf_threshold=0.5, vote_iou=0.6)[0].numpy()
        np.testing.assert_array_equal(on.scores, off.scores)
        assert np.abs(on.landmarks - off.landmarks).max() > 0
        moved = np.linalg.norm(on.landmarks - off.landmarks, axis=2).mean(axis=1) / (off.boxes[:, 2] - off.boxes[:, 0])
        assert np.median(moved) < 0.02  # a vote among neighbours: a small move of the typical face


def test_bf16_landmark_check_through_the_aligner(detector, mobilenet_weights):
    """``benchmarks/check_bf16_landmarks.py --aligner`` on two deepface photos: every comparison row is
    there, the same faces are found, and a run compared with itself has no drift."""
    pytest.importorskip("openvino")
    from benchmarks.check_bf16_landmarks import measure_aligner
    from detector.export import onnx_for_weights
    from detector.spec import DetectorSpec
    from tests.shared import asset

    paths = sorted(asset("verification/deepface").glob("img1*.jpg"))[:2]
    bf16 = DetectorSpec(weights=str(onnx_for_weights(mobilenet_weights)), runtime="openvino", precision="bf16").build()
    out = measure_aligner(paths, "deepface", [0.6], detector, bf16)
    assert set(out) == {"bf16 vs fp32", "bf16+v0.6 vs fp32+v0.6", "fp32 vs full", "bf16 vs full",
                        "fp32+v0.6 vs full", "bf16+v0.6 vs full"}
    row = out["bf16+v0.6 vs fp32+v0.6"]
    assert len(row["errors"]) == 2 and row["missed"] == 0
    assert max(row["errors"]) < 1.0  # % of the box width
    same = measure_aligner(paths, "deepface", [], detector, detector)["bf16 vs fp32"]
    assert same["errors"] == [0.0, 0.0]


def test_batched_torch_vote_equals_single_images(detector):
    """A mixed-size padded batch votes each image as if it ran alone (padding never votes)."""
    images = [golden_image(e) for e in ENTRIES[:3]]
    together = detector.detect(images, conf_threshold=0.5, vote_iou=0.6)
    for image, got in zip(images, together):
        alone = detector.detect([image], conf_threshold=0.5, vote_iou=0.6)[0].numpy()
        got = got.numpy()
        np.testing.assert_allclose(got.landmarks, alone.landmarks, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(got.boxes, alone.boxes, rtol=1e-5, atol=1e-3)


def test_interleaved_timing_calls_each_one_alike():
    """``check_bf16_landmarks.interleaved_ms``: warm calls, then rounds of timed calls of each in turn."""
    from benchmarks.check_bf16_landmarks import interleaved_ms

    order: list[str] = []
    ms = interleaved_ms({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 2, warm=1, per_round=3)
    assert set(ms) == {"a", "b"} and all(v >= 0.0 for v in ms.values())
    assert order == ["a", "b"] + ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3
