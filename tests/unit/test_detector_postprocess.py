"""The numpy postprocess of the ONNX runtimes equals the eager torch one, and its NMS equals torch's.

* On the golden photos (and at a resize), the raw outputs of the exported RetinaFace go through the
  torch :class:`~detector.inference.RetinaFacePostprocess` and through the numpy path of
  :class:`~detector.onnx_runtime.OnnxRetinaFace`: same kept faces, boxes / landmarks to 1e-5
  relative (float32: numpy's and torch's ``exp`` may differ by an ulp), scores to 1e-6, at the
  reference thresholds (0.02) and at 0.5.
* :func:`detector.postprocess.greedy_nms` keeps exactly what :func:`detector.boxes.nms` keeps, with
  and without the +1-pixel convention, on crowded random boxes and on SCRFD's candidates.
* The one :class:`~detector.box_coder.BoxCoder` gives the same numbers on numpy arrays and tensors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detector.api import PostprocessConfig
from detector.box_coder import BoxCoder
from detector.boxes import nms
from detector.config import get_preset
from detector.dense import InputPlan
from detector.model import RetinaFaceOutput
from detector.postprocess import greedy_nms
from detector.spec import DetectorSpec
from tests.golden_data import golden_detections, golden_image
from tests.shared import asset

ENTRIES = golden_detections()["images"]


@pytest.fixture(scope="module")
def onnx_retinaface(tmp_path_factory, mobilenet_weights):
    from detector.export import export_onnx

    path = export_onnx(mobilenet_weights, tmp_path_factory.mktemp("onnx") / "retinaface.onnx")
    return DetectorSpec(weights=str(path), runtime="onnxruntime", threads=2).build()


def _both(det, image: np.ndarray, resize, config: PostprocessConfig):
    """(torch rows, numpy rows) of one image: the same raw outputs through both postprocesses."""
    from detector.inference import RetinaFacePostprocess

    plan = det.plan(image.shape[0], image.shape[1], det.resize if resize is None else resize)
    raw = [np.array(o) for o in det.forward_group([image], [plan], plan.canvas_hw)]
    ours = det.postprocess(raw, [plan], plan.canvas_hw, config)[0]
    ref = RetinaFacePostprocess(det.config, config)(
        RetinaFaceOutput(*(torch.from_numpy(r) for r in raw)), plan.canvas_hw,
        torch.tensor([plan.scale[0]], dtype=torch.float32))[0].numpy()
    assert isinstance(ours.boxes, np.ndarray) and ours.boxes.dtype == np.float32
    return ref, ours


@pytest.mark.parametrize("conf", [0.02, 0.5])
@pytest.mark.parametrize("index", range(len(ENTRIES)), ids=[e["image"].split("/")[-1] + f"@{e['resize']:.2f}"
                                                             for e in ENTRIES])
def test_numpy_postprocess_equals_torch_on_golden_photos(onnx_retinaface, index, conf):
    from detector.config import ResizePolicy

    entry = ENTRIES[index]
    resize = ResizePolicy.original() if entry["resize"] == 1.0 else ResizePolicy.long_side(640)
    ref, ours = _both(onnx_retinaface, golden_image(entry), resize, PostprocessConfig(conf_threshold=conf))
    assert len(ref) == len(ours) and len(ref) > 0
    np.testing.assert_allclose(ours.boxes, ref.boxes, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ours.landmarks, ref.landmarks, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ours.scores, ref.scores, rtol=0, atol=1e-6)
    assert np.all(np.diff(ours.scores) <= 0)


def test_numpy_postprocess_equals_torch_with_top_k_and_keep_top_k(onnx_retinaface):
    image = golden_image(max(ENTRIES, key=lambda e: len(e["detections"])))
    for cfg in (PostprocessConfig(top_k=50, keep_top_k=20), PostprocessConfig(nms_threshold=0.2, keep_top_k=5),
                PostprocessConfig(nms_plus_one=False), PostprocessConfig(conf_threshold=0.999)):
        ref, ours = _both(onnx_retinaface, image, None, cfg)
        assert len(ref) == len(ours), cfg
        np.testing.assert_allclose(ours.boxes, ref.boxes, rtol=1e-5, atol=1e-4, err_msg=str(cfg))
        np.testing.assert_allclose(ours.scores, ref.scores, rtol=0, atol=1e-6, err_msg=str(cfg))


def test_no_candidate_gives_typed_empty_result(onnx_retinaface):
    black = np.zeros((96, 128, 3), np.uint8)
    plan = InputPlan((96, 128), (96, 128), (1.0, 1.0))
    raw = onnx_retinaface.forward_group([black], [plan], (96, 128))
    det = onnx_retinaface.postprocess(raw, [plan], (96, 128), PostprocessConfig(conf_threshold=0.9))[0]
    assert (det.boxes.shape, det.scores.shape, det.landmarks.shape) == ((0, 4), (0,), (0, 5, 2))


@pytest.mark.parametrize("plus_one", [True, False])
@pytest.mark.parametrize("threshold", [0.3, 0.4, 0.7])
def test_greedy_nms_keeps_what_torch_keeps(plus_one, threshold):
    rng = np.random.default_rng(7)
    for trial in range(20):
        n = int(rng.integers(1, 400))
        xy = rng.uniform(0, 200, size=(n, 2)).astype(np.float32)
        wh = rng.uniform(2, 60, size=(n, 2)).astype(np.float32)
        boxes = np.concatenate([xy, xy + wh], axis=1)
        if trial % 4 == 0:  # exact duplicates and a degenerate box
            boxes[n // 2:] = boxes[: n - n // 2]
            boxes[0, 2:] = boxes[0, :2]
        scores = rng.uniform(size=n).astype(np.float32)
        order = np.argsort(-scores, kind="stable")
        ours = order[greedy_nms(boxes[order], threshold, plus_one=plus_one)]
        ref = nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold, plus_one=plus_one).numpy()
        assert ours.tolist() == ref.tolist(), (trial, n)
        capped = greedy_nms(boxes[order], threshold, plus_one=plus_one, max_keep=3)
        assert capped.tolist() == greedy_nms(boxes[order], threshold, plus_one=plus_one)[:3].tolist()


def test_greedy_nms_on_scrfd_candidates_matches_torch(photos_for_scrfd):
    """SCRFD's decoded candidates (before NMS) of a crowded photo: the same kept set as torch's NMS."""
    det, image = photos_for_scrfd
    plan = det.plan(image.shape[0], image.shape[1], det.resize)
    raw = det.forward_group([image], [plan], plan.canvas_hw)
    idx, scores = det.select(raw, 0, PostprocessConfig(conf_threshold=0.05))
    boxes, _ = det.decode(raw, 0, idx, plan.canvas_hw)
    boxes = boxes / np.float32(plan.scale[0])
    assert len(boxes) > 100
    ours = greedy_nms(boxes, 0.4, plus_one=True)
    ref = nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.4, plus_one=True).numpy()
    assert sorted(ours.tolist()) == sorted(ref.tolist())


@pytest.fixture(scope="module")
def photos_for_scrfd():
    det = DetectorSpec(weights=str(asset("weights/peers/scrfd_500m_bnkps.onnx")), runtime="onnxruntime",
                       threads=2).build()
    entry = max((e for e in ENTRIES if e["resize"] == 1.0), key=lambda e: len(e["detections"]))
    return det, golden_image(entry)


def test_box_coder_numpy_equals_torch():
    rng = np.random.default_rng(0)
    coder = BoxCoder(get_preset("mobilenet0.25").variance)
    anchors = np.concatenate([rng.uniform(0, 500, (300, 2)), rng.uniform(8, 300, (300, 2))], 1).astype(np.float32)
    deltas = rng.normal(0, 1, (300, 4)).astype(np.float32)
    ldeltas = rng.normal(0, 1, (300, 10)).astype(np.float32)
    a, d, ld = (torch.from_numpy(x) for x in (anchors, deltas, ldeltas))
    # exp may differ by an ulp between numpy and torch: equal to float32 precision
    np.testing.assert_allclose(coder.decode_boxes(deltas, anchors), coder.decode_boxes(d, a).numpy(),
                               rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(coder.decode_landmarks(ldeltas, anchors), coder.decode_landmarks(ld, a).numpy(),
                               rtol=1e-6, atol=1e-4)
    boxes = coder.decode_boxes(deltas, anchors)
    assert np.abs(coder.encode_boxes(boxes, anchors) - deltas).max() <= 1e-3  # round trip, numpy
    lm = coder.decode_landmarks(ldeltas, anchors)
    assert np.abs(coder.encode_landmarks(lm, anchors) - ldeltas).max() <= 1e-3
