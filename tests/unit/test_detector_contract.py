"""The :class:`detector.api.FaceDetector` contract, over every family x runtime installed here:
RetinaFace on torch / onnxruntime / OpenVINO and SCRFD on onnxruntime / OpenVINO, all built from a
:class:`~detector.spec.DetectorSpec`.

Each must: return one :class:`~detector.api.Detections` per image whose ``numpy()`` is float32
``[N, 4]`` / ``[N]`` / ``[N, 5, 2]`` (numpy fields already for the ONNX runtimes), sorted by score;
give boxes in original-image pixels (the same faces at two resize policies); return typed empty
results for a photo without a face and refuse an empty image or list; and give every image of a
mixed-size batch its single-image result."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from detector.api import FaceDetector, InputImageError
from detector.boxes import box_iou
from detector.spec import DetectorSpec, available_runtimes
from tests.golden_data import golden_detections, golden_image
from tests.shared import asset

SCRFD = "weights/peers/scrfd_500m_bnkps.onnx"
CASES = [("retinaface", "torch"), ("retinaface", "onnxruntime"), ("retinaface", "openvino"),
         ("scrfd", "onnxruntime"), ("scrfd", "openvino")]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, mobilenet_weights):
    from detector.export import export_onnx

    return export_onnx(mobilenet_weights, tmp_path_factory.mktemp("onnx") / "retinaface.onnx")


@pytest.fixture(scope="module")
def detectors(exported, mobilenet_weights):
    built = {}
    for family, runtime in CASES:
        assert runtime in available_runtimes(), f"{runtime} is not installed"
        if family == "retinaface":
            weights = mobilenet_weights if runtime == "torch" else exported
        else:
            weights = asset(SCRFD)
        built[family, runtime] = DetectorSpec(weights=str(weights), runtime=runtime, threads=2).build()
    return built


@pytest.fixture(scope="module")
def photos():
    """Three golden photos of different sizes (two share one), brought to about 400 px for speed."""
    entries = [e for e in golden_detections()["images"] if e["resize"] == 1.0][:3]
    out = []
    for i, e in enumerate(entries):
        img = golden_image(e)
        s = (400 + 40 * i) / max(img.shape[:2])
        out.append(cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA))
    out.append(out[0][:, ::-1].copy())  # same size as the first, not adjacent to it
    return out


def _np(det):
    d = det.numpy()
    assert d.boxes.dtype == d.scores.dtype == d.landmarks.dtype == np.float32
    assert d.boxes.shape == (len(d), 4) and d.scores.shape == (len(d),) and d.landmarks.shape == (len(d), 5, 2)
    return d


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_types_shapes_and_order(detectors, photos, case):
    det = detectors[case]
    assert isinstance(det, FaceDetector)
    out = det.detect(photos[:2], conf_threshold=0.3)
    assert len(out) == 2
    for d in out:
        n = _np(d)
        assert len(n) > 0
        assert np.all(np.diff(n.scores) <= 0)
        assert n.scores.min() >= 0.3 and n.scores.max() <= 1.0
        if case[1] != "torch":  # the ONNX runtimes hand back numpy (no torch in their workers)
            assert isinstance(d.boxes, np.ndarray) and isinstance(d.landmarks, np.ndarray)


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_boxes_are_in_original_pixels(detectors, photos, case):
    """The confident faces found at half size are found at full size, at the same place."""
    img = photos[1]
    full = _np(detectors[case].detect([img], resize="original", conf_threshold=0.5)[0])
    half = _np(detectors[case].detect([img], resize=f"long:{max(img.shape[:2]) // 2}", conf_threshold=0.8)[0])
    assert len(half) > 0 and len(full) >= len(half)
    iou = box_iou(torch.from_numpy(half.boxes).double(), torch.from_numpy(full.boxes).double()).numpy()
    assert (iou.max(axis=1) >= 0.5).all(), iou.max(axis=1)
    h, w = img.shape[:2]
    centres = (full.boxes[:, :2] + full.boxes[:, 2:]) / 2
    assert (centres >= 0).all() and (centres[:, 0] <= w).all() and (centres[:, 1] <= h).all()


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_no_face_and_bad_inputs(detectors, case):
    det = detectors[case]
    for black in (np.zeros((64, 96, 3), np.uint8), np.zeros((64, 96), np.uint8)):
        d = _np(det.detect([black])[0])
        assert len(d) == 0
    with pytest.raises(InputImageError, match="no images"):
        det.detect([])
    with pytest.raises(InputImageError, match="image 1: empty array"):
        det.detect([np.zeros((32, 32, 3), np.uint8), np.zeros((0, 5, 3), np.uint8)])
    with pytest.raises(InputImageError, match="expected uint8"):
        det.detect([np.zeros((32, 32, 3), np.float32)])


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_mixed_size_batch_equals_single_images(detectors, photos, case):
    det = detectors[case]
    assert len({p.shape for p in photos}) == 3
    batched = det.detect(photos, resize="original", conf_threshold=0.3)
    assert len(batched) == len(photos)
    for img, b in zip(photos, batched):
        single = _np(det.detect([img], resize="original", conf_threshold=0.3)[0])
        b = _np(b)
        strong = single.scores >= 0.35  # away from the threshold: the padded torch batch may differ by 1e-4
        assert len(b) >= strong.sum()
        iou = box_iou(torch.from_numpy(single.boxes[strong]).double(), torch.from_numpy(b.boxes).double()).numpy()
        j = iou.argmax(axis=1) if len(b) else np.zeros(0, int)
        assert np.abs(b.boxes[j] - single.boxes[strong]).max(initial=0) <= 0.01
        assert np.abs(b.landmarks[j] - single.landmarks[strong]).max(initial=0) <= 0.01
        assert np.abs(b.scores[j] - single.scores[strong]).max(initial=0) <= 1e-4
