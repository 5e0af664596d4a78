"""Given landmarks (``--landmarks FILE``): the CSV reader, and the align job aligning listed photos
from the given points without detection (crops equal insightface's ``norm_crop``)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.spec import DetectorSpec
from pipeline.curation import HEADER, LandmarksFileError, box_from_landmarks, read_landmarks_csv, unpack_points
from pipeline.job import EXIT_FILES_FAILED, EXIT_OK, AlignJobConfig, JobConfigError, run_align_job
from tests.shared import asset

DEEPFACE = "verification/deepface"
HEADER_LINE = ",".join(HEADER)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _csv_line(rel: str, points: np.ndarray) -> str:
    return rel + "," + ",".join(repr(float(v)) for v in np.asarray(points, np.float64).reshape(-1))


def _manifest(dst: Path) -> dict[str, dict]:
    lines = (dst / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    return {r["src"]: r for r in map(json.loads, lines)}


def _config(src: Path, dst: Path, weights: Path, **kw) -> AlignJobConfig:
    kw.setdefault("num_workers", 1)
    kw.setdefault("batch_size", 4)
    kw.setdefault("detector", DetectorSpec(weights=str(weights), runtime="torch"))
    return AlignJobConfig(src=src, dst=dst, progress=False, **kw)


# ------------------------------------------------------------------------------------ the reader


def test_reader_keeps_the_points_exactly_and_normalises_paths(tmp_path):
    pts = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                    [70.7299, 92.2041]]) * 3.1 + 0.123456789
    text = "\n".join([HEADER_LINE, _csv_line("alice/001.jpg", pts), "", _csv_line("./bob//x y.png", pts + 1),
                      '"carol/a,b.jpg",' + _csv_line("", pts)[1:]]) + "\n"
    given = read_landmarks_csv(_write(tmp_path / "lm.csv", "\ufeff" + text))  # a BOM is tolerated
    assert given.paths == ("alice/001.jpg", "bob/x y.png", "carol/a,b.jpg") and len(given) == 3
    assert given.get("alice/001.jpg").dtype == np.float64
    np.testing.assert_array_equal(given.get("alice/001.jpg"), pts)  # repr round trip: bit-exact
    np.testing.assert_array_equal(unpack_points(given.packed("bob/x y.png")), pts + 1)
    assert given.get("nobody.jpg") is None and given.packed("nobody.jpg") == b"" and unpack_points(b"") is None
    assert given.missing(["alice/001.jpg", "zed.jpg"]) == ["bob/x y.png", "carol/a,b.jpg"]


@pytest.mark.parametrize("lines, line, message", [
    (["path,x0,y0,x1,y1,x2,y2,x3,y3,x4"], 1, "header must be exactly"),
    (["file,x0,y0,x1,y1,x2,y2,x3,y3,x4,y4"], 1, "header must be exactly"),
    ([HEADER_LINE, "a.jpg,1,2,3,4,5,6,7,8,9,10", "b.jpg,1,2,3,4,5,6,7,8,9"], 3, "expected 11 fields"),
    ([HEADER_LINE, "a.jpg,1,2,3,4,5,6,7,8,9,10,11"], 2, "expected 11 fields"),
    ([HEADER_LINE, "", "a.jpg,1,2,3,four,5,6,7,8,9,10"], 3, "y1 is not a number: 'four'"),
    ([HEADER_LINE, "a.jpg,1,2,3,4,5,6,7,8,9,"], 2, "y4 is not a number: ''"),
    ([HEADER_LINE, "a.jpg,1,2,3,4,nan,6,7,8,9,10"], 2, "x2 is not finite"),
    ([HEADER_LINE, "a.jpg,1,2,3,4,5,6,7,8,9,inf"], 2, "y4 is not finite"),
    ([HEADER_LINE, "a/b.jpg,1,2,3,4,5,6,7,8,9,10", "c.jpg,1,2,3,4,5,6,7,8,9,10", "./a/b.jpg,1,2,3,4,5,6,7,8,9,10"],
     4, "'a/b.jpg' is already listed (line 2)"),
    ([HEADER_LINE, "/abs/a.jpg,1,2,3,4,5,6,7,8,9,10"], 2, "not a relative path inside --src"),
    ([HEADER_LINE, "../up.jpg,1,2,3,4,5,6,7,8,9,10"], 2, "not a relative path inside --src"),
    ([HEADER_LINE, ",1,2,3,4,5,6,7,8,9,10"], 2, "not a relative path inside --src"),
])
def test_a_malformed_line_is_an_error_naming_the_file_and_line(tmp_path, lines, line, message):
    path = _write(tmp_path / "given.csv", "\n".join(lines) + "\n")
    with pytest.raises(LandmarksFileError) as err:
        read_landmarks_csv(path)
    assert str(err.value).startswith(f"{path}, line {line}: "), str(err.value)
    assert message in str(err.value)


def test_an_empty_or_missing_file_is_an_error(tmp_path):
    with pytest.raises(LandmarksFileError, match="empty; expected the header"):
        read_landmarks_csv(_write(tmp_path / "empty.csv", "\n\n"))
    with pytest.raises(LandmarksFileError, match="cannot read landmarks file .*nope.csv"):
        read_landmarks_csv(tmp_path / "nope.csv")


def test_the_box_of_given_points_is_the_square_their_arcface_crop_covers():
    from pipeline.align import ARCFACE_TEMPLATE

    tpl = ARCFACE_TEMPLATE.astype(np.float64)
    np.testing.assert_allclose(box_from_landmarks(tpl[None]), [[0, 0, 112, 112]], atol=1e-4)
    np.testing.assert_allclose(box_from_landmarks(tpl[None] * 2 + [10, 20]), [[10, 20, 234, 244]], atol=1e-4)
    # a rotation about the crop centre keeps the (axis-aligned, rotation-free) square
    c, s = np.cos(0.3), np.sin(0.3)
    rotated = (tpl - 56) @ np.array([[c, s], [-s, c]]) + 56
    np.testing.assert_allclose(box_from_landmarks(rotated[None]), [[0, 0, 112, 112]], atol=1e-4)


# ------------------------------------------------------------------------------------ through the job


@pytest.fixture(scope="module")
def given_tree(tmp_path_factory, detector):
    """``src`` with two listed photos (points = the reference detection moved by a few pixels, so
    that using them is visible), one unlisted photo, and a CSV that also lists a missing file."""
    root = tmp_path_factory.mktemp("given")
    src = root / "raw"
    photos = {"alice/one.jpg": "img1.jpg", "alice/two.png": "img2.jpg", "bob/three.jpg": "img12.jpg"}
    points = {}
    for rel, name in photos.items():
        img = cv2.imread(str(asset(f"{DEEPFACE}/{name}")))
        scale = 800 / max(img.shape[:2])
        if scale < 1:  # small photos: a fast test; big enough for the JPEG draft path (long:640 below)
            img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(src / rel), img)
        dets = detector.detect([img])[0].numpy()
        points[rel] = dets.landmarks[0].astype(np.float64) + np.array([[3.25, -2.5]] * 5) * (rel != "bob/three.jpg")
    listed = ["alice/one.jpg", "alice/two.png"]
    (src / "bob" / "outside.jpg").write_bytes((src / "bob" / "three.jpg").read_bytes())
    csv_all = _write(root / "all.csv", "\n".join([HEADER_LINE, *(_csv_line(r, points[r]) for r in listed),
                                                  _csv_line("bob/missing.jpg", points["alice/one.jpg"]),
                                                  _csv_line("bob/outside.jpg", points["alice/one.jpg"] - 5000)]) + "\n")
    csv_listed = _write(root / "listed.csv",
                        "\n".join([HEADER_LINE, *(_csv_line(r, points[r]) for r in listed)]) + "\n")
    return {"root": root, "src": src, "points": points, "all": csv_all, "listed": csv_listed}


def test_given_points_are_aligned_without_detection_and_equal_norm_crop(given_tree, ray_session, mobilenet_weights):
    from insightface.utils.face_align import norm_crop  # the reference implementation

    src, dst = given_tree["src"], given_tree["root"] / "aligned"
    # JPEG drafts on (the default) and a detector input that would draft: listed photos are still
    # decoded at full size, so that their crops are exact
    summary = run_align_job(_config(src, dst, mobilenet_weights, ext="png", landmarks=given_tree["all"],
                                    align=_align(resize="long:320")))
    assert summary.exit_code == EXIT_FILES_FAILED  # the listed file that does not exist
    assert summary.counts == {"ok": 3, "no_face": 0, "filtered": 0, "error": 2}
    records = _manifest(dst)
    assert sorted(records) == ["alice/one.jpg", "alice/two.png", "bob/missing.jpg", "bob/outside.jpg", "bob/three.jpg"]
    for rel in ("alice/one.jpg", "alice/two.png"):
        rec, pts = records[rel], given_tree["points"][rel]
        assert rec["status"] == "ok" and rec["landmarks"] == "given" and rec["selected"] == [0]
        assert len(rec["faces"]) == 1 and rec["faces"][0]["score"] is None
        np.testing.assert_allclose(rec["faces"][0]["landmarks"], pts, atol=0.006)
        np.testing.assert_allclose(rec["faces"][0]["box"], box_from_landmarks(pts[None])[0], atol=0.006)
        photo = cv2.imread(str(src / rel))
        assert (rec["height"], rec["width"]) == photo.shape[:2]
        crop = cv2.imread(str(dst / rec["outputs"][0]))
        assert np.array_equal(crop, norm_crop(photo, pts)), rel  # pixel for pixel
        assert not np.array_equal(crop, norm_crop(photo, pts - [3.25, -2.5]))  # not the detection's crop
        assert set(rec["faces"][0]["quality"]) >= {"eye_distance", "yaw", "sharpness"}
    three = records["bob/three.jpg"]
    assert three["status"] == "ok" and three["landmarks"] == "detected" and three["faces"][0]["score"] > 0.9
    missing = records["bob/missing.jpg"]
    assert missing["status"] == "error" and "No such file" in missing["error"] and missing["outputs"] == []
    assert "landmarks" not in missing  # never reached alignment
    outside = records["bob/outside.jpg"]
    assert outside["status"] == "error" and "given landmarks lie outside the" in outside["error"]


def test_the_predictor_takes_given_rows_from_file_bytes_and_from_decoded_pixels(given_tree, mobilenet_weights):
    """The two transports of :func:`read_images` (GPU actors get pixels decoded by the read
    tasks), without Ray: the ``landmarks`` column travels with the chunk's names."""
    from pipeline.config import AlignConfig
    from pipeline.curation import read_landmarks_csv
    from pipeline.job import FaceCropPredictor, read_images

    given = read_landmarks_csv(given_tree["listed"])
    names = ["alice/one.jpg", "bob/three.jpg"]
    chunk = {"src": np.array([[n.encode() for n in names]], dtype=object),
             "stem": np.array([[n.encode() for n in names]], dtype=object),
             "landmarks": np.array([[given.packed(n) for n in names]], dtype=object)}
    predictor = FaceCropPredictor(detector=DetectorSpec(weights=str(mobilenet_weights), runtime="torch", threads=1),
                                  align=AlignConfig(on_error="record"), draft=True)
    tables = []
    for decode in (False, True):
        table = read_images(chunk, src_root=str(given_tree["src"]), decode=decode, max_pixels=None,
                            exif_orientation=True)
        assert table.column("landmarks").to_pylist() == [given.packed(n) for n in names]
        tables.append(predictor({c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}))
    assert tables[0].equals(tables[1])
    assert tables[0].column("landmarks").to_pylist() == ["given", "detected"]
    assert tables[0].column("status").to_pylist() == ["ok", "ok"]


def test_landmarks_only_skips_unlisted_photos_and_a_finished_run_resumes_with_nothing_to_do(
        given_tree, ray_session, mobilenet_weights):
    src, dst = given_tree["src"], given_tree["root"] / "only"
    config = _config(src, dst, mobilenet_weights, ext="png", landmarks=given_tree["listed"], landmarks_only=True)
    summary = run_align_job(config)
    assert summary.exit_code == EXIT_OK and summary.inputs == 2
    assert summary.counts == {"ok": 2, "no_face": 0, "filtered": 0, "error": 0}
    records = _manifest(dst)
    assert sorted(records) == ["alice/one.jpg", "alice/two.png"]  # bob/three.jpg: skipped, no record
    assert all(r["landmarks"] == "given" for r in records.values())
    assert not (dst / "bob").exists()
    job = json.loads((dst / "job.json").read_text())["settings"]
    assert job["landmarks_only"] is True and len(job["landmarks"]) == 64  # the file's sha256

    again = run_align_job(config)
    assert (again.already_done, again.processed) == (2, 0)
    with pytest.raises(JobConfigError, match="different settings.*landmarks"):  # another file: refused
        run_align_job(_config(src, dst, mobilenet_weights, ext="png", landmarks=given_tree["all"],
                              landmarks_only=True))


def test_a_bad_landmarks_file_stops_the_job_before_anything_is_written(tmp_path, mobilenet_weights):
    src = tmp_path / "raw"
    src.mkdir()
    bad = _write(tmp_path / "bad.csv", HEADER_LINE + "\na.jpg,1,2,3\n")
    with pytest.raises(JobConfigError, match=r"bad.csv, line 2: expected 11 fields"):
        run_align_job(_config(src, tmp_path / "out", mobilenet_weights, landmarks=bad))
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="landmarks_only needs a landmarks file"):
        _config(src, tmp_path / "out", mobilenet_weights, landmarks_only=True)


def _align(**kw):
    from pipeline.config import AlignConfig

    return AlignConfig(on_error="record", **kw)
