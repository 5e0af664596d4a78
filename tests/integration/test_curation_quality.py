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
    QualityFilter,
)
from pipeline.job import EXIT_OK, AlignJobConfig, run_align_job
from pipeline.job.config import job_align_defaults
from tests.shared import asset
from tests.unit.test_curation_quality import DEEPFACE, MIRROR, _even

# ------------------------------------------------------------------------------------ through the job


def _config(src: Path, dst: Path, weights: Path, **kw) -> AlignJobConfig:
    kw.setdefault("num_workers", 1)
    kw.setdefault("batch_size", 4)
    kw.setdefault("detector", DetectorSpec(weights=str(weights), runtime="torch"))
    # the largest face at score 0.5, photos detected at their size (as the `detector` fixture): these
    # tests compare with that detector's landmarks and pick the group photo's largest face on purpose
    # (no refinement: the selected face's refined box could then be smaller than another's coarse one;
    # no voting: the group photo's two largest faces are 125.2 and 125.3 px, voting makes them a tie)
    kw.setdefault("align", job_align_defaults(select="largest", min_score=0.5, resize="cap:1024", refine_size=None,
                                              vote_iou=None))
    return AlignJobConfig(src=src, dst=dst, progress=False, ext="png", **kw)


def _manifest(dst: Path) -> dict[str, dict]:
    lines = (dst / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    return {r["src"]: r for r in map(json.loads, lines)}


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
