"""End to end: deepface pairs vs the golden run, a miniature IJB-C layout, exclusions, Ray, the job."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import shutil

import cv2
import numpy as np
import pytest

from detector.api import PostprocessConfig
from detector.spec import DetectorSpec
from pipeline.config import AlignConfig
from pipeline.images import read_image
from pipeline.verification import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AggregationConfig,
    CropMaker,
    EvaluationConfig,
    OnnxRecognizerConfig,
    Preprocess,
    VerificationDataError,
    evaluate,
    extract,
    face_aligner,
    read_ijb,
    read_pairs_csv,
    score,
    write_report,
)
from pipeline.verification.runner import format_table, torch_threads
from tests.shared import MOBILENET_WEIGHTS, REPO_ROOT, asset, golden
from tests.unit.test_verification_aggregate import reference_scores

ONNX = "weights/mobilefacenet_arcface112.onnx"
THREADS = 1  # the test machine's cores are shared: one intra-op thread is faster than two under load


@pytest.fixture(scope="module")
def recognizer():
    return OnnxRecognizerConfig(model=asset(ONNX), threads=THREADS,
                                preprocess=Preprocess(rgb=True, mean=IMAGENET_MEAN, std=IMAGENET_STD))


@pytest.fixture(scope="module")
def golden_settings():
    """The golden run's detector and face choice (``EvaluationConfig`` fields): long side capped at
    1024, confidence 0.5, NMS 0.4, largest face; the rest the one set of defaults."""
    spec = DetectorSpec(weights=str(asset(MOBILENET_WEIGHTS)), runtime="torch",
                        postprocess=PostprocessConfig(nms_threshold=0.4))
    # vote_iou=None: the golden run kept the NMS survivors' own boxes (voting moves the box crops'
    # boxes: one deepface pair of ~38 flips at FAR 1e-2, a 0.026 step)
    return dict(align=AlignConfig(select="largest", min_score=0.5, resize="cap:1024", vote_iou=None), detector=spec)


def config(golden_settings, **kw):
    kw.setdefault("aggregation", AggregationConfig(flip=False))
    return EvaluationConfig(**golden_settings, threads=THREADS, progress=False, **kw)


# ------------------------------------------------------------------------------------- acceptance 1: golden


def test_deepface_reproduces_golden(recognizer, golden_settings, tmp_path):
    expected = json.loads(golden("verification/deepface_expected.json").read_text())["results"]
    protocol = read_pairs_csv(asset("verification/deepface/master.csv"))
    cfg = config(golden_settings, sources=("detector", "box"), fars=(1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 5e-2, 1e-1))
    result = evaluate(protocol, recognizer=recognizer, config=cfg)
    det, box = result.sources["detector"].metrics, result.sources["box"].metrics
    want_det, want_box = expected["aligned_arcface112"], expected["no_alignment_square_box_crop_112"]
    assert det.auc == pytest.approx(want_det["auc"], abs=0.01)
    assert det.tar_at_far[0.01] == pytest.approx(want_det["tar_at_far_0.01"], abs=0.01)
    assert det.tar_at_far[0.05] == pytest.approx(want_det["tar_at_far_0.05"], abs=0.01)
    assert det.best_accuracy == pytest.approx(want_det["best_accuracy"], abs=0.01)
    for ours, key in ((box.auc, "auc"), (box.tar_at_far[0.01], "tar_at_far_0.01"),
                      (box.tar_at_far[0.05], "tar_at_far_0.05"), (box.best_accuracy, "best_accuracy")):
        assert ours == pytest.approx(want_box[key], abs=0.01), key
    # box is clearly lower, as in the golden run
    assert box.auc < det.auc - 0.005
    assert box.tar_at_far[0.01] < det.tar_at_far[0.01] - 0.05
    # 262 negatives: FARs below 1/262 are not measurable and must not be reported as numbers
    for far in (1e-6, 1e-5, 1e-4, 1e-3):
        assert det.tar_at_far[far] is None and box.tar_at_far[far] is None

    paths = write_report(result, tmp_path / "out")
    report = json.loads(paths["report"].read_text())
    for name in ("detector", "box"):
        entry = report[name]
        assert entry["pairs"] == 300 and entry["positives"] == 38 and entry["negatives"] == 262
        assert entry["tar_at_far"]["1e-06"] is None and entry["tar_at_far"]["0.0001"] is None
        assert set(entry["tar_at_far"]) == {"1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.05", "0.1"}
        assert not any(entry["excluded"].values())
    assert report["detector"]["fallbacks"] == {}  # no protocol landmarks, photos without a face excluded
    assert report["gains"]["detector"]["vs"] == "box"
    assert report["gains"]["detector"]["auc"] == pytest.approx(det.auc - box.auc)
    assert paths["roc"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    throughput = report["throughput"]
    assert throughput["photos"] == 25 and throughput["faces_embedded"] == 50 and throughput["faces_per_s"] > 0
    table = format_table(result)
    assert "detector - box" in table and "n/a" in table
    print(f"\n{table}\nthroughput: {json.dumps({k: v for k, v in throughput.items() if k != 'note'})}")


# ------------------------------------------------------------------------------- a miniature IJB-C layout


def _identities(protocol) -> list[list[int]]:
    """Connected components of the "Yes" pairs: photo indices per person."""
    parent = list(range(len(protocol.images)))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for (a, b), same in zip(protocol.pairs, protocol.labels):
        if same:
            parent[find(int(a))] = find(int(b))
    groups: dict[int, list[int]] = {}
    for i in range(len(parent)):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values())


def _loose_crop(image, box, landmarks, factor, shift, long_side=200):
    """IJB-C-like loose crop: a square around the box (clipped to the photo), resized; landmarks follow."""
    x1, y1, x2, y2 = box
    side = factor * max(x2 - x1, y2 - y1)
    cx, cy = (x1 + x2) / 2 + shift * (x2 - x1), (y1 + y2) / 2
    h, w = image.shape[:2]
    left, top = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    right, bottom = int(min(w, cx + side / 2)), int(min(h, cy + side / 2))
    crop = image[top:bottom, left:right]
    s = long_side / max(crop.shape[:2])
    crop = cv2.resize(crop, (round(crop.shape[1] * s), round(crop.shape[0] * s)), interpolation=cv2.INTER_AREA)
    return crop, (landmarks - np.array([left, top])) * s


@pytest.fixture(scope="module")
def mini_ijbc(tmp_path_factory, golden_settings):
    """The deepface photos as IJB-C: per person two templates; each photo is one media of two loose crops
    ("frames"); the 5-point file holds our detector's landmarks mapped into the loose crops."""
    protocol = read_pairs_csv(asset("verification/deepface/master.csv"))
    maker = CropMaker(sources=("detector",), aligner=face_aligner(**golden_settings))
    root = tmp_path_factory.mktemp("ijbc")
    with torch_threads(THREADS):
        _write_mini_ijbc(root, protocol, maker)
    return root


def _write_mini_ijbc(root, protocol, maker):
    (root / "loose_crop").mkdir()
    (root / "meta").mkdir()
    tid_mid, points, template_person = [], [], {}
    name_counter = 0
    for person, photos in enumerate(_identities(protocol)):
        half = max(1, len(photos) // 2)
        for part, members in enumerate((photos[:half], photos[half:])):
            template = 100 + 7 * (2 * person + part)
            template_person[template] = person
            for photo in members:
                image = read_image(protocol.image_path(photo))
                face = maker.detect(image)
                assert face is not None, protocol.images[photo]
                for factor, shift in ((1.6, 0.0), (2.0, 0.08)):
                    crop, lmk = _loose_crop(image, face.box, face.landmarks, factor, shift)
                    name_counter += 1
                    name = f"{name_counter}.jpg"
                    cv2.imwrite(str(root / "loose_crop" / name), crop, [cv2.IMWRITE_JPEG_QUALITY, 95])
                    tid_mid.append(f"{name} {template} {5000 + photo}")
                    values = " ".join(f"{v:.3f}" for v in lmk.reshape(-1))
                    points.append(f"{name} {values} {face.score:.4f}")
    templates = sorted(template_person)
    pairs = [f"{a} {b} {int(template_person[a] == template_person[b])}"
             for i, a in enumerate(templates) for b in templates[i + 1:]]
    (root / "meta" / "ijbc_face_tid_mid.txt").write_text("\n".join(tid_mid) + "\n")
    (root / "meta" / "ijbc_name_5pts_score.txt").write_text("\n".join(points[::-1]) + "\n")  # other order
    (root / "meta" / "ijbc_template_pair_label.txt").write_text("\n".join(pairs) + "\n")


INSIGHTFACE = AggregationConfig(flip=True, face_score=True, keep_norm=True)  # eval_ijbc.py's F2, D1, N1


@pytest.fixture(scope="module")
def mini_ijbc_result(mini_ijbc, recognizer, golden_settings):
    protocol = read_ijb(mini_ijbc)
    cfg = config(golden_settings, sources=("provided", "detector", "box"), aggregation=INSIGHTFACE)
    return evaluate(protocol, recognizer=recognizer, config=cfg)


def test_mini_ijbc_end_to_end(mini_ijbc_result):
    result = mini_ijbc_result
    protocol = result.protocol
    assert protocol.summary() == {
        "kind": "ijbc", "source": str(protocol.source), "images": 50, "faces": 50, "templates": 18,
        "pairs": 153, "positives": 9, "negatives": 144, "landmarks": True, "folds": None,
    }
    for name, res in result.sources.items():
        assert not any(res.excluded.values()), (name, res.excluded)
        assert not any(res.fallbacks.values()), (name, res.fallbacks)
        assert res.pair_mask.all()
    provided, detector = result.sources["provided"], result.sources["detector"]
    assert provided.metrics.auc > 0.99 and detector.metrics.auc > 0.99
    # The 5-point file holds our detector's landmarks: re-detecting on the loose crops must give
    # nearly the same template scores (wrong landmark offsets or a misjoined 5-point file would not).
    diff = np.abs(provided.scores - detector.scores)
    print(f"\n|provided - detector| template scores: mean {diff.mean():.4f}, max {diff.max():.4f}; "
          f"corr {np.corrcoef(provided.scores, detector.scores)[0, 1]:.4f}")
    assert diff.mean() < 0.03 and diff.max() < 0.12
    assert np.corrcoef(provided.scores, detector.scores)[0, 1] > 0.99
    tar = result.to_json()["provided"]["tar_at_far"]
    assert tar["0.001"] is None and tar["0.01"] == 1.0  # 144 negatives: 1e-2 is the smallest measurable decade


def test_mini_ijbc_aggregation_matches_reference(mini_ijbc_result):
    """The runner's template scores equal the straightforward loop implementation on its own features."""
    result = mini_ijbc_result
    p, ex = result.protocol, result.extraction
    diffs = []
    for name, res in result.sources.items():
        # the workers store the crop's and the mirror's embeddings apart; the reference sums them
        feats = ex.features[name][p.face_image]
        want = reference_scores(feats, ex.flipped[name][p.face_image], ex.scores[name][p.face_image], p.face_template,
                                p.face_media, p.pairs, flip=True, face_score=True, keep_norm=True)
        diffs.append(np.abs(res.scores - want).max())
    print(f"\nmax |runner - reference| over sources: {max(diffs):.2e}")
    assert max(diffs) < 1e-6


def test_mini_ijbc_on_ray_equals_in_process(mini_ijbc, mini_ijbc_result, recognizer, golden_settings, ray_session):
    protocol = read_ijb(mini_ijbc)
    # num_workers=0: one actor per `threads` CPUs of the running Ray (4 CPUs in the test session)
    cfg = dataclasses.replace(config(golden_settings, sources=("provided", "detector", "box"), aggregation=INSIGHTFACE,
                                     num_workers=0, chunk_size=8), threads=2)
    extraction = extract(protocol, recognizer=recognizer, config=cfg)
    local = mini_ijbc_result.extraction
    for name in cfg.sources:
        np.testing.assert_array_equal(extraction.status[name], local.status[name])
        assert np.abs(extraction.features[name] - local.features[name]).max() < 1e-4
    result = score(protocol, extraction, config=cfg)
    assert result.sources["detector"].metrics.auc == pytest.approx(mini_ijbc_result.sources["detector"].metrics.auc)
    assert extraction.throughput["workers"] == 2 and extraction.throughput["faces_embedded"] == 300


# ----------------------------------------------------------------------------------- acceptance 4: problems


@pytest.fixture()
def broken_ijbc(mini_ijbc, tmp_path):
    """The mini layout with: two missing photos that are all of one template, one more missing photo,
    one unreadable photo (text named .jpg), one photo without a face (flat grey)."""
    root = tmp_path / "broken"
    shutil.copytree(mini_ijbc / "meta", root / "meta")
    (root / "loose_crop").mkdir()
    for src in (mini_ijbc / "loose_crop").iterdir():
        (root / "loose_crop" / src.name).symlink_to(src)
    rows = [line.split() for line in (root / "meta" / "ijbc_face_tid_mid.txt").read_text().splitlines()]
    by_template: dict[str, list[str]] = {}
    for name, template, _ in rows:
        by_template.setdefault(template, []).append(name)
    lonely = next(t for t, names in by_template.items() if len(names) == 2)  # one photo, two frames
    busy = max(by_template, key=lambda t: len(by_template[t]))
    missing = by_template[lonely] + [by_template[busy][0]]
    for name in missing:
        (root / "loose_crop" / name).unlink()
    unreadable = by_template[busy][1]
    (root / "loose_crop" / unreadable).unlink()
    (root / "loose_crop" / unreadable).write_text("not an image")
    grey = by_template[busy][2]
    (root / "loose_crop" / grey).unlink()
    cv2.imwrite(str(root / "loose_crop" / grey), np.full((200, 160, 3), 128, np.uint8))
    lines = (root / "meta" / "ijbc_template_pair_label.txt").read_text().split()
    pair_rows = np.array(lines, dtype=int).reshape(-1, 3)
    lost_pairs = int(np.count_nonzero((pair_rows[:, 0] == int(lonely)) | (pair_rows[:, 1] == int(lonely))))
    return root, {"missing": missing, "unreadable": unreadable, "lost_pairs": lost_pairs}


def test_problems_are_counted_in_the_report(broken_ijbc, recognizer, golden_settings, tmp_path):
    root, truth = broken_ijbc
    protocol = read_ijb(root)
    cfg = config(golden_settings, sources=("provided", "detector"))
    result = evaluate(protocol, recognizer=recognizer, config=cfg)
    report = json.loads(write_report(result, tmp_path / "out")["report"].read_text())
    for name in ("provided", "detector"):
        excluded = report[name]["excluded"]
        assert excluded["missing_images"] == 3 and excluded["unreadable_images"] == 1
        assert excluded["no_face_images"] == 0  # the grey photo falls back to its provided landmarks
        assert excluded["faces"] == 4 and excluded["templates_without_faces"] == 1
        assert excluded["pairs"] == truth["lost_pairs"] == 17
        assert report[name]["pairs"] == 153 - 17
    assert report["detector"]["fallbacks"] == {"detector_to_provided": 1}
    assert report["problems"]["count"] == 4
    assert any(truth["unreadable"] in p and "not a supported image" in p for p in report["problems"]["examples"])

    strict = config(golden_settings, sources=("provided",), strict=True)
    with pytest.raises(VerificationDataError, match=r"3 photos .* missing.*" + truth["missing"][0].replace(".", r"\.")):
        evaluate(protocol, recognizer=recognizer, config=strict)


def test_pairs_csv_with_missing_photo(mini_ijbc, recognizer, golden_settings, tmp_path):
    csv_path = tmp_path / "pairs.csv"
    with csv_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerows([("file_x", "file_y", "Decision"), ("1.jpg", "3.jpg", "Yes"), ("1.jpg", "gone.jpg", "Yes"),
                     ("1.jpg", "41.jpg", "No"), ("gone.jpg", "41.jpg", "No"), ("3.jpg", "41.jpg", "No")])
    protocol = read_pairs_csv(csv_path, root=mini_ijbc / "loose_crop")
    result = evaluate(protocol, recognizer=recognizer, config=config(golden_settings, sources=("detector", "box")))
    for res in result.sources.values():
        assert res.excluded["missing_images"] == 1 and res.excluded["pairs"] == 2
        assert int(res.pair_mask.sum()) == 3
    assert not result.sources["box"].fallbacks["box_to_whole_photo"]


def test_job_command_line(mini_ijbc, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("eval_verification", REPO_ROOT / "jobs" / "eval_verification.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    out = tmp_path / "job"
    code = job.main([
        "--ijbc", str(mini_ijbc), "--model", str(asset(ONNX)), "--rgb", "--mean", "0.485,0.456,0.406",
        "--std", "0.229,0.224,0.225", "--align", "provided", "--weights", str(asset(MOBILENET_WEIGHTS)),
        "--flip", "--face-score", "--threads", "1", "--quiet", "--out", str(out),
    ])
    assert code == 0
    printed = capsys.readouterr().out
    assert "provided" in printed and "faces/s" in printed and "report:" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["sources"] == ["provided"]
    assert report["settings"]["aggregation"] == {"flip": True, "flip_fusion": "sum", "face_score": True,
                                                 "keep_norm": True}
    assert report["provided"]["pairs"] == 153 and (out / "roc.png").is_file()
