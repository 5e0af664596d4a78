"""Given landmarks (``--landmarks FILE``): the CSV reader, and the align job aligning listed photos
from the given points without detection (crops equal insightface's ``norm_crop``)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.spec import DetectorSpec
from pipeline.curation import HEADER, LandmarksFileError, box_from_landmarks, read_landmarks_csv, unpack_points
from tests.shared import asset

DEEPFACE = "verification/deepface"
HEADER_LINE = ",".join(HEADER)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _csv_line(rel: str, points: np.ndarray) -> str:
    return rel + "," + ",".join(repr(float(v)) for v in np.asarray(points, np.float64).reshape(-1))


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
