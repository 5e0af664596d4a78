"""WIDER FACE evaluation: golden AP, a brute-force protocol cross-check, I/O, errors, the job."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detector.evaluation.widerface import (
    SETTINGS,
    WiderFaceEvaluator,
    WiderFaceGroundTruth,
)
from tests.shared import MOBILENET_WEIGHTS, asset, golden
from tests.unit.test_widerface_eval import ARCHIVES, GT_DIR

VAL_IMAGES = "widerface/val/images"


# ------------------------------------------------------------------------------------------
# the job
# ------------------------------------------------------------------------------------------


def _reference_ap_on_val_photos(gt: WiderFaceGroundTruth) -> dict:
    """The reference detector's detections (resize 1.0) of the WIDER val photos, same evaluator."""
    data = json.loads(golden("retinaface/biubug6_mobilenet0.25_reference_detections.json").read_text())
    ev = WiderFaceEvaluator(ground_truth=gt)
    for entry in data["images"]:
        if entry["resize"] == 1.0 and entry["image"].startswith(VAL_IMAGES):
            det = np.array(entry["detections"], dtype=np.float64).reshape(-1, 15)
            ev.process(entry["image"], det[:, :4], det[:, 4], box_format="xyxy")
    assert len(ev) == 4
    return ev.evaluate()


@pytest.mark.slow
def test_job_end_to_end_on_val_photos_matches_reference_detections(gt, tmp_path, capsys):
    from jobs.eval_widerface import main

    out = tmp_path / "run"
    main(["--images", str(asset(VAL_IMAGES)), "--weights", str(asset(MOBILENET_WEIGHTS)),
          "--gt", str(asset(GT_DIR)), "--detect-resize", "original", "--runtime", "torch", "--out", str(out),
          "--json", str(out / "ap.json"), "--quiet"])
    printed = capsys.readouterr().out
    assert "4 of 3226 validation images evaluated" in printed
    ours = json.loads((out / "ap.json").read_text())
    assert ours["images_evaluated"] == 4 and not ours["complete"]
    assert len(list((out / "predictions").rglob("*.txt"))) == 4
    for setting in SETTINGS:
        assert (out / f"pr_curve_{setting}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    reference = _reference_ap_on_val_photos(gt)
    for setting in SETTINGS:
        assert abs(ours[setting] - reference[setting]) <= 1e-3, (setting, ours[setting], reference[setting])
    assert reference["hard"] > 0.3  # a real detector on real photos, not a degenerate score


def test_job_pred_mode_writes_json_and_plots(seed1_dir, expected_ap, tmp_path):
    from jobs.eval_widerface import main

    out = tmp_path / "out"
    main(["--pred", str(seed1_dir), "--gt", str(asset(GT_DIR)), "--out", str(out), "--quiet"])
    summary = json.loads((out / "widerface_ap.json").read_text())
    for setting in SETTINGS:
        assert abs(summary[setting] - expected_ap[ARCHIVES[0]][setting]) <= 1e-9
        assert (out / f"pr_curve_{setting}.png").stat().st_size > 1000
    assert summary["images_evaluated"] == 3226 and summary["complete"]
