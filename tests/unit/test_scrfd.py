"""SCRFD (insightface ONNX, 5 keypoints) as a second detector family: parity with insightface's own
``SCRFD.detect`` on the golden photos, batching, the resize mapping, spec building, both runtimes, and
a buffalo_l ``det_10g.onnx``-style file (numeric output names, ``[A, C]`` outputs, dynamic input)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from detector.api import PostprocessConfig
from detector.config import ResizePolicy
from detector.hub import CheckpointError
from detector.scrfd import SCRFD_POSTPROCESS, SCRFDDetector, plan_input, scrfd_layout, scrfd_postprocess
from detector.spec import DetectorSpec
from tests.golden_data import golden_detections, golden_image
from tests.shared import asset

SCRFD_WEIGHTS = "weights/peers/scrfd_500m_bnkps.onnx"
BOX_TOL = 0.5  # pixels, boxes and landmarks
SCORE_TOL = 1e-3
THRESH = 0.5  # insightface's det_thresh


@pytest.fixture(scope="session")
def scrfd_path():
    return asset(SCRFD_WEIGHTS)


@pytest.fixture(scope="session")
def photos():
    """The 8 photos of the golden RetinaFace file (mixed sizes, 1 to ~60 faces)."""
    entries = [e for e in golden_detections()["images"] if e["resize"] == 1.0]
    assert len(entries) == 8
    return [(e["image"].split("/")[-1], golden_image(e)) for e in entries]


@pytest.fixture(scope="session")
def reference(scrfd_path, photos):
    """insightface's own SCRFD at det_size 640x640, det_thresh 0.5: rows x1 y1 x2 y2 score + 10 kps."""
    from insightface.model_zoo.scrfd import SCRFD

    ref = SCRFD(model_file=str(scrfd_path))
    ref.prepare(ctx_id=-1, input_size=(640, 640))
    assert ref.det_thresh == THRESH
    out = []
    for _, img in photos:
        det, kps = ref.detect(img, input_size=(640, 640))
        out.append(np.concatenate([det, kps.reshape(-1, 10)], axis=1).astype(np.float64))
    assert sum(len(r) for r in out) > 150  # really many faces
    return out


@pytest.fixture(scope="session")
def scrfd_ort(scrfd_path):
    return DetectorSpec(weights=str(scrfd_path), family="scrfd", runtime="onnxruntime", threads=2,
                        resize="long:640").build()


@pytest.fixture(scope="session")
def scrfd_ov(scrfd_path):
    return DetectorSpec(weights=str(scrfd_path), family="scrfd", runtime="openvino", threads=2,
                        resize="long:640").build()


@pytest.fixture(scope="session")
def batched_ort(scrfd_ort, photos):
    return [_rows(d) for d in scrfd_ort.detect([img for _, img in photos])]


def _rows(det) -> np.ndarray:
    d = det.numpy()
    return np.concatenate([d.boxes, d.scores[:, None], d.landmarks.reshape(-1, 10)], axis=1).astype(np.float64)


def _assert_matches(ref: np.ndarray, ours: np.ndarray, name: str) -> dict[str, float]:
    """Every reference face is one of ours within the tolerances (faces within SCORE_TOL of the
    threshold may be missing on either side); returns the largest deviations."""
    worst = {"box": 0.0, "kps": 0.0, "score": 0.0}
    used = np.zeros(len(ours), bool)
    coords = np.r_[0:4, 5:15]
    for row in ref:
        if len(ours):
            dev = np.abs(ours[:, coords] - row[coords]).max(axis=1)
            dev[used] = np.inf
            j = int(dev.argmin())
        if not len(ours) or not np.isfinite(dev[j]) or dev[j] > BOX_TOL:
            assert row[4] < THRESH + SCORE_TOL, f"{name}: reference face {row[:5].round(2)} not found"
            continue
        used[j] = True
        worst["box"] = max(worst["box"], float(np.abs(ours[j, :4] - row[:4]).max()))
        worst["kps"] = max(worst["kps"], float(np.abs(ours[j, 5:] - row[5:]).max()))
        worst["score"] = max(worst["score"], float(abs(ours[j, 4] - row[4])))
    extra = ours[~used]
    assert (extra[:, 4] < THRESH + SCORE_TOL).all(), f"{name}: extra faces {extra[:, :5].round(2)}"
    assert worst["score"] <= SCORE_TOL, (name, worst)
    return worst


# ---------------------------------------------------------------------------- parity with insightface


def test_batch_matches_insightface_onnxruntime(photos, reference, batched_ort):
    worst = [_assert_matches(r, o, name) for (name, _), r, o in zip(photos, reference, batched_ort)]
    # the same float32 arithmetic: far inside the 0.5 px bound
    assert max(w["box"] for w in worst) < 0.01 and max(w["kps"] for w in worst) < 0.01, worst
    assert [len(o) for o in batched_ort] == [len(r) for r in reference]


def test_openvino_matches_insightface(photos, reference, scrfd_ov):
    assert scrfd_ov.runtime == "openvino"
    outs = scrfd_ov.detect([img for _, img in photos])
    for (name, _), r, o in zip(photos, reference, outs):
        _assert_matches(r, _rows(o), name)


def test_mixed_size_batch_equals_single_images(scrfd_ort, photos, batched_ort):
    assert len({img.shape for _, img in photos}) > 1
    assert scrfd_ort.layout.batch  # one session call for the whole 640x640 batch
    for (name, img), b in zip(photos, batched_ort):
        single = _rows(scrfd_ort.detect([img])[0])
        assert single.shape == b.shape, name
        assert np.abs(single - b).max() <= 1e-3, name


def test_original_size_mixed_batch_equals_single_images(scrfd_ort, photos):
    """``original``: each image on its own canvas (padded to a multiple of 32), run per canvas,
    decoded together."""
    images = [photos[i][1] for i in (0, 1, 4, 5)]  # 4 and 5 share a canvas: one call of 2
    assert images[2].shape == images[3].shape
    batched = scrfd_ort.detect(images, resize="original")
    assert sum(len(d) for d in batched) > 50
    for img, b in zip(images, batched):
        single = _rows(scrfd_ort.detect([img], resize="original")[0])
        assert single.shape == _rows(b).shape
        assert np.abs(single - _rows(b)).max() <= 1e-3


# ---------------------------------------------------------------------------- spec, defaults, overrides


def test_spec_builds_scrfd_with_its_defaults(scrfd_ort, scrfd_path):
    assert isinstance(scrfd_ort, SCRFDDetector)
    assert scrfd_ort.resize == ResizePolicy.long_side(640)
    # the spec's postprocess was the project default (RetinaFace's 0.02): SCRFD's own is used
    assert scrfd_ort.postprocess_config == SCRFD_POSTPROCESS
    assert (SCRFD_POSTPROCESS.conf_threshold, SCRFD_POSTPROCESS.nms_threshold) == (0.5, 0.4)
    assert scrfd_postprocess(PostprocessConfig()) == SCRFD_POSTPROCESS
    custom = PostprocessConfig(conf_threshold=0.3, nms_threshold=0.3)
    assert scrfd_postprocess(custom) == custom
    assert scrfd_ort.layout.strides == (8, 16, 32) and scrfd_ort.layout.num_anchors == 2
    assert scrfd_ort.layout.input_hw is None  # the fixed 640x640 graph was made shape-generic


def test_family_inferred_from_onnx(scrfd_path):
    spec = DetectorSpec(weights=str(scrfd_path), runtime="onnxruntime").resolved()
    assert spec.family == "scrfd"
    spec.check()


def test_overrides(scrfd_ort, photos, batched_ort):
    name, img = photos[2]  # a parade photo with many faces
    low = _rows(scrfd_ort.detect([img], conf_threshold=0.3)[0])
    assert len(low) > len(batched_ort[2]) and low[:, 4].min() >= 0.3
    assert np.all(np.diff(low[:, 4]) <= 0)  # sorted by score
    top3 = _rows(scrfd_ort.detect([img], keep_top_k=3)[0])
    assert np.abs(top3 - batched_ort[2][:3]).max() <= 1e-4


# ---------------------------------------------------------------------------- resize mapping


def test_resize_mapping():
    # long:640 = insightface's letterbox into 640x640, its det_scale = new_h / h on both axes
    p = plan_input(886, 1280, ResizePolicy.long_side(640), align=32)
    assert p.new_hw == (443, 640) and p.canvas_hw == (640, 640) and p.scale == (443 / 886, 443 / 886)
    p = plan_input(1868, 1382, ResizePolicy.long_side(640), align=32)
    assert p.new_hw == (640, int(640 / (1868 / 1382))) and p.scale == (640 / 1868, 640 / 1868)
    # cap: small images are not resized, but share the canvas
    p = plan_input(300, 200, ResizePolicy.cap(640), align=32)
    assert p.new_hw == (300, 200) and p.canvas_hw == (640, 640) and p.scale == (1.0, 1.0)
    # original: padded to a multiple of the largest stride
    p = plan_input(683, 1024, ResizePolicy.original(), align=32)
    assert p.new_hw == (683, 1024) and p.canvas_hw == (704, 1024) and p.scale == (1.0, 1.0)
    # short side: per-axis factors
    p = plan_input(100, 150, ResizePolicy.short_side(200), align=32)
    assert p.new_hw == (200, 300) and p.canvas_hw == (224, 320) and p.scale == (2.0, 2.0)
    # a file fixed at 640x640 runs long:640 only
    assert plan_input(683, 1024, ResizePolicy.long_side(640), align=32, fixed_hw=(640, 640)).canvas_hw == (640, 640)
    with pytest.raises(ValueError, match="long:640"):
        plan_input(683, 1024, ResizePolicy.original(), align=32, fixed_hw=(640, 640))


def test_layout_needs_keypoints():
    assert scrfd_layout(9) == ((8, 16, 32), 2)
    assert scrfd_layout(15) == ((8, 16, 32, 64, 128), 1)
    with pytest.raises(CheckpointError, match="keypoints"):
        scrfd_layout(6)
    with pytest.raises(CheckpointError, match="not an SCRFD"):
        scrfd_layout(4)


def test_fixed_size_file_as_is(scrfd_path, photos, reference):
    """Without the shape-generic rewrite: the file at its own 640x640, one image per call."""
    det = SCRFDDetector(scrfd_path, threads=2, resize="long:640", shape_generic=False)
    assert det.layout.input_hw == (640, 640) and not det.layout.batch
    outs = det.detect([img for _, img in photos[:3]])
    for (name, _), r, o in zip(photos, reference, outs):
        _assert_matches(r, _rows(o), name)
    with pytest.raises(ValueError, match="long:640"):
        det.detect([photos[0][1]], resize="original")


# ---------------------------------------------------------------------------- a det_10g-style file


def _det10g_like(src: str, dst: str) -> None:
    """scrfd_500m rewritten the way buffalo_l's det_10g.onnx is laid out: input ``[?, 3, ?, ?]``,
    outputs ``[A, C]`` (no batch axis) with numeric names that do not sort in output order."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(src)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    for node in g.node:
        if node.op_type == "Reshape":
            target = numpy_helper.to_array(inits[node.input[1]])
            new = numpy_helper.from_array(np.array([-1, target[-1]], np.int64), node.output[0] + "_2d")
            g.initializer.append(new)
            node.input[1] = new.name
        if node.op_type == "Resize":  # fixed output sizes -> scale 2
            new = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), node.output[0] + "_scales")
            g.initializer.append(new)
            node.input[2] = new.name
            del node.input[3]
    for d, name in zip(g.input[0].type.tensor_type.shape.dim, ("None", None, "?h", "?w")):
        if name:
            d.Clear()
            d.dim_param = name
    numeric = ["448", "471", "494", "451", "474", "497", "454", "477", "500"]
    rename = {o.name: n for o, n in zip(g.output, numeric)}
    for node in g.node:
        for i, o in enumerate(node.output):
            if o in rename:
                node.output[i] = rename[o]
    outs = [onnx.helper.make_tensor_value_info(rename[o.name], onnx.TensorProto.FLOAT, ["A", w])
            for o, w in zip(g.output, [1, 1, 1, 4, 4, 4, 10, 10, 10])]
    del g.output[:]
    g.output.extend(outs)
    del g.value_info[:]
    onnx.save(m, dst)


@pytest.fixture(scope="session")
def det10g_like_path(tmp_path_factory, scrfd_path):
    path = tmp_path_factory.mktemp("det10g") / "det_10g_like.onnx"
    _det10g_like(str(scrfd_path), str(path))
    return path


def test_det10g_style_file(det10g_like_path, photos, batched_ort):
    path = det10g_like_path
    det = DetectorSpec(weights=str(path), family="scrfd", runtime="onnxruntime", threads=2,
                       resize="long:640").build()
    assert det.layout.input_hw is None and not det.layout.batch  # [A, C] outputs: one image per call
    images = [img for _, img in photos[:4]]
    for b, d in zip(batched_ort, det.detect(images)):
        ours = _rows(d)
        assert ours.shape == b.shape and np.abs(ours - b).max() <= 1e-3
    assert DetectorSpec(weights=str(path), runtime="onnxruntime").resolved().family == "scrfd"


def test_original_size_matches_insightface(det10g_like_path, scrfd_ort, photos):
    """``original`` = insightface's ``detect(img, input_size=<the image padded to a multiple of 32>)``
    (it can only run sizes other than 640 on a shape-generic file, hence the det_10g-style copy)."""
    from insightface.model_zoo.scrfd import SCRFD

    ref = SCRFD(model_file=str(det10g_like_path))
    ref.prepare(ctx_id=-1, input_size=(640, 640))
    chosen = [photos[i] for i in (0, 2, 4)]
    ours = scrfd_ort.detect([img for _, img in chosen], resize="original")
    for (name, img), o in zip(chosen, ours):
        h, w = img.shape[:2]
        det, kps = ref.detect(img, input_size=(-(-w // 32) * 32, -(-h // 32) * 32))
        rows = np.concatenate([det, kps.reshape(-1, 10)], axis=1).astype(np.float64)
        assert len(rows) > 5
        worst = _assert_matches(rows, _rows(o), name)
        assert max(worst.values()) < 0.01, worst


def test_grayscale_and_bgra_inputs(scrfd_ort, photos, batched_ort):
    import cv2

    _, img = photos[1]
    bgra = cv2.cvtColor(img, cv2.COLOR_BGR2BGRA)
    got = _rows(scrfd_ort.detect([bgra])[0])
    assert np.abs(got - batched_ort[1]).max() <= 1e-3
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    assert len(scrfd_ort.detect([gray])[0]) >= 1
    empty = scrfd_ort.detect([np.zeros((64, 64, 3), np.uint8)])[0]
    assert len(empty) == 0 and tuple(empty.landmarks.shape) == (0, 5, 2)
    assert dataclasses.is_dataclass(empty)
