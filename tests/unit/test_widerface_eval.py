"""WIDER FACE evaluation: golden AP, a brute-force protocol cross-check, I/O, errors, the job."""

from __future__ import annotations

import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest

from detector.evaluation.widerface import (
    SETTINGS,
    PredictionFormatError,
    WiderFaceEvalConfig,
    WiderFaceEvaluator,
    WiderFaceGroundTruth,
    bbox_overlaps_plus_one,
    evaluate_folder,
    load_ground_truth,
    read_prediction_file,
    read_submission,
    voc_ap,
    write_submission,
)
from tests.shared import MOBILENET_WEIGHTS, asset, golden

GT_DIR = "widerface/ground_truth"
ARCHIVES = ("predictions_seed1.tar.gz", "predictions_seed2.tar.gz")


@pytest.fixture(scope="module")
def gt() -> WiderFaceGroundTruth:
    return load_ground_truth(asset(GT_DIR))


@pytest.fixture(scope="module")
def expected_ap() -> dict:
    return json.loads(golden("widerface_eval/expected_ap.json").read_text())


def _extract(archive: str, dest: Path) -> Path:
    with tarfile.open(golden(f"widerface_eval/{archive}")) as tar:
        tar.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return dest / "predictions"


@pytest.fixture(scope="module")
def seed1_dir(tmp_path_factory) -> Path:
    return _extract(ARCHIVES[0], tmp_path_factory.mktemp("seed1"))


# ------------------------------------------------------------------------------------------
# brute force: the protocol written as plainly as possible (loops over predictions and thresholds)
# ------------------------------------------------------------------------------------------


def brute_iou(p: np.ndarray, g: np.ndarray) -> float:
    iw = min(p[2], g[2]) - max(p[0], g[0]) + 1
    ih = min(p[3], g[3]) - max(p[1], g[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    return iw * ih / ((p[2] - p[0] + 1) * (p[3] - p[1] + 1) + (g[2] - g[0] + 1) * (g[3] - g[1] + 1) - iw * ih)


def brute_force_ap(gt: WiderFaceGroundTruth, preds: dict[int, np.ndarray], setting: str,
                   thresh_num: int = 1000) -> tuple[float, np.ndarray, np.ndarray]:
    scores = [s for v in preds.values() for s in v[:, 4]]
    lo, hi = min([1.0, *scores]), max([0.0, *scores])
    pr = np.zeros((thresh_num, 2))
    faces = 0
    for i, pred in preds.items():
        g = gt.image_boxes(i)
        keep = gt.keep[setting][gt.offsets[i]:gt.offsets[i + 1]]
        faces += int(keep.sum())
        if len(g) == 0 or len(pred) == 0:
            continue
        recalled = set()
        ignored_match = []
        recall_after = []
        for p in pred:
            ious = [brute_iou([p[0], p[1], p[0] + p[2], p[1] + p[3]],
                              [b[0], b[1], b[0] + b[2], b[1] + b[3]]) for b in g]
            j = int(np.argmax(ious))
            hit = ious[j] >= 0.5
            ignored_match.append(hit and not keep[j])
            if hit and keep[j]:
                recalled.add(j)
            recall_after.append(len(recalled))
        norm = [(s - lo) / (hi - lo) for s in pred[:, 4]]
        for t in range(thresh_num):
            thr = 1 - (t + 1) / thresh_num
            last = max((k for k, s in enumerate(norm) if s >= thr), default=None)
            if last is not None:
                pr[t, 0] += sum(1 for k in range(last + 1) if not ignored_match[k])
                pr[t, 1] += recall_after[last]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision, recall = pr[:, 1] / pr[:, 0], pr[:, 1] / faces
    # VOC AP with an explicit backwards loop
    mrec = [0.0, *recall, 1.0]
    mpre = [0.0, *precision, 0.0]
    for k in range(len(mpre) - 1, 0, -1):
        mpre[k - 1] = mpre[k - 1] if mpre[k - 1] >= mpre[k] or math.isnan(mpre[k - 1]) else mpre[k]
    terms = [(mrec[k + 1] - mrec[k]) * mpre[k + 1] for k in range(len(mrec) - 1) if mrec[k + 1] != mrec[k]]
    return float(np.sum(terms)), precision, recall  # np.sum (pairwise) as in the port


def synthetic_case(seed: int) -> tuple[WiderFaceGroundTruth, dict[int, np.ndarray]]:
    """Random ground truth with ignored faces, and predictions in random (unsorted) file order
    with jittered hits, duplicates, tied scores, false positives and empty images."""
    rng = np.random.default_rng(seed)
    n_img = 12
    counts = rng.integers(0, 9, n_img)
    counts[0] = 0  # an image without faces
    boxes = np.concatenate([np.column_stack([rng.integers(0, 400, (c, 2)), rng.integers(2, 60, (c, 2))])
                            for c in counts]).astype(np.float64)
    hard = rng.random(len(boxes)) < 0.9
    medium = hard & (rng.random(len(boxes)) < 0.6)
    easy = medium & (rng.random(len(boxes)) < 0.5)
    gt = WiderFaceGroundTruth(events=tuple("e" for _ in range(n_img)), names=tuple(f"img{i}" for i in range(n_img)),
                              boxes=boxes, offsets=np.concatenate(([0], np.cumsum(counts))),
                              keep={"easy": easy, "medium": medium, "hard": hard})
    preds = {}
    for i in range(n_img):
        if i == 1:
            preds[i] = np.zeros((0, 5))  # an image with no predictions
            continue
        g = gt.image_boxes(i)
        rows = []
        for b in g:
            for _ in range(rng.integers(0, 3)):  # misses and duplicates
                rows.append([*(b + rng.normal(0, 0.15 * b[2:].mean(), 4) * [1, 1, 0.5, 0.5]).clip(0)])
        for _ in range(rng.integers(0, 4)):
            rows.append([*rng.integers(0, 400, 2), *rng.integers(2, 60, 2)])
        rows = np.array(rows, dtype=np.float64).reshape(-1, 4)
        scores = rng.choice([0.1, 0.3, 0.5, 0.55, 0.9], len(rows)) if i % 3 == 0 else rng.random(len(rows))
        preds[i] = np.column_stack([rows, scores])
    return gt, preds


# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("archive", ARCHIVES)
def test_golden_ap_matches_reference_port(archive, gt, expected_ap, tmp_path):
    result = evaluate_folder(_extract(archive, tmp_path), ground_truth=gt, progress=False)
    assert result.images_evaluated == result.images_total == 3226
    assert {s: r.num_faces for s, r in result.settings.items()} == {"easy": 7211, "medium": 13319, "hard": 31958}
    for setting in SETTINGS:
        assert abs(result[setting] - expected_ap[archive][setting]) <= 1e-9, setting


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_equals_brute_force_protocol(seed):
    gt, preds = synthetic_case(seed)
    ev = WiderFaceEvaluator(ground_truth=gt)
    for i, p in preds.items():
        ev.process(gt.key(i), p[:, :4], p[:, 4])
    result = ev.compute()
    for setting in SETTINGS:
        ap, precision, recall = brute_force_ap(gt, preds, setting)
        r = result.settings[setting]
        np.testing.assert_array_equal(r.precision, precision)  # NaN where nothing is counted yet
        np.testing.assert_array_equal(r.recall, recall)
        assert r.ap == ap
        assert 0.0 < r.ap < 1.0


def test_file_order_matters_not_sorting():
    """The protocol walks predictions in file order: putting a low-scored duplicate first makes the
    duplicate (not the better box) the recall of the face, which changes precision."""
    gt = WiderFaceGroundTruth(events=("e",), names=("a",), boxes=np.array([[10.0, 10, 20, 20]]),
                              offsets=np.array([0, 1]), keep={s: np.array([True]) for s in SETTINGS})
    good, dup = [10, 10, 20, 20, 0.9], [11, 11, 20, 20, 0.2]
    results = []
    for rows in ([good, dup], [dup, good]):
        ev = WiderFaceEvaluator(ground_truth=gt)
        p = np.array(rows, dtype=np.float64)
        ev.process("a", p[:, :4], p[:, 4])
        results.append(ev.compute()["easy"])
    assert results[0] == pytest.approx(1.0) and results[1] < 1.0


def test_iou_plus_one_convention():
    a = np.array([[0.0, 0, 9, 9]])  # 10 x 10 pixels under the +1 convention
    b = np.array([[5.0, 0, 14, 9], [10.0, 0, 19, 9], [20.0, 20, 21, 21]])
    np.testing.assert_allclose(bbox_overlaps_plus_one(a, b), [[50 / 150, 0.0, 0.0]])
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 0.5])) == pytest.approx(0.75)


def test_partial_set_is_evaluated_over_present_images(gt, seed1_dir, tmp_path):
    sub = tmp_path / "pred"
    (sub / "0--Parade").mkdir(parents=True)
    files = sorted((seed1_dir / "0--Parade").glob("*.txt"))[:25]
    for f in files:
        (sub / "0--Parade" / f.name).write_bytes(f.read_bytes())
    result = evaluate_folder(sub, ground_truth=gt, progress=False)
    assert result.images_evaluated == 25 and not result.complete
    preds = {gt.index(k): v for k, v in read_submission(sub, progress=False).items()}
    for setting in ("easy", "hard"):
        assert result[setting] == brute_force_ap(gt, preds, setting)[0]
    assert result.settings["hard"].num_faces == int(sum(gt.keep["hard"][gt.offsets[i]:gt.offsets[i + 1]].sum()
                                                        for i in preds))
    with pytest.raises(ValueError, match="3201 of 3226 validation images have no prediction file"):
        evaluate_folder(sub, ground_truth=gt, require_all=True, progress=False)


def test_write_read_roundtrip_is_exact(gt, tmp_path):
    rng = np.random.default_rng(0)
    preds = {gt.key(i): np.column_stack([rng.random((n, 4)).astype(np.float32) * 300, rng.random(n)])
             for i, n in zip((0, 5, 77), (3, 0, 11), strict=True)}
    write_submission(tmp_path, preds)
    back = read_submission(tmp_path, progress=False)
    assert back.keys() == preds.keys()
    for k in preds:
        np.testing.assert_array_equal(back[k], preds[k].astype(np.float64))
    assert (tmp_path / gt.events[0] / f"{gt.names[0]}.txt").read_text().splitlines()[:2] == [gt.names[0], "3"]


MALFORMED = {
    "empty": ("", 1, "missing image name"),
    "wrong_name": ("other_image\n1\n1 2 3 4 0.5\n", 1, "does not match the file name"),
    "no_count": ("{name}\n", 2, "missing face count"),
    "bad_count": ("{name}\nthree\n", 2, "face count must be a non-negative integer"),
    "count_mismatch": ("{name}\n1\n1 2 3 4 0.5\n5 6 7 8 0.4\n", 4, "declares 1 faces but holds 2"),
    "short_line": ("{name}\n2\n1 2 3 4 0.5\n1 2 3 0.4\n", 4, "expected 5 values"),
    "not_a_number": ("{name}\n1\n1 2 x 4 0.5\n", 3, "'x' is not a number"),
    "nan_score": ("{name}\n2\n1 2 3 4 0.5\n\n1 2 3 4 nan\n", 5, "score is nan"),
    "inf_x": ("{name}\n1\ninf 2 3 4 0.5\n", 3, "x is inf"),
    "negative_size": ("{name}\n2\n1 2 3 4 0.5\n1 2 3 -4 0.5\n", 4, "negative box h -4.0"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_prediction_file_errors_name_file_and_line(case, tmp_path):
    text, line, message = MALFORMED[case]
    path = tmp_path / "0--Parade" / "0_Parade_marchingband_1_465.txt"
    path.parent.mkdir()
    path.write_text(text.format(name="0_Parade_marchingband_1_465"))
    with pytest.raises(PredictionFormatError, match=message) as err:
        read_prediction_file(path)
    assert err.value.line == line and str(err.value).startswith(f"{path}:{line}: ")
    with pytest.raises(PredictionFormatError):
        read_submission(tmp_path, progress=False)


def test_prediction_for_unknown_image_names_the_file(gt, tmp_path):
    path = tmp_path / "0--Parade" / "not_a_val_image.txt"
    path.parent.mkdir()
    path.write_text("not_a_val_image\n0\n")
    with pytest.raises(PredictionFormatError, match=r"not_a_val_image\.txt:1: .*not a WIDER FACE validation image"):
        evaluate_folder(tmp_path, ground_truth=gt, progress=False)
    wrong_event = tmp_path / "0--Parade" / "11_Meeting_Meeting_11_Meeting_Meeting_11_26.txt"
    path.unlink()
    wrong_event.write_text("11_Meeting_Meeting_11_Meeting_Meeting_11_26.jpg\n0\n")
    with pytest.raises(PredictionFormatError, match="belongs to event '11--Meeting'"):
        evaluate_folder(tmp_path, ground_truth=gt, progress=False)


def test_evaluator_api_validation(gt):
    ev = WiderFaceEvaluator(ground_truth=gt, config=WiderFaceEvalConfig())
    ev.process("0--Parade/0_Parade_marchingband_1_465.jpg", np.zeros((0, 4)), np.zeros(0))
    with pytest.raises(ValueError, match="already processed"):
        ev.process("0_Parade_marchingband_1_465", np.zeros((0, 4)), np.zeros(0))
    with pytest.raises(ValueError, match="negative box w"):
        ev.process(gt.key(1), np.array([[10.0, 10, 5, 20]]), np.array([0.5]), box_format="xyxy")
    with pytest.raises(KeyError):
        ev.process("nope", np.zeros((0, 4)), np.zeros(0))
    assert len(ev) == 1 and ev.evaluate()["images_evaluated"] == 1
    ev.reset()
    assert len(ev) == 0


def test_job_rejects_ambiguous_source(capsys):
    from jobs.eval_widerface import config_from_args

    with pytest.raises(SystemExit):
        config_from_args(["--gt", "x"])
    with pytest.raises(SystemExit):
        config_from_args(["--gt", "x", "--images", "y", "--pred", "z"])
    assert "give exactly one of --pred DIR or --images DIR" in capsys.readouterr().err


def test_images_mode_finds_weights_as_every_command(monkeypatch, tmp_path):
    """No --weights: $FACEPREP_WEIGHTS (a file or a folder holding it), else the cache, as the other commands."""
    from detector.hub import CACHE_ENV, WEIGHTS_ENV
    from jobs.eval_widerface import config_from_args

    weights = asset(MOBILENET_WEIGHTS)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "empty_cache"))
    for env in (weights, weights.parent):
        monkeypatch.setenv(WEIGHTS_ENV, str(env))
        config = config_from_args(["--gt", "x", "--images", "y"])
        assert config.run.detector.weights is None
        assert Path(config.run.detector.check().weights) == weights
    monkeypatch.delenv(WEIGHTS_ENV)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / weights.name).symlink_to(weights)
    monkeypatch.setenv(CACHE_ENV, str(cache))
    assert Path(config_from_args(["--gt", "x", "--images", "y"]).run.detector.check().weights) == cache / weights.name


def test_reference_int_boxes_truncate_toward_zero_as_python_int(tmp_path):
    """biubug6's test_widerface.py: x = int(x1), y = int(y1), w = int(x2) - int(x1), h = int(y2) - int(y1)."""
    from detector.evaluation.predict import (
        reference_int_predictions,
        reference_int_xywh,
        reference_scores,
        write_detections,
        xyxy_to_xywh,
    )
    from detector.evaluation.submission import read_prediction_file

    boxes = np.array([[10.7, 20.2, 30.9, 60.5],
                      [-0.7, -1.5, 5.2, 3.9],     # int(-0.7) == 0, int(-1.5) == -1 (not floor's -1, -2)
                      [-2.5, -0.2, -1.1, 0.0]], dtype=np.float32)
    # by hand: [10, 20, 30-10, 60-20], [0, -1, 5-0, 3-(-1)], [-2, 0, -1-(-2), 0-0]
    expected = [[10, 20, 20, 40], [0, -1, 5, 4], [-2, 0, 1, 0]]
    assert reference_int_xywh(boxes).tolist() == expected
    assert [[int(x1), int(y1), int(x2) - int(x1), int(y2) - int(y1)] for x1, y1, x2, y2 in boxes.tolist()] == expected
    assert reference_int_xywh(np.array([[5.0, 5.0, 4.5, 9.0]])).tolist() == [[5, 5, 0, 4]]  # degenerate: size 0
    scores = np.array([0.9, 0.123456789, 0.02000001], dtype=np.float32)
    assert reference_scores(scores).tolist() == [0.9, 0.12345679, 0.02000001]  # str(np.float32(.))

    path = write_detections(tmp_path, "0--Parade/x.jpg", boxes, scores, box_format="reference-int")
    assert path.read_text() == "x\n3\n10 20 20 40 0.9\n0 -1 5 4 0.12345679\n-2 0 1 0 0.02000001\n"
    assert read_prediction_file(path)[1][:, :4].tolist() == expected
    # a float submission converts to the same lines (one detection run scores both ways)
    float_values = np.concatenate([xyxy_to_xywh(boxes), scores[:, None].astype(np.float64)], axis=1)
    assert reference_int_predictions(float_values).tolist() == read_prediction_file(path)[1].tolist()
    with pytest.raises(ValueError, match="box_format must be one of float, reference-int"):
        write_detections(tmp_path, "0--Parade/x", boxes, scores, box_format="int")  # type: ignore[arg-type]


def test_job_takes_the_box_format():
    from detector.evaluation.job import DetectorRunConfig
    from detector.spec import DetectorSpec
    from jobs.eval_widerface import config_from_args

    assert config_from_args(["--gt", "x", "--images", "y"]).run.box_format == "float"
    assert config_from_args(["--gt", "x", "--images", "y", "--box-format", "reference-int"]).run.box_format \
        == "reference-int"
    with pytest.raises(SystemExit):
        config_from_args(["--gt", "x", "--images", "y", "--box-format", "int"])
    with pytest.raises(ValueError, match="box_format"):
        DetectorRunConfig(images_dir=Path("y"), detector=DetectorSpec(), box_format="int")  # type: ignore[arg-type]
