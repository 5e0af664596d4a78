"""Given landmarks (``--landmarks FILE``): the CSV reader, and the align job aligning listed photos
from the given points without detection (crops equal insightface's ``norm_crop``)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.spec import DetectorSpec
from pipeline.curation import box_from_landmarks
from pipeline.job import EXIT_FILES_FAILED, EXIT_OK, AlignJobConfig, JobConfigError, run_align_job
from tests.unit.test_curation_landmarks import HEADER_LINE, _write


def _manifest(dst: Path) -> dict[str, dict]:
    lines = (dst / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    return {r["src"]: r for r in map(json.loads, lines)}


def _config(src: Path, dst: Path, weights: Path, **kw) -> AlignJobConfig:
    kw.setdefault("num_workers", 1)
    kw.setdefault("batch_size", 4)
    kw.setdefault("detector", DetectorSpec(weights=str(weights), runtime="torch"))
    return AlignJobConfig(src=src, dst=dst, progress=False, **kw)


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
