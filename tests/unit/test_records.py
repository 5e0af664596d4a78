"""The manifest record (:mod:`pipeline.records`): exact round trips of the lines the job writes
(``tests/data/manifest_lines.jsonl``: lines written by ``write_crops`` before the record type
existed, with and without the identity pass, a name that is not UTF-8, given landmarks, each
status), older manifests without the newer keys, clear errors, the typed readers of the manifest,
and the one file hash. No Ray."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from common.fsio import sha256_file
from pipeline.job import stages
from pipeline.manifest import ManifestWriter, iter_manifest, iter_records, outputs_complete
from pipeline.records import (
    DONE_STATUSES,
    STATUS_ERROR,
    STATUSES,
    FaceRecord,
    PhotoRecord,
    RecordError,
)
from pipeline.stage import FaceChoice
from pipeline.writers import FolderCropWriter, OutputLayout

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "manifest_lines.jsonl"


def _golden_lines() -> list[str]:
    lines = GOLDEN.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 12, "tests/data/manifest_lines.jsonl: 6 plain + 6 identity-pass lines"
    return lines


def test_every_line_the_job_wrote_round_trips_exactly():
    lines = _golden_lines()
    for line in lines:
        record = PhotoRecord.from_json(line)
        assert record.to_json() == line
        assert record.to_dict() == json.loads(line)  # same keys, same order, same values
        assert PhotoRecord.from_json(record.to_json()) == record
    first, no_utf8, given, no_face, error, filtered = (PhotoRecord.from_json(x) for x in lines[:6])
    assert first.status == "ok" and first.outputs == ("a/1_0.jpg",) and first.selected == (0,)
    assert first.faces[0].box == (10.13, 20.5, 90.0, 120.33) and first.faces[0].score == 0.99871
    assert first.faces[0].landmarks[1] == (6.67, 10.01) and first.faces[0].quality["yaw"] == -3.5
    assert (first.height, first.width, first.landmarks, first.has_identity) == (480, 640, "detected", False)
    assert no_utf8.src == os.fsdecode(b"b/\xff\xfe.jpg") and "\\udcff" in lines[1]  # kept as JSON escapes
    assert no_utf8.selected_faces == (no_utf8.faces[1], no_utf8.faces[0])
    assert given.faces[0].score is None and given.landmarks == "given" and "café" in lines[2]
    assert (no_face.status, no_face.faces, no_face.done) == ("no_face", (), True)
    assert (error.status, error.done, error.landmarks) == ("error", False, "")
    assert error.error == "cannot read file (Permission denied)" and "landmarks" not in json.loads(lines[4])
    assert filtered.filtered.startswith("face 0: yaw 60.0 > 45") and filtered.done
    scored = [PhotoRecord.from_json(x) for x in lines[6:]]
    assert [r.has_identity for r in scored] == [True] * 6
    assert (scored[0].identity, scored[0].identity_distance, scored[0].identity_outlier, scored[0].embedding_row) \
        == ("a", 0.21345, False, 3)
    assert scored[1].identity_outlier is True and scored[3].identity is None  # a photo directly in src
    assert list(json.loads(lines[9]))[-4:] == ["identity", "identity_distance", "identity_outlier", "embedding_row"]


def _batch(identity: bool) -> dict[str, np.ndarray]:
    """The predictor rows that gave the golden lines (``FaceCropPredictor``'s columns)."""

    boxes = np.array([[10.126, 20.5, 90.0, 120.333], [5, 6, 30, 40]], np.float32)
    scores = np.array([0.99871234, 0.61], np.float32)
    lms = np.arange(20, dtype=np.float32).reshape(2, 5, 2) * 3.337
    quality = [{"box_size": 99.5, "eye_distance": 31.25, "yaw": -3.5, "pitch": 1.0, "roll": 0.25,
                "sharpness": 123.4, "brightness": 101.0},
               {"box_size": 20.0, "eye_distance": 8.0, "yaw": 60.0, "pitch": -1.0, "roll": 0.0, "sharpness": 5.0,
                "brightness": 50.0}]
    faces = json.dumps(stages._faces_json(FaceChoice(shape=(480, 640), boxes=boxes, scores=scores, landmarks=lms,
                                                     quality=quality)))
    given = json.dumps(stages._faces_json(FaceChoice(shape=(300, 200), boxes=boxes[:1], scores=None,
                                                     landmarks=lms[:1].astype(np.float64), quality=quality[:1])))
    src = [b"a/1.jpg", b"b/\xff\xfe.jpg", "café/中.png".encode(), b"top.jpg", b"e/err.jpg", b"f/g.jpg"]
    counts = (1, 2, 1, 0, 0, 0)
    batch = {
        "src": np.array(src, object), "stem": np.array([os.path.splitext(s)[0] for s in src], object),
        "status": np.array(["ok", "ok", "ok", "no_face", "error", "filtered"], object),
        "error": np.array(["", "", "", "", "cannot read file (Permission denied)", ""], object),
        "faces": np.array([faces, faces, given, "[]", "[]", faces], object),
        "selected": np.array(["[0]", "[1, 0]", "[0]", "[]", "[]", "[]"], object),
        "height": np.array([480, 200, 300, 10, 0, 50]), "width": np.array([640, 300, 200, 10, 0, 60]),
        "num_crops": np.array(counts),
        "crops": np.array([np.zeros((k, 112, 112, 3), np.uint8).tobytes() for k in counts], object),
        "landmarks": np.array(["detected", "detected", "given", "detected", "", "detected"], object),
        "filtered": np.array(["", "", "", "", "", "face 0: yaw 60.0 > 45; face 1: eye_distance 8.0 < 20"], object),
    }
    if identity:
        infos = [("a", 0.21345, False, 3), ("b", 0.9, True, 0), ("café", None, False, None), (None, None, False, None),
                 ("e", None, False, None), ("f", None, False, None)]
        batch["identity"] = np.array([json.dumps(dict(zip(
            ("identity", "identity_distance", "identity_outlier", "embedding_row"), info))) for info in infos], object)
    return batch


@pytest.mark.parametrize("identity", [False, True])
def test_write_crops_writes_the_same_lines_as_before_the_record_type(tmp_path, identity):
    writer = FolderCropWriter(dst=str(tmp_path), layout=OutputLayout(ext="jpg", per_face=True))
    table = stages.write_crops(_batch(identity), writer=writer, crop_shape=(112, 112))
    expected = _golden_lines()[6:] if identity else _golden_lines()[:6]
    assert table.column("record").to_pylist() == expected
    assert table.column("status").to_pylist() == ["ok", "ok", "ok", "no_face", "error", "filtered"]
    assert table.column("num_outputs").to_pylist() == [1, 2, 1, 0, 0, 0]
    assert (tmp_path / os.fsdecode(b"b/\xff\xfe_1.jpg")).is_file()


def test_manifests_of_older_runs_still_read():
    old = {"src": "a/1.jpg", "status": "ok", "outputs": ["a/1.jpg"],
           "faces": [{"box": [50, 40, 150, 160], "score": 0.98, "landmarks": [[80, 90]] * 5}], "selected": [0]}
    record = PhotoRecord.from_dict(old)
    assert record.faces[0].quality is None and record.faces[0].box == (50, 40, 150, 160)  # ints stay ints
    assert (record.error, record.landmarks, record.filtered, record.height,
            record.has_identity) == ("", "", "", 0, False)
    assert record.to_dict() == {**old, "error": "", "height": 0, "width": 0}
    assert PhotoRecord.from_dict({"src": "x.jpg"}).status == STATUS_ERROR  # no status: not trusted
    given = FaceRecord.from_json({"box": None, "score": None, "landmarks": [[1, 2]] * 5})
    assert given.box is None and given.side is None and given.to_json()["box"] is None
    assert FaceRecord.from_json({"box": [0, 0, 30, 10], "score": 1, "landmarks": []}).side == 10


@pytest.mark.parametrize("record, match", [
    ([1, 2], "must be a JSON object"),
    ({"src": "", "status": "ok"}, "non-empty string"),
    ({"src": "a.jpg", "status": "ok", "outputs": "a.jpg"}, "must be lists"),
    ({"src": "a.jpg", "status": "ok", "selected": [True]}, "selected must be integers"),
    ({"src": "a.jpg", "status": "ok", "faces": [{"box": [1, 2, 3], "landmarks": []}]}, r"box must be 4 numbers"),
    ({"src": "a.jpg", "status": "ok", "faces": [{"landmarks": [[1, "x"]]}]}, r"landmark must be 2 numbers"),
    ({"src": "a.jpg", "status": "ok", "faces": [{"score": "high", "landmarks": []}]}, "score must be a number"),
    ({"src": "a.jpg", "status": "ok", "height": 1.5}, "height must be an integer"),
    ({"src": "a.jpg", "status": "ok", "identity_distance": "far"}, "identity_distance must be a number"),
])
def test_a_malformed_record_is_one_clear_error(record, match):
    with pytest.raises(RecordError, match=match):
        PhotoRecord.from_dict(record)
    with pytest.raises(RecordError, match="not a JSON line"):
        PhotoRecord.from_json('{"src": "a.jpg", ')


def test_statuses_and_the_typed_manifest_readers(tmp_path):
    assert STATUSES == ("ok", "no_face", "filtered", "error") and DONE_STATUSES == {"ok", "no_face", "filtered"}
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1_0.jpg").write_bytes(b"x")
    lines = _golden_lines()
    path = tmp_path / "manifest.jsonl"
    with ManifestWriter(path) as manifest:
        manifest.append(PhotoRecord.from_json(lines[0]))  # a record is written as its line
        manifest.append_many([lines[3], '{"src": "bad.jpg", "status": "ok", "outputs": "x"}', "not json"])
    assert path.read_text(encoding="utf-8").splitlines()[0] == lines[0]
    records = list(iter_records(path))
    assert [r.src for r in records] == ["a/1.jpg", "top.jpg", "bad.jpg"]
    assert records[2].status == STATUS_ERROR and "unreadable manifest record" in records[2].error  # redone
    assert [r["src"] for r in iter_manifest(path)] == ["a/1.jpg", "top.jpg", "bad.jpg"]  # raw objects
    assert outputs_complete(tmp_path, records[0]) and outputs_complete(tmp_path, json.loads(lines[0]))
    assert not outputs_complete(tmp_path, dataclasses.replace(records[0], outputs=("a/missing.jpg",)))


def test_sha256_file_is_the_file_hash(tmp_path):
    path = tmp_path / "blob.bin"
    data = os.urandom(3 * (1 << 20) + 17)  # several blocks and a tail
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_file(path, chunk=1000) == hashlib.sha256(data).hexdigest()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert sha256_file(empty) == hashlib.sha256(b"").hexdigest()
    with pytest.raises(OSError):
        sha256_file(tmp_path / "missing")
