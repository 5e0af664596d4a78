"""benchmarks/bench_widerface_val.py on the four shared WIDER val images: the table's JSON, AP from
the project's evaluator, resuming per configuration, and the fixed subsets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.bench_widerface_val import CONFIGS, PUBLISHED, main
from detector.evaluation.predict import select_images
from detector.evaluation.submission import SETTINGS, load_ground_truth, read_submission
from detector.evaluation.widerface import WiderFaceEvaluator, evaluate_folder
from tests.shared import MOBILENET_WEIGHTS, asset

IMAGES = "widerface/val/images"
KEYS = ["0--Parade/0_Parade_Parade_0_873", "0--Parade/0_Parade_marchingband_1_765",
        "11--Meeting/11_Meeting_Meeting_11_Meeting_Meeting_11_176",
        "11--Meeting/11_Meeting_Meeting_11_Meeting_Meeting_11_26"]


def run(tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / "bench"
    assert main(["--images", str(asset(IMAGES)), "--gt", str(asset("widerface/ground_truth")),
                 "--weights", str(asset(MOBILENET_WEIGHTS)), "--out", str(out), *extra]) == 0
    return json.loads((out / ("full" if "--every" not in extra else f"every{extra[extra.index('--every') + 1]}")
                       / "table.json").read_text())


def test_table_json_holds_ap_of_the_projects_evaluator_and_resumes(tmp_path: Path):
    table = run(tmp_path, "--configs", "torch-fp32-original,scrfd500m-640")
    assert table["subset"] == "full" and table["images"] == 4
    assert table["published"]["biubug6"] == {"label": PUBLISHED["biubug6"][0], "easy": 90.70, "medium": 88.16,
                                             "hard": 73.82}
    assert set(table["configs"]) == {"torch-fp32-original", "scrfd500m-640"}
    gt = load_ground_truth(asset("widerface/ground_truth"))
    for name, record in table["configs"].items():
        assert record["identity"]["runtime"] == CONFIGS[name].runtime
        assert record["images"] == 4 and record["complete_subset"]
        assert record["images_per_second"] > 0 and record["runs"][0]["images"] == 4
        pred_dir = tmp_path / "bench" / "full" / name / "predictions"
        # the AP is the evaluator's on the written submission, recomputed here two ways
        expected = evaluate_folder(pred_dir, ground_truth=gt, progress=False)
        evaluator = WiderFaceEvaluator(ground_truth=gt)
        evaluator.process_submission(read_submission(pred_dir, progress=False))
        for setting in SETTINGS:
            assert record["ap"][setting] == expected[setting] == evaluator.compute()[setting]
            assert 0.4 < record["ap"][setting] <= 1.0
        assert sorted(read_submission(pred_dir, progress=False)) == KEYS
    # ours at original size, torch fp32, on these four images (the reference checkpoint)
    ap = table["configs"]["torch-fp32-original"]["ap"]
    assert [round(100 * ap[s], 2) for s in SETTINGS] == pytest.approx([56.70, 68.80, 79.82], abs=0.05)
    assert table["configs"]["scrfd500m-640"]["identity"]["resize"] == "long:640"

    # a second run finds every prediction there: nothing detected, the same AP, other configs kept
    again = run(tmp_path, "--configs", "torch-fp32-original")
    record = again["configs"]["torch-fp32-original"]
    assert len(record["runs"]) == 1 and record["ap"] == ap
    assert set(again["configs"]) == {"torch-fp32-original", "scrfd500m-640"}


def test_subsets_are_every_nth_image_per_event(tmp_path: Path):
    assert select_images(KEYS, every=2) == [KEYS[0], KEYS[2]]
    assert select_images(reversed(KEYS), events={"11"}) == KEYS[2:]
    assert select_images(KEYS, every=2, events={"0--Parade"}) == [KEYS[0]]
    with pytest.raises(ValueError, match="every must be >= 1"):
        select_images(KEYS, every=0)
    table = run(tmp_path, "--configs", "torch-fp32-original", "--every", "2")
    assert table["subset"] == "every2" and table["configs"]["torch-fp32-original"]["images"] == 2


def test_unknown_configuration_is_refused(tmp_path: Path):
    with pytest.raises(SystemExit, match="unknown configuration"):
        main(["--images", str(asset(IMAGES)), "--configs", "torch-fp64", "--out", str(tmp_path)])


def test_degenerate_boxes_are_written_with_size_zero(tmp_path: Path):
    from detector.evaluation.predict import write_detections, xyxy_to_xywh
    from detector.evaluation.submission import read_prediction_file

    boxes = [[10.0, 20.0, 30.0, 60.0], [5.0, 5.0, 5.0 - 1.220703125e-4, 9.0]]  # SCRFD decoded x2 < x1
    assert xyxy_to_xywh(boxes).tolist() == [[10.0, 20.0, 20.0, 40.0], [5.0, 5.0, 0.0, 4.0]]
    path = write_detections(tmp_path, "0--Parade/x", boxes, [0.9, 0.1])
    assert read_prediction_file(path)[1].tolist() == [[10.0, 20.0, 20.0, 40.0, 0.9], [5.0, 5.0, 0.0, 4.0, 0.1]]


def test_reference_int_convention_scores_what_the_reference_writer_writes(tmp_path: Path, capsys):
    """--box-format float,reference-int scores one run both ways; the reference-int AP is the
    evaluator's on the folder predict_submission(box_format="reference-int") writes."""
    from detector.evaluation.job import DetectorRunConfig, detect_function
    from detector.evaluation.predict import predict_submission
    from detector.spec import DetectorSpec

    table = run(tmp_path, "--configs", "torch-fp32-original", "--box-format", "float,reference-int")
    out = capsys.readouterr().out
    assert "scoring with boxes float" in out and "scoring with boxes reference-int: biubug6 test_widerface.py" in out
    assert "torch-fp32-original [reference-int]" in out
    records = table["configs"]
    assert set(records) == {"torch-fp32-original", "torch-fp32-original [reference-int]"}
    ref = records["torch-fp32-original [reference-int]"]
    assert ref["box_format"] == "reference-int" and records["torch-fp32-original"]["box_format"] == "float"
    assert ref["identity"] == records["torch-fp32-original"]["identity"] and len(ref["runs"]) == 1

    gt = load_ground_truth(asset("widerface/ground_truth"))
    spec = DetectorSpec(weights=str(asset(MOBILENET_WEIGHTS)), runtime="torch", precision="fp32", resize="original")
    detect = detect_function(spec.build(), DetectorRunConfig(images_dir=asset(IMAGES), detector=spec))
    direct = tmp_path / "direct"
    predict_submission(asset(IMAGES), direct, detect, progress=False, box_format="reference-int")
    lines = (direct / f"{KEYS[0]}.txt").read_text().splitlines()
    assert all(t.lstrip("-").isdigit() for t in lines[2].split()[:4])  # "x y w h" integers, as the reference
    expected = evaluate_folder(direct, ground_truth=gt, progress=False)
    for setting in SETTINGS:
        assert ref["ap"][setting] == expected[setting]
    # truncation moves boxes by up to a pixel: on these four images (float: 56.70 / 68.80 / 79.82)
    # the hard set's small faces gain 1.5 points
    assert [round(100 * records["torch-fp32-original"]["ap"][s], 2) for s in SETTINGS] == pytest.approx(
        [56.70, 68.80, 79.82], abs=0.05)
    assert [round(100 * ref["ap"][s], 2) for s in SETTINGS] == pytest.approx([56.88, 68.90, 81.28], abs=0.05)
    with pytest.raises(SystemExit, match="--box-format"):
        run(tmp_path, "--configs", "torch-fp32-original", "--box-format", "int")
