"""The align-dataset job: outputs, manifest, resume after SIGKILL, bad files, RecordIO."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.spec import DetectorSpec
from pipeline.job import (
    EXIT_FILES_FAILED,
    EXIT_OK,
    AlignJobConfig,
    JobConfigError,
    list_inputs,
    run_align_job,
)
from pipeline.job.config import job_align_defaults
from pipeline.recordio import ArcFaceRecordDataset
from pipeline.writers import (
    TEMP_MARKER,
)
from tests.shared import asset
from tests.unit.test_align_job import DEEPFACE, _imread

REPO = Path(__file__).resolve().parents[2]
META_FILES = {"manifest.jsonl", "summary.json", "job.json", "identities.tsv", "train.rec", "train.idx", "property",
              ".align-job.lock", "report.html"}


def _output_files(dst: Path) -> set[str]:  # crops only: not the report's report_files/
    return {p.relative_to(dst).as_posix() for p in dst.rglob("*")
            if p.is_file() and p.relative_to(dst).parts[0] != "report_files"} - META_FILES


def _manifest_lines(dst: Path) -> list[dict]:
    return [json.loads(line) for line in (dst / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]


def _config(src: Path, dst: Path, weights: Path, **kw) -> AlignJobConfig:
    kw.setdefault("num_workers", 2)
    kw.setdefault("batch_size", 4)
    kw.setdefault("detector", DetectorSpec(weights=str(weights), runtime="torch"))
    return AlignJobConfig(src=src, dst=dst, progress=False, **kw)


def test_the_command_line_and_the_job_driver_do_not_load_torch(tmp_path, mobilenet_weights):
    """Only the detector actors need torch: ``--help``, configuration, listing and the dry run
    stay light (torch takes seconds and hundreds of MB to import)."""
    src = tmp_path / "raw"
    (src / "a").mkdir(parents=True)
    (src / "a" / "x.jpg").write_bytes(b"x")
    code = textwrap.dedent("""
        import runpy, sys
        src, dst, weights = sys.argv[1:4]
        sys.argv = ["align_dataset.py", "--src", src, "--dst", dst, "--dry-run"]
        try:
            runpy.run_path("jobs/align_dataset.py", run_name="__main__")
        except SystemExit as e:
            assert e.code == 0, e.code
        from detector.hub import resolve_weights
        resolve_weights(weights)
        import detector, pipeline.config, pipeline.job
        assert "torch" not in sys.modules, "torch was imported"
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code, str(src), str(tmp_path / "out"), str(mobilenet_weights)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok") and "1 input(s)" in out.stdout


def test_dry_run_writes_nothing_and_mismatched_settings_are_refused(tmp_path, mobilenet_weights):
    src, dst = tmp_path / "raw", tmp_path / "aligned"
    (src / "p").mkdir(parents=True)
    shutil.copy(asset("images/aligned112_insightface_tom_hanks.png"), src / "p" / "a.png")
    summary = run_align_job(_config(src, dst, mobilenet_weights, dry_run=True))
    assert (summary.inputs, summary.processed, summary.dry_run) == (1, 0, True)
    assert not dst.exists()
    dst.mkdir()
    previous = _config(src, dst, mobilenet_weights).fingerprint()
    (dst / "job.json").write_text(json.dumps({"settings": {**previous, "image_size": 224}}))
    with pytest.raises(JobConfigError, match="image_size: 224 -> 112"):
        run_align_job(_config(src, dst, mobilenet_weights))
    from pipeline.job import LOCK_NAME, exclusive

    with exclusive(dst / LOCK_NAME):  # a second job on the same dst is refused
        with pytest.raises(JobConfigError, match="another align job"):
            run_align_job(_config(src, dst, mobilenet_weights, overwrite=True))


# ------------------------------------------------------------------------------------ Ray


def _deepface_and_golden_tree(root: Path) -> Path:
    """The 62 deepface photos plus the golden photos (two group photos, four WIDER val photos)."""
    src = root / "src"
    shutil.copytree(asset(DEEPFACE), src / "deepface")
    for rel in ("images/crowd_biubug6_curve_test.jpg", "images/group_insightface_t1.jpg"):
        (src / "golden").mkdir(parents=True, exist_ok=True)
        shutil.copy(asset(rel), src / "golden" / Path(rel).name)
    for photo in sorted(asset("widerface/val/images").rglob("*.jpg")):
        shutil.copy(photo, src / "golden" / photo.name)
    return src


@pytest.mark.slow
@pytest.mark.parametrize("exact", [True, False], ids=["exact", "default"])
def test_job_crops_and_manifest_equal_the_face_aligner(tmp_path, ray_session, mobilenet_weights, exact):
    """One alignment path: the job's crops and manifest faces are :class:`FaceAligner`'s with the
    same settings, photo by photo (``exact``: full decodes; default: JPEG drafts, coarse-to-fine)."""
    from pipeline.stage import FaceAligner, PhotoInput

    src = _deepface_and_golden_tree(tmp_path)
    photos = list_inputs(src)
    assert len(photos) == 62 + 6  # master.csv is not a photo
    dst = tmp_path / "aligned"
    summary = run_align_job(_config(src, dst, mobilenet_weights, ext="png", batch_size=8, exact=exact))
    assert summary.exit_code == EXIT_OK
    assert summary.counts["ok"] == len(photos) and summary.time_to_first_crop_s > 0
    records = {r["src"]: r for r in _manifest_lines(dst)}
    assert sorted(records) == photos

    aligner = FaceAligner(detector=DetectorSpec(weights=str(mobilenet_weights), runtime="torch").build(),
                          config=job_align_defaults(), draft=not exact)
    choices = aligner.run([PhotoInput(data=(src / rel).read_bytes(), source=rel) for rel in photos])
    refined = 0
    for rel, choice in zip(photos, choices):
        rec = records[rel]
        assert rec["status"] == "ok" and rec["error"] == "" and rec["selected"] == choice.selected, rel
        assert len(rec["faces"]) == len(choice.boxes)
        for face, box, lm in zip(rec["faces"], choice.boxes, choice.landmarks):
            np.testing.assert_allclose(face["box"], box, atol=0.02)  # 2 decimals + float noise
            np.testing.assert_allclose(face["landmarks"], lm, atol=0.02)
        for out, crop in zip(rec["outputs"], choice.crops):  # png; the detector's float noise (threads) moves
            diff = np.abs(_imread(dst / out).astype(int) - crop.astype(int))  # landmarks by ~1e-3 px
            assert diff.max() <= 3 and diff.mean() < 0.1, rel
        refined += int(choice.refined.sum())
    assert refined > 0  # the golden group photos' selected faces were refined


def _bad_tree(root: Path) -> dict[str, str]:
    """Photos and broken files; returns relative path -> expected status."""
    good = asset("images/group_insightface_t1.jpg").read_bytes()
    small = cv2.imencode(".jpg", cv2.resize(cv2.imread(str(asset(f"{DEEPFACE}/img1.jpg"))), (345, 467)))[1]
    files = {
        "group/t1.jpg": (good, "ok"),
        "group/ünï cødé photo.jpg": (small.tobytes(), "ok"),
        "person a/img 1.jpg": (small.tobytes(), "ok"),
        "person a/img 1.png": (cv2.imencode(".png", cv2.imread(str(asset(f"{DEEPFACE}/img2.jpg"))))[1].tobytes(), "ok"),
        "person a/zero.jpg": (b"", "error"),
        "person a/truncated.jpg": (good[: len(good) // 2], "error"),
        "person a/text.jpg": (b"this is not an image\n", "error"),
        "root_level.jpg": (small.tobytes(), "ok"),
        os.fsdecode(b"person a/latin1 \xe9t\xe9.jpg"): (small.tobytes(), "ok"),  # not UTF-8
    }
    for rel, (data, _) in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    import skimage.data

    (root / "no_face").mkdir()
    cv2.imwrite(str(root / "no_face" / "cat.jpg"), cv2.cvtColor(skimage.data.chelsea(), cv2.COLOR_RGB2BGR))
    os.symlink(root / "does-not-exist.jpg", root / "person a" / "dangling.jpg")  # unreadable (we run as root)
    os.mkfifo(root / "person a" / "fifo.jpg")  # reading it would block forever
    (root / "empty" / "nested").mkdir(parents=True)
    (root / "group" / "notes.txt").write_text("not listed")
    expected = {rel: status for rel, (_, status) in files.items()}
    expected.update({"no_face/cat.jpg": "no_face", "person a/dangling.jpg": "error", "person a/fifo.jpg": "error"})
    return expected


@pytest.fixture(scope="module")
def bad_tree_run(tmp_path_factory, ray_session, mobilenet_weights):
    """One run (``--select all --format recordio``) over a tree with broken files mixed in."""
    root = tmp_path_factory.mktemp("bad")
    src, dst = root / "raw", root / "aligned"
    expected = _bad_tree(src)
    sys.path.insert(0, str(REPO / "jobs"))
    try:
        import align_dataset
    finally:
        sys.path.pop(0)
    code = align_dataset.main([
        "--src", str(src), "--dst", str(dst), "--weights", str(mobilenet_weights), "--select", "all",
        "--format", "recordio", "--num-workers", "2", "--batch-size", "3", "--no-progress",
    ])
    return src, dst, expected, code


@pytest.mark.slow
def test_bad_files_get_error_records_and_the_exit_code_says_so(bad_tree_run):
    """Acceptance 3."""
    src, dst, expected, code = bad_tree_run
    assert code == EXIT_FILES_FAILED
    records = {r["src"]: r for r in _manifest_lines(dst)}
    assert {k: r["status"] for k, r in records.items()} == expected
    reasons = {k: r["error"] for k, r in records.items()}
    assert "empty file" in reasons["person a/zero.jpg"]
    assert "truncated" in reasons["person a/truncated.jpg"]
    assert "not a supported image" in reasons["person a/text.jpg"]
    assert "cannot read file" in reasons["person a/dangling.jpg"]
    assert "not a regular file" in reasons["person a/fifo.jpg"]
    for rel, status in expected.items():
        if status != "ok":
            assert records[rel]["outputs"] == []
    t1 = records["group/t1.jpg"]  # --select all: one crop per face, in detector order
    assert len(t1["faces"]) == 6 and t1["selected"] == list(range(6))
    assert t1["outputs"] == [f"group/t1_{i}.jpg" for i in range(6)]
    assert records["group/ünï cødé photo.jpg"]["outputs"] == ["group/ünï cødé photo_0.jpg"]
    # a.jpg and a.png would share a name: both keep their extension
    assert records["person a/img 1.jpg"]["outputs"] == ["person a/img 1.jpg_0.jpg"]
    assert records["person a/img 1.png"]["outputs"] == ["person a/img 1.png_0.jpg"]
    assert _output_files(dst) == {o for r in records.values() for o in r["outputs"]}
    summary = json.loads((dst / "summary.json").read_text())
    assert summary["counts"] == {"ok": 6, "no_face": 1, "filtered": 0, "error": 5} and summary["exit_code"] == 3


@pytest.mark.slow
def test_the_three_stage_layout_gives_the_records_of_the_fused_actors(bad_tree_run, tmp_path, mobilenet_weights):
    """CPU actors read and write themselves (one stage); ``--decode tasks`` keeps read tasks that
    decode and write tasks (the GPU layout). Same tree, same command otherwise, same records."""
    src, dst, expected, code = bad_tree_run
    staged = tmp_path / "staged"
    sys.path.insert(0, str(REPO / "jobs"))
    try:
        import align_dataset
    finally:
        sys.path.pop(0)
    assert align_dataset.main([
        "--src", str(src), "--dst", str(staged), "--weights", str(mobilenet_weights), "--select", "all",
        "--format", "recordio", "--num-workers", "2", "--batch-size", "3", "--no-progress", "--decode", "tasks",
    ]) == code == EXIT_FILES_FAILED
    assert "decoding in the read tasks" in json.loads((staged / "summary.json").read_text())["plan"]
    assert "reading, decoding and writing in the actors" in json.loads((dst / "summary.json").read_text())["plan"]
    keys = ("status", "error", "selected", "outputs")
    fused = {r["src"]: r for r in _manifest_lines(dst)}
    three = {r["src"]: r for r in _manifest_lines(staged)}
    assert {k: [r[x] for x in keys] for k, r in three.items()} == {k: [r[x] for x in keys] for k, r in fused.items()}
    assert len(fused) == len(expected)
    # the read tasks decode JPEG drafts for the actors, the fused actors their own: the same faces, to a
    # fraction of a pixel
    for rel, r in fused.items():
        assert len(three[rel]["faces"]) == len(r["faces"]), rel
        for a, b in zip(three[rel]["faces"], r["faces"]):
            np.testing.assert_allclose(a["box"] + sum(a["landmarks"], []), b["box"] + sum(b["landmarks"], []), atol=1.0)
            assert a["score"] == pytest.approx(b["score"], abs=0.01)


@pytest.mark.slow
def test_recordio_reads_back_as_arcface_torch_expects(bad_tree_run):
    """Acceptance 4: same images and labels; header record semantics of MXFaceDataset."""
    src, dst, _, _ = bad_tree_run
    records = {r["src"]: r for r in _manifest_lines(dst)}
    # identities = top-level folders in sorted-path order, that have ok crops
    folders = ["group", "person a"]
    crops = [(folders.index(src_rel.split("/")[0]), out) for src_rel in sorted(records)
             if records[src_rel]["status"] == "ok" and "/" in src_rel for out in records[src_rel]["outputs"]]
    with ArcFaceRecordDataset(dst) as ds:
        assert ds.header.flag == 2 and ds.header0 == (len(crops) + 1, len(crops) + 1 + len(folders))
        assert list(ds.image_indices) == list(range(1, len(crops) + 1))
        assert ds.property.num_classes == 2 and (ds.property.height, ds.property.width) == (112, 112)
        assert len(ds) == len(crops) == 10  # 6 + 1 in group/, 3 in "person a/"; root_level.jpg has no identity
        ranges = ds.identity_ranges()
        assert ranges == [(1, 8), (8, 11)]
        for i, (label, out) in enumerate(crops):
            got_label, payload = ds[i]
            assert got_label == label
            assert payload[:3] == b"\xff\xd8\xff"  # JPEG
            got = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
            ref = _imread(dst / out)
            assert got.shape == (112, 112, 3)
            assert np.abs(got.astype(int) - ref.astype(int)).mean() < 1.0
    assert (dst / "identities.tsv").read_text() == "0\tgroup\t7\n1\tperson a\t3\n"


def _kill_tree(root: Path, count: int) -> list[str]:
    photos = sorted(p for p in asset(DEEPFACE).iterdir() if p.suffix == ".jpg")[:6]
    small = [cv2.resize(cv2.imread(str(p)), None, fx=0.3, fy=0.3, interpolation=cv2.INTER_AREA) for p in photos]
    rels = []
    for i in range(count):
        rel = f"id{i % 4}/photo_{i:03d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), small[i % len(small)])
        rels.append(rel)
    return sorted(rels)


def _kill_after_records(cmd: list[str], cwd: Path, manifest: Path, records: int) -> None:
    """Run the CLI ``cmd`` and SIGKILL it once ``manifest`` holds ``records`` lines."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 150
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest.exists() and manifest.read_bytes().count(b"\n") >= records:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()


@pytest.mark.slow
def test_sigkill_then_rerun_gives_exactly_one_valid_output_per_input(tmp_path, ray_session, mobilenet_weights):
    """Acceptance 2: kill the CLI with SIGKILL mid-run, rerun, check outputs and manifest."""
    src, dst = tmp_path / "raw", tmp_path / "aligned"
    rels = _kill_tree(src, 48)
    address = ray_session.get_runtime_context().gcs_address  # join the session's Ray: no second cluster
    cmd = [sys.executable, str(REPO / "jobs" / "align_dataset.py"), "--src", str(src), "--dst", str(dst),
           "--weights", str(mobilenet_weights), "--runtime", "torch", "--num-workers", "1", "--batch-size", "2",
           "--no-progress", "--address", address]
    manifest = dst / "manifest.jsonl"
    _kill_after_records(cmd, tmp_path, manifest, 3)
    before = manifest.read_bytes().count(b"\n")
    assert 3 <= before < len(rels), before
    # what a kill can also leave: a torn manifest line and a temporary crop file
    with open(manifest, "ab") as f:
        f.write(b'{"src": "' + rels[-1].encode() + b'", "status": "ok", "outp')
    (dst / "id0" / f".photo_999.jpg{TEMP_MARKER}deadbeef").write_bytes(b"\xff\xd8partial")

    summary = run_align_job(_config(src, dst, mobilenet_weights))
    assert summary.already_done == before and summary.processed == len(rels) - before
    assert summary.exit_code == EXIT_OK
    lines = _manifest_lines(dst)
    assert [r["src"] for r in lines] == rels  # one final record per input
    assert all(r["status"] == "ok" and len(r["outputs"]) == 1 for r in lines)
    assert _output_files(dst) == {Path(r).with_suffix(".jpg").as_posix() for r in rels}
    assert not [p for p in dst.rglob("*") if TEMP_MARKER in p.name]
    for rel in _output_files(dst):
        img = _imread(dst / rel)
        assert img is not None and img.shape == (112, 112, 3), rel

    again = run_align_job(_config(src, dst, mobilenet_weights))  # nothing left to do
    assert (again.already_done, again.processed) == (len(rels), 0)
    (dst / lines[5]["outputs"][0]).unlink()  # a record whose output is gone is not trusted
    redo = run_align_job(_config(src, dst, mobilenet_weights, overwrite=True, limit=3))
    assert (redo.already_done, redo.processed) == (0, 3)  # --overwrite trusts nothing
    fixed = run_align_job(_config(src, dst, mobilenet_weights))
    assert (fixed.already_done, fixed.processed) == (len(rels) - 1, 1)
    assert [r["src"] for r in _manifest_lines(dst)] == rels and (dst / lines[5]["outputs"][0]).is_file()



@pytest.mark.slow
def test_webdataset_shards_read_back_and_a_killed_run_resumes_without_duplicates(tmp_path, ray_session,
                                                                                   mobilenet_weights, detector):
    """``--format webdataset``: kill mid-run, rerun; the shards then hold exactly one sample per
    ok input, readable by ``webdataset.WebDataset``, with the aligner's crop and the folder label."""
    import webdataset as wds

    from pipeline.images import read_image
    from pipeline.stage import FaceAligner

    src, dst = tmp_path / "raw", tmp_path / "shards_out"
    # enough photos that the kill lands mid-run: records reach the manifest a closed shard at a time,
    # and 40 small photos were sometimes all done before the first poll saw 4 of them
    rels = _kill_tree(src, 120)
    address = ray_session.get_runtime_context().gcs_address
    cmd = [sys.executable, str(REPO / "jobs" / "align_dataset.py"), "--src", str(src), "--dst", str(dst),
           "--format", "webdataset", "--shard-bytes", "30000", "--weights", str(mobilenet_weights),
           "--runtime", "torch", "--num-workers", "1", "--batch-size", "2", "--no-progress", "--address", address]
    manifest = dst / "manifest.jsonl"
    _kill_after_records(cmd, tmp_path, manifest, 4)  # a closed shard's records reach the manifest
    before = manifest.read_bytes().count(b"\n")
    assert 4 <= before < len(rels)

    summary = run_align_job(_config(src, dst, mobilenet_weights, format="webdataset", shard_bytes=30000))
    assert summary.exit_code == EXIT_OK and summary.already_done == before
    assert not [p for p in dst.rglob("*") if TEMP_MARKER in p.name]
    records = _manifest_lines(dst)
    assert [r["src"] for r in records] == rels and all(r["status"] == "ok" for r in records)
    shards = sorted(str(p) for p in (dst / "shards").glob("shard-*.tar"))
    assert len(shards) >= 2
    samples = list(wds.WebDataset(shards, shardshuffle=False).decode("rgb8"))
    assert len(samples) == len(rels)  # none lost, none twice
    by_src = {s["json"]["src"]: s for s in samples}
    assert sorted(by_src) == rels
    outputs = {o for r in records for o in r["outputs"]}
    assert {f"shards/{Path(s['__url__']).name}#{s['__key__']}" for s in samples} == outputs
    aligner = FaceAligner(detector=detector, config=job_align_defaults())
    for rel in rels[::21]:
        sample = by_src[rel]
        assert sample["json"]["label"] == int(rel[2]) and sample["json"]["identity"] == rel.split("/")[0]
        (face,) = aligner.align([read_image(src / rel)])[0]
        got = sample["jpg"][:, :, ::-1].astype(int)  # decoded RGB -> BGR
        assert got.shape == (112, 112, 3) and np.abs(got - face.crop.astype(int)).mean() < 2.0  # JPEG q95
        np.testing.assert_allclose(sample["json"]["face"]["landmarks"], face.landmarks, atol=0.02)


def test_a_file_that_is_not_a_checkpoint_stops_the_job_before_anything_is_written(tmp_path, monkeypatch,
                                                                                   mobilenet_weights):
    src, dst = tmp_path / "raw", tmp_path / "aligned"
    (src / "p").mkdir(parents=True)
    shutil.copy(asset("images/aligned112_insightface_tom_hanks.png"), src / "p" / "a.png")
    junk = tmp_path / "weights.pth"
    junk.write_text("root:x:0:0:root:/root:/bin/bash\n")  # /etc/passwd standing for a corrupt download
    with pytest.raises(JobConfigError, match=f"{junk}: not a torch checkpoint or ONNX file"):
        run_align_job(_config(src, dst, junk))
    import detector.spec

    monkeypatch.setattr(detector.spec, "available_runtimes", lambda: ["torch"])
    with pytest.raises(JobConfigError, match="runtime 'openvino' is not installed"):
        run_align_job(_config(src, dst, mobilenet_weights,
                              detector=DetectorSpec(weights=str(mobilenet_weights), runtime="openvino")))
    assert not dst.exists()  # nothing written, Ray never started


def _detector_actor_pids() -> list[int]:
    """PIDs of the job's detector actors (Ray titles them ``ray::MapWorker(MapBatches(FaceCropPredictor))``)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(b"ray::") and b"FaceCropPredictor" in cmdline:
                pids.append(int(entry))
    return pids


@pytest.mark.slow
def test_a_detector_actor_killed_mid_job_is_replaced_and_nothing_is_lost(tmp_path, ray_session, mobilenet_weights):
    import threading

    src, dst = tmp_path / "raw", tmp_path / "aligned"
    rels = _kill_tree(src, 60)
    outcome: dict = {}
    config = _config(src, dst, mobilenet_weights, batch_size=4)
    worker = threading.Thread(target=lambda: outcome.update(summary=run_align_job(config)), daemon=True)
    worker.start()
    manifest = dst / "manifest.jsonl"
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and worker.is_alive():
        if manifest.exists() and manifest.read_bytes().count(b"\n") >= 4 and _detector_actor_pids():
            break
        time.sleep(0.05)
    victims = _detector_actor_pids()
    assert worker.is_alive() and victims, "the job ended before an actor could be killed"
    os.kill(victims[0], signal.SIGKILL)
    worker.join(timeout=300)
    assert not worker.is_alive(), "the job hung after losing an actor"
    summary = outcome["summary"]
    assert summary.exit_code == EXIT_OK and summary.counts == {"ok": len(rels), "no_face": 0, "filtered": 0, "error": 0}
    records = _manifest_lines(dst)
    assert [r["src"] for r in records] == rels  # exactly one final record per input
    assert _output_files(dst) == {Path(r).with_suffix(".jpg").as_posix() for r in rels}
    assert not [p for p in dst.rglob("*") if TEMP_MARKER in p.name]


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (the suite runs as root, as CI does); unmounted afterwards. The actors write
    their crops themselves, two chunks at once: the disk holds the first chunks' crops and their
    manifest records before it fills."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    assert made.returncode == 0, f"cannot make a small file system for the test: {made.stderr.strip()}"
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_full_disk_stops_the_job_cleanly_and_a_rerun_after_freeing_space_completes(
        tmp_path, ray_session, mobilenet_weights, small_disk):
    src, dst = tmp_path / "raw", small_disk / "aligned"
    rels = _kill_tree(src, 80)  # 80 PNG crops of ~30 KB: about 2.4 MB, over twice the disk
    with pytest.raises(JobConfigError, match="no space left on the device"):
        run_align_job(_config(src, dst, mobilenet_weights, ext="png"))
    records = [json.loads(line) for line in (dst / "manifest.jsonl").read_bytes().splitlines()]
    assert (dst / "manifest.jsonl").read_bytes().endswith(b"\n") or not records  # no torn record
    assert 0 < len(records) < len(rels)
    for record in records:  # every recorded output is complete
        for out in record["outputs"]:
            assert _imread(dst / out).shape == (112, 112, 3)
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)  # space freed
    summary = run_align_job(_config(src, dst, mobilenet_weights, ext="png"))
    assert summary.exit_code == EXIT_OK and summary.already_done == len(records)
    assert [r["src"] for r in _manifest_lines(dst)] == rels
    assert _output_files(dst) == {Path(r).with_suffix(".png").as_posix() for r in rels}
    assert not [p for p in dst.rglob("*") if TEMP_MARKER in p.name]
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)  # a read-only dst
    with pytest.raises(JobConfigError, match="read-only file system"):
        run_align_job(_config(src, dst, mobilenet_weights, ext="png", overwrite=True))
