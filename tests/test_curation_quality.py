"""Per-face quality measures (pose, eye distance, box size, sharpness, brightness), the quality
filter, and both through the align job: constructed cases on real photos (blur, mirror, rotation by
20 degrees, half size), and filters deciding the selection and the ``filtered`` status."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.spec import DetectorSpec
from pipeline.curation import (
    HEADER,
    MEAN_FACE_3D,
    QualityFilter,
    box_size,
    brightness,
    eye_distance,
    face_quality,
    head_pose,
    sharpness,
)
from pipeline.job import EXIT_OK, AlignJobConfig, run_align_job
from pipeline.job.config import job_align_defaults
from tests.shared import asset

DEEPFACE = "verification/deepface"
MIRROR = [1, 0, 2, 4, 3]  # landmark order after a left-right flip (left eye = image left)


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """The rotation ``Rz(roll) @ Ry(-yaw) @ Rx(-pitch)`` that :func:`head_pose` inverts."""
    a, b, g = np.radians([-pitch, -yaw, roll])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(g), -np.sin(g), 0], [np.sin(g), np.cos(g), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _project(yaw: float, pitch: float, roll: float, scale: float = 2.5, shift=(300.0, 200.0)) -> np.ndarray:
    return (scale * MEAN_FACE_3D @ _rotation(yaw, pitch, roll).T)[:, :2] + shift


# ------------------------------------------------------------------------------------ pure functions


@pytest.mark.parametrize("angles", [(0, 0, 0), (30, 0, 0), (-30, 0, 0), (0, 20, 0), (0, -25, 0), (0, 0, 20),
                                    (25, -15, 10), (-40, 10, -35), (60, 5, 170)])
def test_pose_recovers_the_angles_of_a_projected_mean_face(angles):
    np.testing.assert_allclose(head_pose(_project(*angles)), angles, atol=1e-9)


def test_pose_sign_conventions_in_image_coordinates():
    def eyes_mid(p):
        return (p[0] + p[1]) / 2

    front = _project(0, 0, 0)
    right, up, clockwise = _project(20, 0, 0), _project(0, 20, 0), _project(0, 0, 20)
    # yaw > 0: the face turns towards the image right (the nose moves right of the eyes' midpoint)
    assert (right[2] - eyes_mid(right))[0] > 0 and (front[2] - eyes_mid(front))[0] == pytest.approx(0)
    # pitch > 0: chin up, the nose tip moves up towards the eyes (y down)
    assert (up[2] - eyes_mid(up))[1] < (front[2] - eyes_mid(front))[1]
    # roll > 0: the line from the left eye (image left) to the right eye goes down to the right
    assert clockwise[1, 1] > clockwise[0, 1]
    np.testing.assert_allclose(head_pose(front), [0, 0, 0], atol=1e-9)


def test_pose_is_antisymmetric_under_mirroring_and_rotating_the_points_adds_to_the_roll(detector):
    """On real detected points: exact (the fit is equivariant), whatever the detector's error."""
    for name in ("img1.jpg", "img12.jpg", "img30.jpg"):
        img = _even(cv2.imread(str(asset(f"{DEEPFACE}/{name}"))))
        pts = detector.detect([img])[0].numpy().landmarks[0].astype(np.float64)
        yaw, pitch, roll = head_pose(pts)
        mirrored = pts[MIRROR] * [-1, 1] + [img.shape[1] - 1, 0]
        np.testing.assert_allclose(head_pose(mirrored), [-yaw, pitch, -roll], atol=1e-9)
        m = cv2.getRotationMatrix2D((img.shape[1] / 2, img.shape[0] / 2), -20, 1.0)  # 20 deg clockwise
        np.testing.assert_allclose(head_pose(pts @ m[:, :2].T + m[:, 2]), [yaw, pitch, roll + 20], atol=1e-9)
        assert eye_distance(pts * 0.5) == pytest.approx(eye_distance(pts) / 2, rel=1e-12)


def test_measures_on_shapes_and_an_independent_laplacian():
    lm = np.array([[[10, 10], [40, 14], [25, 30], [12, 45], [38, 45]]], np.float64)
    assert eye_distance(lm).shape == (1,) and eye_distance(lm)[0] == pytest.approx(np.hypot(30, 4))
    assert box_size(np.array([[10, 20, 50, 120], [5, 5, 4, 9]])).tolist() == [pytest.approx(np.sqrt(4000)), 0.0]
    crop = cv2.imread(str(asset("images/aligned112_insightface_tom_hanks.png")))
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY).astype(np.float64)
    padded = np.pad(grey, 1, mode="reflect")  # OpenCV's default border (reflect 101)
    lap = padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:] - 4 * grey
    assert sharpness(crop) == pytest.approx(lap.var(), rel=1e-9)
    assert brightness(crop) == pytest.approx(grey.mean(), rel=1e-9)
    assert brightness(np.full((112, 112, 3), 77, np.uint8)) == 77.0 and sharpness(np.zeros((8, 8), np.uint8)) == 0
    with pytest.raises(ValueError, match="uint8"):
        sharpness(crop.astype(np.float32))
    q = face_quality(np.array([[0, 0, 112, 112]]), lm, crop[None])[0]
    assert list(q) == ["box_size", "eye_distance", "yaw", "pitch", "roll", "sharpness", "brightness"]
    assert q["box_size"] == 112.0 and q["sharpness"] == round(sharpness(crop), 2)
    assert face_quality(None, lm, crop[None])[0]["box_size"] is None


def test_quality_filter_validation_and_reasons():
    assert not QualityFilter().active and QualityFilter(max_yaw=45).active
    f = QualityFilter(min_eye_distance=20, max_yaw=45, max_roll=30, min_sharpness=50, min_brightness=40,
                      max_brightness=220, min_box_size=32, max_pitch=40)
    good = {"box_size": 90.0, "eye_distance": 35.0, "yaw": -44.9, "pitch": 39.0, "roll": 3.0, "sharpness": 80.0,
            "brightness": 120.0}
    assert f.reasons(good) == []
    bad = {**good, "yaw": 63.14, "eye_distance": 8.2, "roll": -31.0, "brightness": 230.0, "box_size": None}
    assert f.reasons(bad) == ["box_size unknown (min_box_size 32)", "eye_distance 8.2 < 20", "yaw 63.1 > 45",
                              "roll -31.0 < -30", "brightness 230.0 > 220"]
    for kwargs, message in [({"max_yaw": 0}, "max_yaw must be in"), ({"max_roll": 181}, "max_roll must be in"),
                            ({"min_sharpness": -1}, "min_sharpness must be >= 0"),
                            ({"min_brightness": 300}, "min_brightness must be in"),
                            ({"min_brightness": 200, "max_brightness": 100}, "min_brightness 200 > max_brightness 100"),
                            ({"min_eye_distance": float("nan")}, "finite number"),
                            ({"max_pitch": True}, "finite number")]:
        with pytest.raises(ValueError, match=message):
            QualityFilter(**kwargs)
    assert QualityFilter(max_yaw=45).to_dict()["max_yaw"] == 45.0


# ------------------------------------------------------------------------------------ through the job


def _config(src: Path, dst: Path, weights: Path, **kw) -> AlignJobConfig:
    kw.setdefault("num_workers", 1)
    kw.setdefault("batch_size", 4)
    kw.setdefault("detector", DetectorSpec(weights=str(weights), runtime="torch"))
    # the largest face at score 0.5, photos detected at their size (as the `detector` fixture): these
    # tests compare with that detector's landmarks and pick the group photo's largest face on purpose
    # (no refinement: the selected face's refined box could then be smaller than another's coarse one)
    kw.setdefault("align", job_align_defaults(select="largest", min_score=0.5, resize="cap:1024", refine_size=None))
    return AlignJobConfig(src=src, dst=dst, progress=False, ext="png", **kw)


def _manifest(dst: Path) -> dict[str, dict]:
    lines = (dst / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    return {r["src"]: r for r in map(json.loads, lines)}


def _even(img: np.ndarray, long_side: int = 512) -> np.ndarray:
    """A smaller copy (a fast test) with even sides (an exact half size)."""
    scale = min(1.0, long_side / max(img.shape[:2]))
    w, h = (round(img.shape[1] * scale) // 2 * 2, round(img.shape[0] * scale) // 2 * 2)
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def constructed_run(tmp_path_factory, ray_session, detector, mobilenet_weights):
    """One job over constructed copies of real photos: the landmarks are detected once on the
    original and moved with the photo (``--landmarks``); ``redetected/`` holds copies that the job
    detects itself; ``group/`` the six-face group photo (no filter: the largest face is chosen)."""
    root = tmp_path_factory.mktemp("quality")
    src = root / "raw"
    lines, points = [",".join(HEADER)], {}

    def put(rel: str, img: np.ndarray, pts: np.ndarray | None = None) -> None:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(src / rel), img)
        if pts is not None:
            points[rel] = pts
            lines.append(rel + "," + ",".join(repr(float(v)) for v in pts.reshape(-1)))

    for name in ("img30.jpg", "img1.jpg"):
        img = _even(cv2.imread(str(asset(f"{DEEPFACE}/{name}"))))
        h, w = img.shape[:2]
        pts = detector.detect([img])[0].numpy().landmarks[0].astype(np.float64)
        stem = name[:-4]
        put(f"{stem}/original.png", img, pts)
        put(f"{stem}/blurred.png", cv2.GaussianBlur(img, (0, 0), 2.0), pts)
        put(f"{stem}/darker.png", (img * 0.5).round().astype(np.uint8), pts)
        put(f"{stem}/mirrored.png", img[:, ::-1], pts[MIRROR] * [-1, 1] + [w - 1, 0])
        m = cv2.getRotationMatrix2D((w / 2, h / 2), -20, 1.0)  # OpenCV: positive = counter-clockwise
        put(f"{stem}/rotated.png", cv2.warpAffine(img, m, (w, h)), pts @ m[:, :2].T + m[:, 2])
        put(f"{stem}/half.png", cv2.resize(img, (w // 2, h // 2), interpolation=cv2.INTER_AREA), (pts + 0.5) / 2 - 0.5)
        if name == "img1.jpg":  # the same copies, detected by the job
            put("redetected/original.png", img)
            put("redetected/blurred.png", cv2.GaussianBlur(img, (0, 0), 2.0))
            put("redetected/half.png", cv2.resize(img, (w // 2, h // 2), interpolation=cv2.INTER_AREA))
    put("group/t1.jpg", cv2.imread(str(asset("images/group_insightface_t1.jpg"))))
    csv = root / "given.csv"
    csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    dst = root / "aligned"
    summary = run_align_job(_config(src, dst, mobilenet_weights, landmarks=csv))
    return {"root": root, "src": src, "dst": dst, "summary": summary, "records": _manifest(dst), "points": points}


def _quality(records: dict, rel: str, face: int | None = None) -> dict:
    rec = records[rel]
    assert rec["status"] == "ok", rel
    return rec["faces"][rec["selected"][0] if face is None else face]["quality"]


@pytest.mark.parametrize("stem", ["img30", "img1"])
def test_constructed_cases_change_the_measures_as_expected(constructed_run, stem):
    """Acceptance (2): blurred -> lower sharpness; mirrored -> opposite yaw (and roll); rotated
    20 degrees clockwise -> roll + 20; half size -> half the eye distance (and box size)."""
    records = constructed_run["records"]
    assert constructed_run["summary"].exit_code == EXIT_OK
    q = {kind: _quality(records, f"{stem}/{kind}.png")
         for kind in ("original", "blurred", "darker", "mirrored", "rotated", "half")}
    for kind in q:
        assert records[f"{stem}/{kind}.png"]["landmarks"] == "given"
    print(stem, json.dumps(q))
    assert q["blurred"]["sharpness"] < 0.5 * q["original"]["sharpness"]
    assert q["darker"]["brightness"] == pytest.approx(q["original"]["brightness"] / 2, abs=1.0)
    assert abs(q["mirrored"]["yaw"] + q["original"]["yaw"]) <= 3
    assert abs(q["mirrored"]["roll"] + q["original"]["roll"]) <= 3
    assert abs(q["mirrored"]["pitch"] - q["original"]["pitch"]) <= 3
    assert abs(q["rotated"]["roll"] - (q["original"]["roll"] + 20)) <= 3
    assert abs(q["rotated"]["yaw"] - q["original"]["yaw"]) <= 3
    assert q["half"]["eye_distance"] == pytest.approx(q["original"]["eye_distance"] / 2, rel=0.01)
    assert q["half"]["box_size"] == pytest.approx(q["original"]["box_size"] / 2, rel=0.01)
    if stem == "img30":  # an upright photo: the rotated copy's roll is 20 +- 3 in absolute terms
        assert abs(q["original"]["roll"]) < 3 and abs(q["rotated"]["roll"] - 20) <= 3


def test_measures_of_faces_the_job_detects_itself(constructed_run):
    """Copies detected by the job itself: sharpness and size move as they must (the pose of a
    re-detected mirrored or rotated copy also carries the detector's own landmark error, a few
    degrees: see the README)."""
    records = constructed_run["records"]
    q = {kind: _quality(records, f"redetected/{kind}.png") for kind in ("original", "blurred", "half")}
    assert all(records[f"redetected/{k}.png"]["landmarks"] == "detected" for k in q)
    assert q["blurred"]["sharpness"] < 0.5 * q["original"]["sharpness"]
    assert q["half"]["eye_distance"] == pytest.approx(q["original"]["eye_distance"] / 2, rel=0.05)
    assert q["half"]["box_size"] == pytest.approx(q["original"]["box_size"] / 2, rel=0.05)
    # the given points of img1 are this detector's on the same pixels: the same measures
    given = _quality(records, "img1/original.png")
    for key in ("eye_distance", "yaw", "pitch", "roll"):
        assert q["original"][key] == pytest.approx(given[key], abs=1.0), key


def test_filters_decide_the_selection_and_a_photo_whose_faces_all_fail_is_filtered(constructed_run,
                                                                                     mobilenet_weights):
    """Without a filter the group photo's largest face is chosen (a profile, yaw ~ -60); with
    ``max_yaw=45`` the largest of the others. A small copy fails ``min_box_size``: ``filtered``,
    the reason recorded, no output; the finished run resumes with nothing to do."""
    records, src = constructed_run["records"], constructed_run["src"]
    group = records["group/t1.jpg"]
    assert group["landmarks"] == "detected" and len(group["faces"]) == 6
    sizes = [f["quality"]["box_size"] for f in group["faces"]]
    largest = int(np.argmax(sizes))
    assert group["selected"] == [largest] and group["faces"][largest]["quality"]["yaw"] < -45

    # a quarter-size copy of img30 (its given points moved along) is smaller than every group face
    original = cv2.imread(str(src / "img30/original.png"))
    quarter = cv2.resize(original, (original.shape[1] // 4, original.shape[0] // 4), interpolation=cv2.INTER_AREA)
    pts = (constructed_run["points"]["img30/original.png"] + 0.5) / 4 - 0.5
    sub, dst = constructed_run["root"] / "sub", constructed_run["root"] / "filtered"
    (sub / "img30").mkdir(parents=True)
    (sub / "group").mkdir()
    cv2.imwrite(str(sub / "img30" / "quarter.png"), quarter)
    (sub / "group" / "t1.jpg").write_bytes((src / "group/t1.jpg").read_bytes())
    csv = constructed_run["root"] / "quarter.csv"
    csv.write_text(",".join(HEADER) + "\nimg30/quarter.png," + ",".join(repr(float(v)) for v in pts.reshape(-1))
                   + "\n", encoding="utf-8")
    limit = 100
    small = _quality(records, "img30/original.png")["box_size"] / 4
    assert small < limit < min(sizes)  # the group's faces all pass the size rule
    config = _config(sub, dst, mobilenet_weights, landmarks=csv,
                     quality_filter=QualityFilter(max_yaw=45, min_box_size=limit))
    summary = run_align_job(config)
    assert summary.exit_code == EXIT_OK
    assert summary.counts == {"ok": 1, "no_face": 0, "filtered": 1, "error": 0}
    out = _manifest(dst)
    passing = [i for i, f in enumerate(out["group/t1.jpg"]["faces"]) if abs(f["quality"]["yaw"]) <= 45]
    assert largest not in passing and out["group/t1.jpg"]["selected"] == [max(passing, key=sizes.__getitem__)]
    rec = out["img30/quarter.png"]
    assert rec["status"] == "filtered" and rec["outputs"] == [] and rec["selected"] == []
    measured = rec["faces"][0]["quality"]["box_size"]  # records keep their faces and measures
    assert measured == pytest.approx(small, rel=0.01)
    assert rec["filtered"] == f"face 0: box_size {measured:.1f} < {limit}"
    assert not (dst / "img30").exists()
    assert "filtered 1" in summary.text()
    again = run_align_job(config)
    assert (again.already_done, again.processed) == (2, 0)
