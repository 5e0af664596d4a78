"""Recognisers: the real fixed-batch-1 ONNX model, dynamic/fixed-batch ONNX graphs and a torch module."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from pipeline.verification.recognizer import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    OnnxRecognizer,
    OnnxRecognizerConfig,
    Preprocess,
    TorchRecognizerConfig,
)
from tests.shared import asset

MODEL = "weights/mobilefacenet_arcface112.onnx"


@pytest.fixture(scope="module")
def crops():
    gray = cv2.imread(str(asset("images/aligned112_insightface_tom_hanks.png")))  # stored as grey levels
    aligned = np.clip(gray * np.array([0.7, 0.9, 1.15]), 0, 255).astype(np.uint8)  # warm tint: R > G > B
    rng = np.random.default_rng(0)
    noisy = [np.clip(aligned.astype(int) + rng.integers(-25, 26, aligned.shape), 0, 255).astype(np.uint8)
             for _ in range(4)]
    return np.stack([aligned, aligned[:, ::-1], *noisy, np.roll(aligned, 9, axis=1)])


def test_real_model_fixed_batch_one(crops):
    """The shared MobileFaceNet (input0 1x3x112x112) on 7 crops equals hand-fed onnxruntime runs."""
    rec = OnnxRecognizerConfig(model=asset(MODEL), batch_size=64,
                               preprocess=Preprocess(rgb=True, mean=IMAGENET_MEAN, std=IMAGENET_STD)).build()
    assert rec.fixed_batch == 1 and rec.batch_size == 1 and rec.input_size == 112
    got = rec.embed(crops)
    session = ort.InferenceSession(str(asset(MODEL)), providers=["CPUExecutionProvider"])
    for i, crop in enumerate(crops):
        rgb = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB).astype(np.float64) / 255.0
        x = ((rgb - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).transpose(2, 0, 1)[None].astype(np.float32)
        want = session.run(None, {"input0": x})[0][0]
        assert got[i] == pytest.approx(want, abs=1e-4)
    assert got.shape == (7, 128)
    # the mirrored face is the same person; channel order matters (guards the comparison above)
    unit = got / np.linalg.norm(got, axis=1, keepdims=True)
    assert unit[0] @ unit[1] > 0.8
    bgr = OnnxRecognizerConfig(model=asset(MODEL), preprocess=Preprocess(mean=IMAGENET_MEAN, std=IMAGENET_STD))
    assert np.abs(bgr.build().embed(crops[:1]) - got[:1]).max() > 1e-2


def _tiny_onnx(batch: int | str, weight: np.ndarray, bias: np.ndarray) -> bytes:
    """Conv 8x8/8 (3->4) -> Flatten -> Gemm(784 -> 16), input ``x`` [batch, 3, 112, 112]."""
    rng = np.random.default_rng(1)
    gemm_w = rng.normal(size=(16, 4 * 14 * 14)).astype(np.float32) * 0.05
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Flatten", ["c"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "gw"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 112, 112])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 16])],
        initializer=[numpy_helper.from_array(weight, "cw"), numpy_helper.from_array(bias, "cb"),
                     numpy_helper.from_array(gemm_w, "gw")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString(), gemm_w


def test_dynamic_and_fixed_batches_match_torch(tmp_path, crops):
    rng = np.random.default_rng(2)
    weight = rng.normal(size=(4, 3, 8, 8)).astype(np.float32) * 0.1
    bias = rng.normal(size=4).astype(np.float32)
    pre = Preprocess(rgb=False, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    outputs = {}
    for batch in ("N", 4):
        data, gemm_w = _tiny_onnx(batch, weight, bias)
        path = tmp_path / f"tiny_{batch}.onnx"
        path.write_bytes(data)
        rec = OnnxRecognizer(model=path, preprocess=pre, batch_size=3)
        assert rec.fixed_batch == (None if batch == "N" else 4)
        outputs[batch] = rec.embed(crops)  # 7 crops: ragged last chunk (3+3+1) and padded fixed batch (4+3)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 8, stride=8), torch.nn.Flatten(),
                                 torch.nn.Linear(4 * 14 * 14, 16, bias=False))
    with torch.no_grad():
        module[0].weight.copy_(torch.from_numpy(weight))
        module[0].bias.copy_(torch.from_numpy(bias))
        module[2].weight.copy_(torch.from_numpy(gemm_w))
    torch_out = TorchRecognizerConfig(module=module, preprocess=pre, batch_size=2).build().embed(crops)
    assert outputs["N"].shape == (7, 16)
    assert np.abs(outputs["N"] - torch_out).max() < 1e-4
    assert np.abs(outputs[4] - torch_out).max() < 1e-4
    assert np.abs(torch_out[0] - torch_out[2]).max() > 1e-2  # different crops, different embeddings


def test_preprocess_contract():
    with pytest.raises(ValueError, match="0-255"):
        Preprocess(mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5))
    crop = np.zeros((1, 112, 112, 3), np.uint8)
    crop[..., 2] = 255  # red in BGR
    x = Preprocess(rgb=True, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(crop)
    assert x.shape == (1, 3, 112, 112) and x[0, 0].min() == 1.0 and x[0, 2].max() == -1.0
    with pytest.raises(ValueError, match=r"\[N, 112, 112, 3\]"):
        OnnxRecognizerConfig(model=asset(MODEL)).build().embed(np.zeros((2, 96, 112, 3), np.uint8))
