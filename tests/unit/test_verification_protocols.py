"""Protocol readers: the deepface pairs CSV and the IJB-C meta layout, including malformed files."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from pipeline.verification.protocols import ProtocolError, read_ijb, read_pairs_csv
from tests.shared import asset

DEEPFACE = "verification/deepface"


def test_deepface_pairs_csv():
    csv_path = asset(f"{DEEPFACE}/master.csv")
    proto = read_pairs_csv(csv_path)
    with csv_path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert proto.pairs.shape == (300, 2)
    assert int(proto.labels.sum()) == 38 and int((~proto.labels).sum()) == 262
    files = {r["file_x"] for r in rows} | {r["file_y"] for r in rows}
    assert set(proto.images) == files
    for i, row in enumerate(rows):  # template ids map back to the right file names, in order
        assert proto.images[proto.pairs[i, 0]] == row["file_x"]
        assert proto.images[proto.pairs[i, 1]] == row["file_y"]
        assert proto.labels[i] == (row["Decision"] == "Yes")
    assert all(proto.image_path(i).is_file() for i in range(len(proto.images)))
    assert proto.landmarks is None and proto.image_root == csv_path.parent


def test_pairs_csv_errors_name_the_line(tmp_path):
    bad = tmp_path / "pairs.csv"
    bad.write_text("file_x,file_y,Decision\na.jpg,b.jpg,Yes\n\na.jpg,c.jpg,Maybe\n")
    with pytest.raises(ProtocolError, match=r"pairs\.csv:4: Decision must be Yes or No, got 'Maybe'"):
        read_pairs_csv(bad)
    bad.write_text("left,right,Decision\na.jpg,b.jpg,Yes\n")
    with pytest.raises(ProtocolError, match=r"pairs\.csv:1: header lacks column\(s\) \['file_x', 'file_y'\]"):
        read_pairs_csv(bad)
    bad.write_text("file_x,file_y,Decision\na.jpg,,No\n")
    with pytest.raises(ProtocolError, match=r":2: empty file name"):
        read_pairs_csv(bad)


def write_ijb(root: Path, *, tid_mid: str, points: str, pairs: str, target: str = "ijbc") -> Path:
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "loose_crop").mkdir(exist_ok=True)
    (root / "meta" / f"{target}_face_tid_mid.txt").write_text(tid_mid)
    (root / "meta" / f"{target}_name_5pts_score.txt").write_text(points)
    (root / "meta" / f"{target}_template_pair_label.txt").write_text(pairs)
    return root


def lmk_line(name, offset=0.0, score=0.9):
    values = " ".join(f"{v + offset:.2f}" for v in (38, 51, 73, 51, 56, 71, 41, 92, 70, 92))
    return f"{name} {values} {score}\n"


GOOD_TID = "1.jpg 5 100\n2.jpg 5 100\n3.jpg 5 101\n4.jpg 9 200\n5.jpg 11 300\n"
GOOD_PTS = "".join(lmk_line(f"{i}.jpg", i, 0.5 + i / 10) for i in (5, 3, 1, 2, 4))  # another order than tid_mid
GOOD_PAIRS = "5 9 1\n5 11 0\n\n9 11 0\n"


def test_ijb_layout(tmp_path):
    proto = read_ijb(write_ijb(tmp_path, tid_mid=GOOD_TID, points=GOOD_PTS, pairs=GOOD_PAIRS))
    assert proto.images == ("1.jpg", "2.jpg", "3.jpg", "4.jpg", "5.jpg")
    assert proto.face_template.tolist() == [5, 5, 5, 9, 11]
    assert proto.face_media.tolist() == [100, 100, 101, 200, 300]
    assert proto.pairs.tolist() == [[5, 9], [5, 11], [9, 11]] and proto.labels.tolist() == [True, False, False]
    # joined by name, not by line position
    assert np.allclose(proto.landmarks[2], np.array([38, 51, 73, 51, 56, 71, 41, 92, 70, 92]).reshape(5, 2) + 3)
    assert np.allclose(proto.face_scores, [0.6, 0.7, 0.8, 0.9, 1.0])
    assert proto.image_path(0) == tmp_path / "loose_crop" / "1.jpg"
    assert proto.summary()["templates"] == 3


@pytest.mark.parametrize(
    "which,text,match",
    [
        ("tid_mid", GOOD_TID.replace("3.jpg 5 101", "3.jpg 5"), r"ijbc_face_tid_mid\.txt:3: expected 3 fields"),
        ("tid_mid", GOOD_TID.replace("4.jpg 9 200", "4.jpg nine 200"),
         r"ijbc_face_tid_mid\.txt:4: template id must be an integer"),
        ("tid_mid", GOOD_TID + "6.jpg 11 301\n", r"ijbc_face_tid_mid\.txt:6: image '6.jpg' has no landmarks"),
        ("points", GOOD_PTS.replace(" 0.8\n", "\n"), r"ijbc_name_5pts_score\.txt:2: expected 12 fields"),
        ("points", GOOD_PTS.replace("39.00", "3x.00"), r"ijbc_name_5pts_score\.txt:3: landmark/score value '3x\.00'"),
        ("points", GOOD_PTS + lmk_line("5.jpg", 1.0),
         r"ijbc_name_5pts_score\.txt:6: image '5\.jpg' already listed .* line 1"),
        ("pairs", GOOD_PAIRS.replace("9 11 0", "9 11 2"), r"ijbc_template_pair_label\.txt:4: label must be 0 or 1"),
        ("pairs", GOOD_PAIRS.replace("5 11 0", "5 11"), r"ijbc_template_pair_label\.txt:2: expected 3 fields"),
        ("pairs", GOOD_PAIRS.replace("9 11 0", "9 12 0"), r"ijbc_template_pair_label\.txt:4: template 12 is not in"),
        ("pairs", GOOD_PAIRS.replace("5 9 1", "5 9.5 1"),
         r"ijbc_template_pair_label\.txt:1: template_2 must be an integer"),
    ],
)
def test_ijb_malformed_lines(tmp_path, which, text, match):
    files = {"tid_mid": GOOD_TID, "points": GOOD_PTS, "pairs": GOOD_PAIRS}
    files[which] = text
    write_ijb(tmp_path, tid_mid=files["tid_mid"], points=files["points"], pairs=files["pairs"])
    with pytest.raises(ProtocolError, match=match):
        read_ijb(tmp_path)


def test_ijb_missing_meta_file(tmp_path):
    write_ijb(tmp_path, tid_mid=GOOD_TID, points=GOOD_PTS, pairs=GOOD_PAIRS)
    (tmp_path / "meta" / "ijbc_template_pair_label.txt").unlink()
    with pytest.raises(FileNotFoundError, match="ijbc_template_pair_label.txt"):
        read_ijb(tmp_path)
