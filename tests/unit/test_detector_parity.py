"""Acceptance: detections equal those of the reference biubug6 code (golden JSON), single and batched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detector.boxes import box_iou
from tests.golden_data import golden_detections, golden_image

ENTRIES = golden_detections()["images"]


def _as_rows(det) -> np.ndarray:
    d = det.numpy()
    return np.concatenate([d.boxes, d.scores[:, None], d.landmarks.reshape(-1, 10)], axis=1)


def _match(ref: np.ndarray, ours: np.ndarray) -> np.ndarray:
    """For each row of ``ref`` the index of the best-IoU row of ``ours`` (-1 if none overlaps)."""
    if len(ours) == 0:
        return np.full(len(ref), -1)
    iou = box_iou(torch.from_numpy(ref[:, :4]).double(), torch.from_numpy(ours[:, :4]).double()).numpy()
    idx = iou.argmax(axis=1)
    idx[iou.max(axis=1) <= 0] = -1
    return idx


def test_golden_settings_are_our_defaults():
    from detector import PostprocessConfig

    s = golden_detections()["settings"]
    cfg = PostprocessConfig()
    assert (cfg.conf_threshold, cfg.top_k, cfg.nms_threshold, cfg.keep_top_k) == (
        s["confidence_threshold"], s["top_k"], s["nms_threshold"], s["keep_top_k"])


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: f"{e['image'].split('/')[-1]}@{e['resize']:.3f}")
def test_parity_with_reference(detector, entry):
    img = golden_image(entry)
    resize = None if entry["resize"] == 1.0 else 640
    if resize:
        assert entry["resize"] == pytest.approx(640 / max(img.shape[:2]))
    ours = _as_rows(detector.detect([img], resize=resize)[0])
    ref = np.asarray(entry["detections"], dtype=np.float64)

    strong = ref[ref[:, 4] >= 0.1]
    assert len(strong) > 0
    idx = _match(strong, ours)
    assert (idx >= 0).all()
    m = ours[idx]
    coords = [0, 1, 2, 3] + list(range(5, 15))
    assert np.abs(m[:, coords] - strong[:, coords]).max() <= 0.05
    assert np.abs(m[:, 4] - strong[:, 4]).max() <= 1e-4

    # no extra detections: each of ours at >= 0.1 is one of the reference's
    extra = ours[ours[:, 4] >= 0.1]
    back = _match(extra, ref)
    assert (back >= 0).all()
    assert np.abs(ref[back][:, coords] - extra[:, coords]).max() <= 0.05


def test_mixed_size_batch_matches_single_images(detector):
    """The 8 golden photos (long side 640, so mixed sizes) as one padded batch."""
    entries = [e for e in ENTRIES if e["resize"] == 1.0]
    assert len(entries) == 8
    images = [golden_image(e) for e in entries]
    sizes = {tuple(round(s * 640 / max(i.shape[:2])) for s in i.shape[:2]) for i in images}
    assert len(sizes) > 1  # really mixed
    batched = detector.detect(images, resize=640)
    for img, det in zip(images, batched):
        single = _as_rows(detector.detect([img], resize=640)[0])
        b = _as_rows(det)
        single, b = single[single[:, 4] >= 0.5], b[b[:, 4] >= 0.5]
        assert len(single) == len(b)
        iou = box_iou(torch.from_numpy(single[:, :4]), torch.from_numpy(b[:, :4])).numpy()
        j = iou.argmax(axis=1)
        assert iou.max(axis=1).min() >= 0.98
        assert np.abs(b[j][:, 5:] - single[:, 5:]).max() <= 0.5


def test_tensor_input_equals_list_input(detector):
    img = golden_image(ENTRIES[2])
    from_list = detector.detect([img, img[:, ::-1].copy()])
    t = torch.from_numpy(np.stack([img, img[:, ::-1]])).permute(0, 3, 1, 2)
    from_tensor = detector.detect(t)
    for a, b in zip(from_list, from_tensor):
        assert torch.allclose(a.boxes, b.boxes, atol=1e-3)
        assert torch.allclose(a.scores, b.scores, atol=1e-5)


def test_golden_mean_is_preset_mean():
    from detector import get_preset

    assert tuple(golden_detections()["settings"]["mean_bgr"]) == get_preset("mobilenet0.25").mean_bgr
