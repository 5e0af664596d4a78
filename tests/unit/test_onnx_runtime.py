"""RetinaFace exported to ONNX on onnxruntime and OpenVINO: golden parity, dynamic shapes, batching,
the file checks of ``DetectorSpec.check()``, and clear errors.

The model is exported once per session (``exported_onnx``)."""

from __future__ import annotations

import importlib.util
import json

import cv2
import numpy as np
import pytest
import torch

from detector.api import FaceDetector
from detector.boxes import box_iou
from detector.config import get_preset
from detector.hub import CheckpointError, sha256sum
from detector.onnx_models import OUTPUT_NAMES, check_weights_file, inspect_onnx
from detector.spec import DetectorSpec, RuntimeUnavailableError
from tests.golden_data import golden_detections, golden_image
from tests.shared import asset
from tests.unit.test_detector_parity import _as_rows, _match

ENTRIES = golden_detections()["images"]
RUNTIMES = ("onnxruntime", "openvino")
COORDS = [0, 1, 2, 3] + list(range(5, 15))
SCRFD = "weights/peers/scrfd_500m_bnkps.onnx"
RECOGNISER = "weights/mobilefacenet_arcface112.onnx"


@pytest.fixture(scope="session")
def exported_onnx(tmp_path_factory, mobilenet_weights):
    from detector.export import export_onnx

    return export_onnx(mobilenet_weights, tmp_path_factory.mktemp("onnx") / "retinaface_mobilenet0.25.onnx")


@pytest.fixture(scope="session")
def onnx_detectors(exported_onnx):
    """One detector per ONNX runtime, built the way callers do (the family comes from the file)."""
    return {rt: DetectorSpec(weights=exported_onnx, runtime=rt).build() for rt in RUNTIMES}


def _assert_same(ref_rows: np.ndarray, ours: np.ndarray, *, min_score: float = 0.1, px: float = 0.05,
                 score: float = 1e-4) -> None:
    """Every ``ref`` row at >= ``min_score`` matched within ``px`` / ``score``, and none extra."""
    strong = ref_rows[ref_rows[:, 4] >= min_score]
    idx = _match(strong, ours)
    assert (idx >= 0).all(), f"{int((idx < 0).sum())} of {len(strong)} faces missing"
    if len(strong):
        m = ours[idx]
        assert np.abs(m[:, COORDS] - strong[:, COORDS]).max() <= px
        assert np.abs(m[:, 4] - strong[:, 4]).max() <= score
    extra = ours[ours[:, 4] >= min_score]
    back = _match(extra, ref_rows)
    assert (back >= 0).all(), f"{int((back < 0).sum())} extra faces"
    if len(extra):
        assert np.abs(ref_rows[back][:, COORDS] - extra[:, COORDS]).max() <= px


# ---------------------------------------------------------------------------------------------- file


def test_exported_file_describes_itself(exported_onnx):
    info = inspect_onnx(exported_onnx)
    assert info.family == "retinaface"
    assert info.model_config == get_preset("mobilenet0.25")
    assert json.loads(info.metadata["faceprep.model_config"])["anchors"]["steps"] == [8, 16, 32]
    assert info.input_name == "input"
    assert info.input_shape[1] == 3 and info.dynamic_input
    assert not any(isinstance(d, int) for d in (info.input_shape[0], info.input_shape[2], info.input_shape[3]))
    assert info.output_names == OUTPUT_NAMES
    assert [s[-1] for s in info.output_shapes] == [2, 4, 10]


def test_check_weights_file_accepts_real_files(exported_onnx, mobilenet_weights):
    check_weights_file(mobilenet_weights, family="retinaface")  # legacy (pre-zip) torch format
    check_weights_file(exported_onnx, family="retinaface")
    check_weights_file(asset(SCRFD), family="scrfd")
    info = inspect_onnx(asset(SCRFD))
    assert (info.family, info.model_config, info.input_name) == ("scrfd", None, "input.1")


def test_check_weights_file_accepts_zip_torch_checkpoint(tmp_path):
    path = tmp_path / "zipped.pth"
    torch.save({"w": torch.zeros(2)}, path)  # the current (zip) torch format
    check_weights_file(path, family="retinaface")


@pytest.mark.parametrize("name", ["junk.pth", "junk.onnx", "empty.onnx"])
def test_junk_files_are_refused_naming_the_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"" if name.startswith("empty") else b"root:x:0:0:root:/root:/bin/bash\n" * 20)
    expected = "not an ONNX file" if name.endswith(".onnx") else "not a torch checkpoint or ONNX file"
    with pytest.raises(CheckpointError, match=expected) as err:
        check_weights_file(path, family="retinaface")
    assert str(path) in str(err.value)
    if name.endswith(".onnx"):
        with pytest.raises(CheckpointError, match="not an ONNX file"):
            DetectorSpec(weights=path).check()


def test_recogniser_onnx_is_not_a_face_detector():
    path = asset(RECOGNISER)
    for call in (lambda: inspect_onnx(path), lambda: DetectorSpec(weights=path, runtime="onnxruntime").check(),
                 lambda: DetectorSpec(weights=path, runtime="openvino").build()):
        with pytest.raises(CheckpointError, match=r"not a face detector: unexpected outputs \['output0") as err:
            call()
        assert str(path) in str(err.value)


def test_family_mismatch_is_refused(exported_onnx):
    with pytest.raises(CheckpointError, match="an ONNX scrfd model, not retinaface"):
        check_weights_file(asset(SCRFD), family="retinaface")
    with pytest.raises(CheckpointError, match="an ONNX retinaface model, not scrfd"):
        check_weights_file(exported_onnx, family="scrfd")


def _fake_detector_onnx(path, outputs: list[tuple[str, list]]) -> None:
    """A graph with insightface-like outputs (numeric names as in det_10g.onnx), for the recogniser."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "h", "w"])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs]
    nodes = [helper.make_node("ReduceMean", ["input.1"], [n], keepdims=1) for n, _ in outputs]
    graph = helper.make_graph(nodes, "fake", [x], outs)
    onnx.save(helper.make_model(graph), str(path))


def test_scrfd_is_recognised_by_output_layout(tmp_path):
    kps = [(str(448 + i), [12800 // 4 ** (i % 3), (1, 4, 10)[i // 3]]) for i in range(9)]
    _fake_detector_onnx(tmp_path / "det_like.onnx", kps)
    assert inspect_onnx(tmp_path / "det_like.onnx").family == "scrfd"
    _fake_detector_onnx(tmp_path / "no_kps.onnx", kps[:6])
    with pytest.raises(CheckpointError, match="without keypoints") as err:
        inspect_onnx(tmp_path / "no_kps.onnx")
    assert "no_kps.onnx" in str(err.value)


# ---------------------------------------------------------------------------------------------- spec


def test_missing_runtime_is_a_clear_error(exported_onnx, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "openvino" else real(name, *a, **k))
    with pytest.raises(RuntimeUnavailableError, match=r"runtime 'openvino' is not installed \(pip install openvino\)"):
        DetectorSpec(weights=exported_onnx, runtime="openvino").resolved()
    # auto falls back to the next installed runtime
    assert DetectorSpec(weights=exported_onnx).resolved().runtime == "onnxruntime"


@pytest.mark.parametrize("runtime,precision", [("onnxruntime", "bf16"), ("openvino", "fp16"), ("torch", "bf16")])
def test_unsupported_precision_is_a_clear_error(exported_onnx, mobilenet_weights, runtime, precision):
    weights = mobilenet_weights if runtime == "torch" else exported_onnx
    with pytest.raises(RuntimeUnavailableError, match=f"runtime '{runtime}' on cpu does not support precision "
                                                      f"'{precision}'"):
        DetectorSpec(weights=weights, runtime=runtime, precision=precision).resolved()


def test_onnx_file_fixes_its_preset(exported_onnx):
    with pytest.raises(CheckpointError, match="exported from the 'mobilenet0.25' preset, not 'resnet50'"):
        DetectorSpec(weights=exported_onnx, runtime="onnxruntime", preset="resnet50").build()


def test_checkpoint_runs_from_the_onnx_cache(exported_onnx, mobilenet_weights, tmp_path, monkeypatch):
    """A .pth on an ONNX runtime uses cache/onnx/<stem>-<sha16>.onnx (here pre-seeded, so no export)."""
    import detector.export

    monkeypatch.setenv("FACEPREP_CACHE", str(tmp_path))
    cached = tmp_path / "onnx" / f"{mobilenet_weights.stem}-{sha256sum(mobilenet_weights)[:16]}.onnx"
    cached.parent.mkdir()
    cached.write_bytes(exported_onnx.read_bytes())

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the cache holds the file")

    monkeypatch.setattr(detector.export, "export_onnx", no_export)
    assert detector.export.onnx_for_weights(mobilenet_weights) == cached
    det = DetectorSpec(weights=mobilenet_weights, runtime="onnxruntime", threads=1).build()
    assert det.path == cached and det.runtime == "onnxruntime"


def test_export_command_line(exported_onnx, mobilenet_weights, tmp_path, monkeypatch, capsys):
    import detector.export
    from detector.cli import main

    calls = []

    def fake_export(weights, out, *, preset=None, opset=17):
        calls.append((weights, out, preset, opset))
        out.write_bytes(exported_onnx.read_bytes())
        return out

    monkeypatch.setattr(detector.export, "export_onnx", fake_export)
    out = tmp_path / "m.onnx"
    assert main(["export", "--weights", str(mobilenet_weights), "--out", str(out)]) == 0
    assert calls == [(str(mobilenet_weights), out, None, 17)]
    printed = capsys.readouterr().out
    assert str(out) in printed and "input: input" in printed
    for name in OUTPUT_NAMES:
        assert f"output: {name}" in printed


# ---------------------------------------------------------------------------------------------- parity


def test_detectors_implement_the_protocol(onnx_detectors):
    for rt, det in onnx_detectors.items():
        assert isinstance(det, FaceDetector)
        assert det.runtime == rt


@pytest.fixture(scope="session")
def golden_results(onnx_detectors):
    """``results(runtime, i)``: rows of ``onnx_detectors[runtime]`` on golden entry ``i`` (memoised)."""
    cache: dict[tuple[str, int], np.ndarray] = {}

    def results(runtime: str, i: int, detector=None) -> np.ndarray:
        key = (runtime, i)
        if key not in cache:
            entry = ENTRIES[i]
            det = detector or onnx_detectors[runtime]
            cache[key] = _as_rows(det.detect([golden_image(entry)],
                                             resize=None if entry["resize"] == 1.0 else 640)[0])
        return cache[key]

    return results


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("index", range(len(ENTRIES)),
                         ids=[f"{e['image'].split('/')[-1]}@{e['resize']:.3f}" for e in ENTRIES])
def test_parity_with_reference(golden_results, runtime, index):
    """fp32 on onnxruntime and OpenVINO meets the eager-torch bounds against the reference code."""
    entry = ENTRIES[index]
    if entry["resize"] != 1.0:
        assert entry["resize"] == pytest.approx(640 / max(entry["height"], entry["width"]))
    ours = golden_results(runtime, index)
    ref = np.asarray(entry["detections"], dtype=np.float64)
    assert (ref[:, 4] >= 0.1).any()
    _assert_same(ref, ours)


@pytest.fixture(scope="module")
def same_size_images():
    """Four different photos brought to exactly 480x640, so a batch of them is one unpadded forward."""
    picks = [e for e in ENTRIES if e["resize"] == 1.0][:4]
    return [cv2.resize(golden_image(e), (640, 480), interpolation=cv2.INTER_AREA) for e in picks]


@pytest.fixture(scope="module")
def torch_rows_at(detector, same_size_images):
    """Eager-torch detections of ``same_size_images`` one by one at a long side (cached per size)."""
    cache: dict[int, list[np.ndarray]] = {}

    def rows(long_side: int) -> list[np.ndarray]:
        if long_side not in cache:
            cache[long_side] = [_as_rows(detector.detect([img], resize=long_side, conf_threshold=0.1)[0])
                                for img in same_size_images]
        return cache[long_side]

    return rows


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("long_side", [333, 512, 736])
def test_dynamic_sizes_and_batches_match_torch(onnx_detectors, torch_rows_at, same_size_images, runtime,
                                               long_side):
    """Three input sizes (250x333, 384x512, 552x736), batch 1 and batch 4, against eager torch."""
    det = onnx_detectors[runtime]
    torch_rows = torch_rows_at(long_side)
    batch1 = [_as_rows(det.detect([img], resize=long_side, conf_threshold=0.1)[0]) for img in same_size_images[:2]]
    batch4 = [_as_rows(d) for d in det.detect(same_size_images, resize=long_side, conf_threshold=0.1)]
    assert len(batch4) == 4
    for ref, ours in zip(torch_rows, batch4):
        _assert_same(ref, ours, px=0.01)
    for ref, ours in zip(torch_rows, batch1):
        _assert_same(ref, ours, px=0.01)


def test_raw_outputs_at_batch_4_match_torch(onnx_detectors, detector, same_size_images):
    batch, _, _ = detector.preprocess(same_size_images, resize=512)
    ref = detector.forward(batch)
    for rt, det in onnx_detectors.items():
        got = det.forward(batch)
        for name, r, g in zip(OUTPUT_NAMES, ref, got):
            assert g.shape == r.shape, (rt, name)
            assert torch.allclose(g, r, atol=2e-3, rtol=1e-3), (rt, name, float((g - r).abs().max()))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_mixed_size_batch_keeps_order_and_results(onnx_detectors, detector, runtime):
    """Golden photos of different sizes in one call: grouped by size, results in input order."""
    images = [golden_image(e) for e in ENTRIES if e["resize"] == 1.0][:5]
    images.insert(2, images[0][:, ::-1].copy())  # a same-size partner of image 0, not adjacent to it
    sizes = {tuple(round(s * 480 / max(i.shape[:2])) for s in i.shape[:2]) for i in images}
    assert 2 < len(sizes) < len(images)
    batched = onnx_detectors[runtime].detect(images, resize=480, keep_top_k=200)
    assert len(batched) == len(images)
    for img, got in zip(images, batched):
        ref = _as_rows(detector.detect([img], resize=480, keep_top_k=200)[0])
        _assert_same(ref, _as_rows(got), px=0.01)


def test_openvino_bf16_keeps_the_faces(exported_onnx, golden_results):
    """OpenVINO bf16 (MobileNet's stem and depthwise convolutions kept in f32) against fp32 on the
    golden photos: every fp32 face at score >= 0.5 found at IoU >= 0.7, landmark error median
    <= 0.5 % and p95 <= 1.5 % of the box width."""
    import re

    import openvino as ov

    from detector.onnx_runtime import OnnxRetinaFace

    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has no bf16 support (OpenVINO OPTIMIZATION_CAPABILITIES lacks BF16)")
    det = DetectorSpec(weights=exported_onnx, runtime="openvino", precision="bf16").build()
    keep = re.compile("|".join(OnnxRetinaFace.bf16_keep_f32(get_preset("mobilenet0.25"))))
    kept = {"f32": 0, "bf16": 0}
    for op in det.session.request.get_compiled_model().get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if rt["layerType"].astype(str) == "Convolution":
            name = rt["originalLayersNames"].astype(str)
            precision = rt["runtimePrecision"].astype(str)
            assert precision == ("f32" if keep.search(name) else "bf16"), name
            kept[precision] += 1
    assert kept["f32"] >= 14 and kept["bf16"] > 30, kept  # stem + 13 depthwise; pointwise, FPN, SSH, heads

    found = total = 0
    errors = []
    for i in range(len(ENTRIES)):
        ref = golden_results("openvino", i)
        got = golden_results("openvino-bf16", i, det)
        ref = ref[ref[:, 4] >= 0.5]
        total += len(ref)
        if not len(ref) or not len(got):
            continue
        iou = box_iou(torch.from_numpy(ref[:, :4]).double(), torch.from_numpy(got[:, :4]).double()).numpy()
        for r, row in enumerate(iou):
            if row.max() < 0.7:
                continue
            found += 1
            g = got[row.argmax()]
            dist = np.linalg.norm((g[5:15] - ref[r, 5:15]).reshape(5, 2), axis=1)
            errors.append(100 * dist.mean() / (ref[r, 2] - ref[r, 0]))
    assert total > 300
    assert found / total >= 0.995, f"{total - found} of {total} faces lost in bf16"
    assert np.median(errors) <= 0.5 and np.percentile(errors, 95) <= 1.5, (np.median(errors),
                                                                           np.percentile(errors, 95))


def test_openvino_compiles_a_static_model_for_a_repeated_size(exported_onnx, same_size_images):
    """An input shape met STATIC_AFTER times runs on its own fixed-shape model, with the same results;
    at most MAX_STATIC of them."""
    det = DetectorSpec(weights=exported_onnx, runtime="openvino").build()
    session = det.session
    small = [cv2.resize(img, (160, 120), interpolation=cv2.INTER_AREA) for img in same_size_images]
    first = _as_rows(det.detect([small[0]], conf_threshold=0.1)[0])
    for _ in range(session.STATIC_AFTER):
        det.detect([small[0]], conf_threshold=0.1)
    assert list(session.static) == [(1, 120, 160, 3)]
    assert len(first) and np.abs(_as_rows(det.detect([small[0]], conf_threshold=0.1)[0]) - first).max() <= 1e-4
    for i in range(2 * session.MAX_STATIC * session.STATIC_AFTER):  # many shapes: no more than MAX_STATIC
        det.detect([small[1][: 96 + 8 * (i % (2 * session.MAX_STATIC))]], conf_threshold=0.1)
    assert len(session.static) == session.MAX_STATIC


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_pixel_input_of_an_rgb_preset_with_std_matches_the_eager_preprocessing(tmp_path, runtime,
                                                                              mobilenet_weights):
    """An RGB network with its own mean and std (the real weights under such a preset): the
    session's pixel input (OpenVINO in its graph, onnxruntime in numpy) gives the raw outputs the
    eager path gets from RetinaFaceInput."""
    import dataclasses

    from detector.export import export_onnx
    from detector.model import RetinaFace
    from detector.weights import load_model, save_checkpoint

    cfg = dataclasses.replace(get_preset("mobilenet0.25"), name="custom-rgb-std", channel_order="RGB",
                              mean_bgr=(90.0, 110.0, 130.0), std=(50.0, 60.0, 70.0))
    model = RetinaFace(cfg)
    model.load_state_dict(load_model(mobilenet_weights).state_dict())
    weights = save_checkpoint(tmp_path / "rgb.pt", model.eval())
    onnx_path = export_onnx(weights, tmp_path / "rgb.onnx")
    eager = DetectorSpec(weights=str(weights), runtime="torch").build()
    ours = DetectorSpec(weights=str(onnx_path), runtime=runtime).build()
    img = cv2.resize(cv2.imread(str(asset("images/group_insightface_t1.jpg"))), (160, 112))
    batch, _, _ = eager.preprocess([img])
    ref = eager.forward(batch)
    pixels, _ = ours._pixels([img], ours.resize)
    got = [t.clone() for t in ours._run(pixels[0][None])]  # _run's outputs live until the next run
    swapped = ours._run(np.ascontiguousarray(pixels[0][None, :, :, ::-1]))  # the other channel order
    for name, r, g, w in zip(OUTPUT_NAMES, ref, got, swapped):
        assert torch.allclose(g, r, atol=1e-3, rtol=1e-3), (name, float((g - r).abs().max()))
        assert (w - r).abs().max() > 0.1, name  # the outputs do depend on the channel order
