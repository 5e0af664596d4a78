"""The align-dataset job: outputs, manifest, resume after SIGKILL, bad files, RecordIO."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.spec import DetectorSpec
from pipeline.config import AlignConfig
from pipeline.job import (
    MAX_BLOCK_BYTES,
    MAX_INPUT_BLOCKS,
    MIN_OBJECT_STORE_BUDGET,
    JobConfigError,
    center_crop,
    estimate_input_bytes,
    guided_chunks,
    list_inputs,
    object_store_budget,
    plan_workers,
)
from pipeline.recordio import ArcFaceRecordDataset
from pipeline.writers import (
    FolderCropWriter,
    ManifestWriter,
    OutputLayout,
    compact_manifest,
    load_manifest,
)
from tests.shared import asset

DEEPFACE = "verification/deepface"


def _imread(path: Path) -> np.ndarray | None:
    """cv2.imread segfaults (OpenCV 5.0) on names that are not UTF-8: decode the bytes instead."""
    return cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)


# ------------------------------------------------------------------------------------ no Ray


def test_plan_never_gives_every_cpu_to_the_actors():
    for cpus in (1, 2, 3, 4, 16, 64):
        for workers in (None, 1, 3, 8):
            plan = plan_workers({"CPU": cpus}, num_workers=workers)
            assert plan.device == "cpu" and plan.gpus_per_actor == 0
            # a read/decode task and a write task always fit next to the whole actor pool
            assert plan.num_actors * plan.cpus_per_actor + plan.read_cpus + plan.write_cpus <= cpus + 1e-9
            assert plan.read_cpus != plan.cpus_per_actor  # equal remote args would fuse read into the actors
            assert plan.num_actors == (workers or cpus // (1 if cpus < 8 else 2))
    gpu = plan_workers({"CPU": 16, "GPU": 2})
    assert (gpu.device, gpu.num_actors, gpu.gpus_per_actor, gpu.batch_size) == ("cuda", 2, 1.0, 32)
    assert plan_workers({"CPU": 16, "GPU": 2}, device="cpu").device == "cpu"
    assert plan_workers({"CPU": 2}, batch_size=5, threads=2).threads == 2
    with pytest.raises(JobConfigError):
        plan_workers({"CPU": 4}, device="cuda")
    plan = plan_workers({"CPU": 4})
    assert plan.fitted(plan.chunks(10_000)) == plan
    # a tiny job: one chunk of at least MIN_CHUNK photos per actor, no actor started for nothing
    small = plan.fitted(plan.chunks(3))
    assert (small.batch_size, small.num_actors, small.cpus_per_actor) == (3, 1, plan.cpus_per_actor)
    assert plan.fitted(plan.chunks(10)).num_actors == 3
    assert plan.fitted(plan.chunks(16)).num_actors == 4


@pytest.mark.parametrize("total", [0, 1, 3, 7, 62, 248, 1000, 2001])
@pytest.mark.parametrize("workers", [1, 2, 3, 16])
def test_guided_chunks_cover_the_run_ramp_up_and_shrink_at_the_end(total, workers):
    sizes = guided_chunks(total, workers=workers, max_size=64, min_size=4)
    assert sum(sizes) == total and all(1 <= s <= 64 for s in sizes)
    if total == 0:
        assert sizes == []
        return
    peak = sizes.index(max(sizes))
    assert sizes[:peak + 1] == sorted(sizes[:peak + 1])  # ramp up (first results come early)
    assert sizes[peak:] == sorted(sizes[peak:], reverse=True)  # then only shrink
    assert sizes[0] <= 4  # the first chunk of every actor is small
    # the last round of chunks is small: no actor keeps a large chunk while the others are idle
    assert all(s <= 4 for s in sizes[-workers:])
    if total >= 2 * workers * 64 * 4:
        assert max(sizes) == 64
    else:  # a small run is spread over every worker, at least 4 photos a chunk
        assert len(sizes) >= min(workers, -(-total // 4))


def test_guided_chunks_reject_nonsense():
    bad = ({"workers": 0, "max_size": 4}, {"workers": 1, "max_size": 0}, {"workers": 1, "max_size": 4, "min_size": 0})
    for kw in bad:
        with pytest.raises(ValueError):
            guided_chunks(10, **kw)
    with pytest.raises(ValueError):
        guided_chunks(-1, workers=1, max_size=4)


def test_huge_runs_get_larger_chunks_not_more_blocks():
    plan = plan_workers({"CPU": 64})
    sizes = plan.chunks(3_000_000)
    assert sum(sizes) == 3_000_000
    assert len(sizes) <= MAX_INPUT_BLOCKS * 1.05 and max(sizes) == 300


def test_object_store_budget_bounds_read_ahead_by_chunk_bytes(tmp_path):
    cpu = plan_workers({"CPU": 2})  # 2 actors, chunks of up to 64 photos, room for one read task
    small = object_store_budget(cpu, photo_bytes=300e3, cluster_cpus=2, cluster_object_store=7e9)
    assert small == MIN_OBJECT_STORE_BUDGET  # (2 x 3 + 1) blocks of 19 MB < the floor
    eight = plan_workers({"CPU": 8})  # 4 actors x 2 threads; 8 - 4 x 1.5 - 0.25 CPUs free: 3 read tasks
    big = object_store_budget(eight, photo_bytes=3e6, cluster_cpus=8, cluster_object_store=40e9)
    assert big == (4 * 3 + 3) * MAX_BLOCK_BYTES  # blocks capped at Ray's block size
    gpu = plan_workers({"CPU": 16, "GPU": 1})  # decoded pixels; 14.5 free CPUs: 16 read tasks of 0.9
    # read outputs count whole (32 x 6 MB = 192 MB per chunk, over Ray's 128 MiB block cap: several blocks)
    assert object_store_budget(gpu, photo_bytes=6e6, cluster_cpus=16, cluster_object_store=40e9) == \
        (1 * 3 + 16) * 32 * 6e6
    assert object_store_budget(cpu, photo_bytes=3e6, cluster_cpus=2, cluster_object_store=1e9) is None
    # the estimate: file sizes, or decoded pixels from the header; unreadable samples are skipped
    src = tmp_path / "raw"
    (src / "a").mkdir(parents=True)
    ok = cv2.imencode(".png", np.zeros((30, 40, 3), np.uint8))[1].tobytes()
    (src / "a/1.png").write_bytes(ok)
    (src / "a/2.png").write_bytes(b"not an image")
    rels = ["a/1.png", "a/2.png", "a/missing.png"]
    assert estimate_input_bytes(src, rels, decoded=False) == (len(ok) + 12) / 2
    assert estimate_input_bytes(src, rels, decoded=True) == 30 * 40 * 3
    assert estimate_input_bytes(src, [], decoded=False) == 0.0


def test_summary_shows_the_steady_rate_only_when_it_covers_most_of_the_run():
    from pipeline.job import JobSummary

    base = dict(src="raw", dst="aligned", inputs=8, already_done=0, counts={"ok": 8}, run_counts={"ok": 8},
                crops_written=8, elapsed_s=20.0, process_s=14.0, photos_per_s=0.57, faces_per_s=0.57, plan="p",
                warmup_s=13.0, steady_photos_per_s=180.0)
    tiny = JobSummary(processed=8, warmup_photos=4, **base).text()
    assert "0.57 photos/s" in tiny and "warm-up" not in tiny
    long = JobSummary(processed=2000, warmup_photos=8, **base).text()
    assert "180.00 photos/s after a 13.0 s warm-up" in long
    done = JobSummary(processed=0, **{**base, "already_done": 8}).text()
    assert "nothing to process" in done and "photos/s" not in done


def test_listing_is_sorted_case_insensitive_and_skips_hidden_and_dst(tmp_path):
    src = tmp_path / "raw"
    for rel in ("b/2.JPG", "b/1.png", "a/x.jpeg", "a/.hidden.jpg", "a/._fork.jpg", "notes.txt",
                "c/d/e/deep.webp", ".cache/y.jpg", "out/old.jpg"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(b"x")
    (src / "empty" / "nested").mkdir(parents=True)
    assert list_inputs(src, exclude=src / "out") == ["a/x.jpeg", "b/1.png", "b/2.JPG", "c/d/e/deep.webp"]


def test_output_layout_names_and_collisions():
    layout = OutputLayout(ext="jpg")
    assert layout.outputs("a/b", 1) == ["a/b.jpg"]
    assert OutputLayout(ext="png", per_face=True).outputs("a/b", 3) == ["a/b_0.png", "a/b_1.png", "a/b_2.png"]
    assert OutputLayout.colliding(["a/b.png", "a/b.jpg", "a/c.jpg", "b/b.jpg"]) == {"a/b.png", "a/b.jpg"}
    assert OutputLayout.stem_of("a/b.png", keep_suffix=True) == "a/b.png"
    with pytest.raises(ValueError):
        layout.outputs("a/b", 2)


def test_manifest_writer_repairs_a_torn_tail_and_compaction_keeps_the_latest(tmp_path):
    path = tmp_path / "manifest.jsonl"
    with ManifestWriter(path) as m:
        m.append({"src": "a.jpg", "status": "error"})
        m.append({"src": "b.jpg", "status": "ok"})
    with open(path, "ab") as f:  # a writer killed in the middle of a line
        f.write(b'{"src": "c.jpg", "sta')
    assert set(load_manifest(path)) == {"a.jpg", "b.jpg"}  # the torn line is not trusted
    with ManifestWriter(path) as m:  # reopening cuts the torn tail before appending
        m.append({"src": "a.jpg", "status": "ok"})
    assert path.read_text().splitlines()[-1] == '{"src": "a.jpg", "status": "ok"}'
    assert "c.jpg" not in path.read_text() and path.read_text().count("\n") == 3
    assert compact_manifest(path, keep=["a.jpg", "b.jpg"]) == 2
    assert [json.loads(x) for x in path.read_text().splitlines()] == [
        {"src": "a.jpg", "status": "ok"}, {"src": "b.jpg", "status": "ok"}]


def test_recordio_from_png_crops_reencodes_jpeg_within_tolerance(tmp_path):
    from pipeline.job import write_recordio_from_manifest

    photo = cv2.imread(str(asset("images/aligned112_insightface_tom_hanks.png")))
    crops = {"b/x.png": photo, "b/y.png": photo[:, ::-1].copy(), "a/z.png": photo[::-1].copy()}
    with ManifestWriter(tmp_path / "manifest.jsonl") as m:
        for rel in sorted(crops):
            (tmp_path / rel).parent.mkdir(exist_ok=True)
            cv2.imwrite(str(tmp_path / rel), crops[rel])
            m.append({"src": rel.replace(".png", ".jpg"), "status": "ok", "outputs": [rel]})
        m.append({"src": "c/n.jpg", "status": "no_face", "outputs": []})
    info = write_recordio_from_manifest(tmp_path, image_size=(112, 112), quality=95)
    assert (info["images"], info["identities"]) == (3, 2)
    with ArcFaceRecordDataset(tmp_path) as ds:
        for i, rel in enumerate(sorted(crops)):
            label, payload = ds[i]
            assert label == (0 if rel.startswith("a/") else 1) and payload[:3] == b"\xff\xd8\xff"
            decoded = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR).astype(int)
            assert np.abs(decoded - crops[rel]).mean() < 2.0  # JPEG q95


def test_center_crop_keeps_the_middle():
    image = np.zeros((100, 300, 3), np.uint8)
    image[:, 100:200] = 255  # the central square is white, the sides black
    crop = center_crop(image, (112, 112))
    assert crop.shape == (112, 112, 3) and crop.min() == 255


def test_demo_tree_is_built_from_shipped_photos(tmp_path):
    from pipeline.demo import DEMO_FILES, build_demo_tree
    from pipeline.images import read_image

    files = build_demo_tree(tmp_path / "raw")
    assert files == list(DEMO_FILES) and list_inputs(tmp_path / "raw") == sorted(files)
    shapes = {rel: read_image(tmp_path / "raw" / rel).shape for rel in files}
    assert shapes["group/t1.jpg"] == (886, 1280, 3) and shapes["eileen_collins/astronaut_half.jpg"] == (256, 256, 3)
    before = (tmp_path / "raw" / "group" / "t1.jpg").stat().st_mtime_ns
    assert build_demo_tree(tmp_path / "raw") == files  # existing files are kept
    assert (tmp_path / "raw" / "group" / "t1.jpg").stat().st_mtime_ns == before


def test_predictor_gives_the_same_result_from_file_bytes_and_from_decoded_pixels(tmp_path, mobilenet_weights):
    """The two transports of :func:`read_images` (the actor decodes / the read task decodes),
    through the predictor and the writer, without Ray."""
    from pipeline.job import FaceCropPredictor, read_images, write_crops

    names = ["img1.jpg", "img47.jpg", "master.csv"]  # img47.jpg is a WebP; the csv is not an image
    batch = {"src": np.array([n.encode() for n in names], dtype=object),
             "stem": np.array([f"out/{Path(n).stem}".encode() for n in names], dtype=object)}
    spec = DetectorSpec(weights=str(mobilenet_weights), runtime="torch", threads=1)
    predictor = FaceCropPredictor(detector=spec, align=AlignConfig(on_error="record"))
    outputs = []
    for decode in (False, True):
        table = read_images(batch, src_root=str(asset(DEEPFACE)), decode=decode, max_pixels=None,
                            exif_orientation=True)
        assert table.column("height").to_pylist()[:2] == ([1868, 1800] if decode else [0, 0])
        as_numpy = {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}
        outputs.append(predictor(as_numpy))
    by_bytes, by_pixels = outputs
    assert by_bytes.equals(by_pixels)
    # GPU actors detect a whole batch per call (padded to the largest photo): same faces, crops +-1
    batched = FaceCropPredictor(detector=spec, align=AlignConfig(on_error="record"), detect_batch_size=3)(as_numpy)
    assert batched.column("status").equals(by_bytes.column("status"))
    for row in (0, 1):
        one, many = (np.frombuffer(t.column("crops")[row].as_py(), np.uint8).astype(int) for t in (by_bytes, batched))
        assert one.shape == many.shape == (112 * 112 * 3,) and np.abs(one - many).max() <= 1
    assert by_bytes.column("status").to_pylist() == ["ok", "ok", "error"]
    assert "not a supported image" in by_bytes.column("error").to_pylist()[2]
    result = write_crops({c: by_bytes.column(c).to_numpy(zero_copy_only=False) for c in by_bytes.column_names},
                         writer=FolderCropWriter(dst=str(tmp_path), layout=OutputLayout(ext="png"), quality=95),
                         crop_shape=(112, 112))
    records = [json.loads(r) for r in result.column("record").to_pylist()]
    assert [r["outputs"] for r in records] == [["out/img1.png"], ["out/img47.png"], []]
    crop = np.frombuffer(by_bytes.column("crops")[0].as_py(), np.uint8).reshape(112, 112, 3)
    assert np.array_equal(_imread(tmp_path / "out/img1.png"), crop)  # PNG: lossless


def test_jpeg_drafts_give_the_exact_faces_in_full_photo_pixels(tmp_path, mobilenet_weights):
    """The default fast decode (``exact=False``): a JPEG the detector shrinks 2x or more is decoded
    as a draft; detections come back in full-photo pixels, near the exact path's; faces smaller
    than the crop in the draft (the group photo's) are re-cropped from the full photo."""
    from pipeline.images import draft_factor
    from pipeline.job import FaceCropPredictor, read_images

    assert draft_factor(1868, 1382, 640 / 1868) == 2 and draft_factor(1868, 1382, 1024 / 1868) == 1
    assert draft_factor(4000, 3000, 0.1) == 8 and draft_factor(100, 80, 0.1) == 4  # drafts >= 16 px a side
    names = ["img1.jpg", "img33.jpg", "img12.jpg", "t1.jpg"]  # 1868x1382, 1200x1600?, 560x415, 1280x886
    for name in names[:3]:
        shutil.copy(asset(f"{DEEPFACE}/{name}"), tmp_path / name)
    shutil.copy(asset("images/group_insightface_t1.jpg"), tmp_path / "t1.jpg")
    batch = {"src": np.array([n.encode() for n in names], dtype=object),
             "stem": np.array([n.encode() for n in names], dtype=object)}
    table = read_images(batch, src_root=str(tmp_path), decode=False, max_pixels=None, exif_orientation=True)
    rows = {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}
    spec = DetectorSpec(weights=str(mobilenet_weights), runtime="torch", threads=1)
    align = AlignConfig(on_error="record", resize="long:640")
    exact, fast = (FaceCropPredictor(detector=spec, align=align, draft=d)(rows) for d in (False, True))
    assert fast.column("status").to_pylist() == exact.column("status").to_pylist() == ["ok"] * 4
    assert fast.column("height").equals(exact.column("height"))  # full-photo sizes
    for row, name in enumerate(names):
        e, f = (json.loads(t.column("faces")[row].as_py()) for t in (exact, fast))
        assert len(e) == len(f)
        pick = json.loads(exact.column("selected")[row].as_py())[0]
        assert json.loads(fast.column("selected")[row].as_py())[0] == pick
        width = e[pick]["box"][2] - e[pick]["box"][0]
        assert np.abs(np.subtract(f[pick]["box"], e[pick]["box"])).max() < 0.03 * width, name
        assert np.abs(np.subtract(f[pick]["landmarks"], e[pick]["landmarks"])).max() < 0.02 * width, name
        one, other = (np.frombuffer(t.column("crops")[row].as_py(), np.uint8).astype(float) for t in (exact, fast))
        print(name, "mean |crop diff|", round(float(np.abs(one - other).mean()), 2))
        assert np.abs(one - other).mean() < (4.0 if name == "t1.jpg" else 8.0), name  # t1: re-cropped, full photo
