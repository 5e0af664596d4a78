"""NMS against a slow reference, anchors against biubug6's PriorBox loop, coder round trips."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from detector import get_preset
from detector.anchors import AnchorGenerator
from detector.box_coder import BoxCoder
from detector.boxes import batched_nms, box_iou, nms, padded_nms


def slow_nms(boxes: np.ndarray, scores: np.ndarray, thr: float, plus_one: bool) -> list[int]:
    """Textbook greedy NMS, one box at a time (stable order for ties)."""
    o = 1.0 if plus_one else 0.0
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep: list[int] = []
    for i in order:
        ok = True
        for j in keep:
            xx1, yy1 = max(boxes[i, 0], boxes[j, 0]), max(boxes[i, 1], boxes[j, 1])
            xx2, yy2 = min(boxes[i, 2], boxes[j, 2]), min(boxes[i, 3], boxes[j, 3])
            inter = max(0.0, xx2 - xx1 + o) * max(0.0, yy2 - yy1 + o)
            a = (boxes[i, 2] - boxes[i, 0] + o) * (boxes[i, 3] - boxes[i, 1] + o)
            b = (boxes[j, 2] - boxes[j, 0] + o) * (boxes[j, 3] - boxes[j, 1] + o)
            if inter / (a + b - inter) > thr:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


def random_boxes(rng: np.random.Generator, n: int, *, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    xy = rng.uniform(0, 200, size=(n, 2))
    wh = rng.uniform(5, 60, size=(n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = rng.uniform(size=n).astype(np.float32)
    if ties:
        scores = np.round(scores * 5) / 5  # many equal scores
    return boxes, scores


@pytest.mark.parametrize("seed,thr,plus_one,ties", list(itertools.product(
    [0, 1, 2], [0.3, 0.5, 0.7], [False, True], [False, True])))
def test_nms_equals_slow_reference(seed, thr, plus_one, ties):
    rng = np.random.default_rng(seed)
    boxes, scores = random_boxes(rng, 300, ties=ties)
    ours = nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr, plus_one=plus_one).tolist()
    assert ours == slow_nms(boxes, scores, thr, plus_one)


def test_nms_empty_and_single():
    e = torch.zeros(0, 4)
    assert nms(e, torch.zeros(0), 0.5).numel() == 0
    assert nms(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([0.3]), 0.5).tolist() == [0]


def test_nms_identical_boxes_keeps_first_of_ties():
    b = torch.tensor([[0.0, 0, 10, 10]] * 3)
    assert nms(b, torch.tensor([0.5, 0.9, 0.9]), 0.5).tolist() == [1]


def test_batched_nms_groups_do_not_interact():
    rng = np.random.default_rng(5)
    boxes, scores = random_boxes(rng, 200)
    idxs = rng.integers(0, 3, size=200)
    ours = set(batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(idxs), 0.4).tolist())
    expected = set()
    for g in range(3):
        sel = np.where(idxs == g)[0]
        expected |= {int(sel[k]) for k in slow_nms(boxes[sel], scores[sel], 0.4, False)}
    assert ours == expected


def test_padded_nms_batch_with_an_empty_image():
    rng = np.random.default_rng(7)
    boxes, scores = random_boxes(rng, 50)
    order = np.argsort(-scores, kind="stable")
    boxes, scores = boxes[order], scores[order]
    b = torch.zeros(2, 50, 4)
    s = torch.zeros(2, 50)
    valid = torch.zeros(2, 50, dtype=torch.bool)
    b[0], s[0], valid[0] = torch.from_numpy(boxes), torch.from_numpy(scores), True
    keep = padded_nms(b, s, valid, 0.4, plus_one=True)
    assert not keep[1].any()
    assert torch.where(keep[0])[0].tolist() == slow_nms(boxes, scores, 0.4, True)


def biubug6_priors(min_sizes, steps, h, w) -> np.ndarray:
    """biubug6's PriorBox.forward, literally (normalised cx, cy, w, h)."""
    out = []
    for k, step in enumerate(steps):
        fh, fw = math.ceil(h / step), math.ceil(w / step)
        for i, j in itertools.product(range(fh), range(fw)):
            for s in min_sizes[k]:
                out += [(j + 0.5) * step / w, (i + 0.5) * step / h, s / w, s / h]
    return np.asarray(out).reshape(-1, 4)


def test_anchors_equal_biubug6_priorbox():
    cfg = get_preset("mobilenet0.25").anchors
    h, w = 123, 250
    ours = AnchorGenerator(cfg)(h, w).numpy() / np.array([w, h, w, h])
    ref = biubug6_priors(cfg.min_sizes, cfg.steps, h, w)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_anchor_counts_at_640():
    for name in ("mobilenet0.25", "resnet50"):
        gen = AnchorGenerator(get_preset(name).anchors)
        assert gen(640, 640).shape == (16800, 4)
        assert gen.num_anchors(640, 640) == 16800
    paper = AnchorGenerator(get_preset("paper").anchors)
    a = paper(640, 640)
    assert a.shape[0] == 102_300
    p2 = 160 * 160 * 3
    assert p2 / a.shape[0] == pytest.approx(0.7507, abs=1e-4)
    assert torch.all(a[:p2, 2] < 32)  # P2 carries the 16..25 px anchors
    sizes = sorted({round(float(s), 3) for s in a[:, 2].unique()})
    assert sizes[0] == 16.0 and sizes[1] == pytest.approx(16 * 2 ** (1 / 3), abs=1e-3) and len(sizes) == 15


def test_anchor_cache_returns_same_tensor():
    gen = AnchorGenerator(get_preset("mobilenet0.25").anchors)
    assert gen(480, 640) is gen(480, 640)


def test_coder_round_trip():
    g = torch.Generator().manual_seed(0)
    anchors = torch.cat([torch.rand(100, 2, generator=g) * 600,
                         16 + torch.rand(100, 1, generator=g).repeat(1, 2) * 200], 1)
    xy = torch.rand(100, 2, generator=g) * 600
    boxes = torch.cat([xy, xy + 5 + torch.rand(100, 2, generator=g) * 200], 1)
    lm = torch.rand(100, 5, 2, generator=g) * 600
    coder = BoxCoder((0.1, 0.2))
    assert torch.allclose(coder.decode_boxes(coder.encode_boxes(boxes, anchors), anchors), boxes, atol=1e-3)
    assert torch.allclose(coder.decode_landmarks(coder.encode_landmarks(lm, anchors), anchors), lm, atol=1e-3)
    # zero deltas decode to the anchor itself
    z = coder.decode_boxes(torch.zeros(100, 4), anchors)
    assert torch.allclose((z[:, :2] + z[:, 2:]) / 2, anchors[:, :2], atol=1e-4)
    assert torch.allclose(z[:, 2:] - z[:, :2], anchors[:, 2:], atol=1e-4)


def test_box_iou_plus_one():
    a = torch.tensor([[0.0, 0, 9, 9]])
    b = torch.tensor([[5.0, 0, 14, 9]])
    assert box_iou(a, b, plus_one=True).item() == pytest.approx(50 / 150)
    assert box_iou(a, b).item() == pytest.approx(36 / 126)
