"""The GPU layout without a GPU: packing, the CUDA-resolved fingerprint, every failure of the GPU
check, the read path's bytes for 12 MP photos, and the whole layout (read tasks -> GPU actors ->
write tasks) on a Ray that advertises 2 logical GPUs, with the test-only switch
``FACEPREP_TEST_GPU_ON_CPU`` (:data:`detector.probe.GPU_ON_CPU_ENV`) running the actors on the CPU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from detector.spec import DetectorSpec
from pipeline.job import AlignJobConfig, JobConfigError
from pipeline.job.config import EXIT_USAGE
from pipeline.select import box_iou
from tests.shared import asset

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------ a Ray without GPUs


def test_device_cuda_without_a_gpu_leaves_dst_untouched_and_a_default_run_then_works(ray_session, tmp_path, capfd,
                                                                                     mobilenet_weights):
    src, dst = tmp_path / "raw", tmp_path / "aligned"
    (src / "p").mkdir(parents=True)
    shutil.copy(asset("images/aligned112_insightface_tom_hanks.png"), src / "p" / "a.png")
    dst.mkdir()
    (dst / "notes.txt").write_text("mine")  # an existing dst stays exactly as it was
    args = ["--src", str(src), "--dst", str(dst), "--weights", str(mobilenet_weights), "--no-progress"]
    code = _align_main()([*args, "--device", "cuda"])
    out, err = capfd.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == EXIT_USAGE and len(lines) == 1, err
    assert lines[0].startswith("error: --device cuda, but Ray sees no GPU") and "Traceback" not in out + err
    assert sorted(p.name for p in dst.iterdir()) == ["notes.txt"]
    assert _align_main()(args) == 0  # the same dst takes a default run: no "made with different settings"
    settings = json.loads((dst / "job.json").read_text())["settings"]
    assert settings["device"] == "cpu"
    assert [json.loads(line)["status"] for line in (dst / "manifest.jsonl").read_text().splitlines()] == ["ok"]


# ------------------------------------------------------------------------------------ Ray with 2 logical GPUs


@pytest.fixture(scope="module")
def gpu_ray():
    """A local Ray whose node advertises 2 logical GPUs (this machine has no CUDA); the session's
    own Ray, if any, is restarted after the module."""
    import ray

    from common.ray_init import finish_shutdown

    finish_shutdown()  # a job's Ray still shutting down in the background would take this one with it
    restart = ray.is_initialized()
    if restart:
        ray.shutdown()
    ray.init(address="local", num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()
    if restart:
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)


def _align_main():
    import runpy

    return runpy.run_path(str(REPO / "jobs" / "align_dataset.py"), run_name="align_dataset")["main"]


def test_device_cuda_on_logical_gpus_without_cuda_stops_before_any_photo(gpu_ray, small_tree, tmp_path, capfd,
                                                                         mobilenet_weights):
    dst = tmp_path / "aligned"
    address = gpu_ray.get_runtime_context().gcs_address
    code = _align_main()(["--src", str(small_tree), "--dst", str(dst), "--device", "cuda", "--address", address,
                          "--weights", str(mobilenet_weights), "--no-progress"])
    out, err = capfd.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == EXIT_USAGE, err
    assert len(lines) == 1 and lines[0].startswith("error: GPU not usable: torch was built without CUDA"), err
    assert "Traceback" not in out + err
    assert not dst.exists()  # nothing written: no job.json, no manifest, no lock


def _by_src(dst: Path) -> dict[str, dict]:
    lines = (dst / "manifest.jsonl").read_text().splitlines()
    return {r["src"]: r for r in map(json.loads, lines)}


def test_the_gpu_layout_writes_the_manifest_of_the_cpu_layout(gpu_ray, small_tree, tmp_path, monkeypatch,
                                                              mobilenet_weights):
    from pipeline.job import run_align_job

    detector = DetectorSpec(weights=str(mobilenet_weights), runtime="torch", precision="auto")
    common = dict(src=small_tree, detector=detector, progress=False, batch_size=4)
    cpu = run_align_job(AlignJobConfig(dst=tmp_path / "cpu", device="cpu", **common))
    monkeypatch.setenv("FACEPREP_TEST_GPU_ON_CPU", "1")
    gpu = run_align_job(AlignJobConfig(dst=tmp_path / "gpu", device="auto", num_workers=3, **common))
    assert "cuda actor" in gpu.plan and "2 per GPU" in gpu.plan and "decoding in the read tasks" in gpu.plan
    from pipeline.job.feed import takes_read_drafts
    from pipeline.job.stages import FaceCropPredictor

    # the read tasks decode JPEG drafts and the actors take them (pipeline.job.feed): group.jpg (1/2)
    # and big.jpg (1/4) reach the GPU actors as drafts plus their files
    assert takes_read_drafts(FaceCropPredictor) and "uint8 JPEG drafts" in gpu.plan
    assert "reading, decoding and writing in the actors" in cpu.plan
    job = json.loads((tmp_path / "gpu" / "job.json").read_text())["settings"]
    assert job["device"] == "cuda" and (job["detector"]["runtime"], job["detector"]["precision"]) == ("torch", "fp16")
    assert json.loads((tmp_path / "cpu" / "job.json").read_text())["settings"]["device"] == "cpu"
    a, b = _by_src(tmp_path / "cpu"), _by_src(tmp_path / "gpu")
    assert sorted(a) == sorted(b) == ["a/1.jpg", "a/2.jpg", "b/big.jpg", "b/group.jpg"]
    for src in a:
        ra, rb = a[src], b[src]
        assert (rb["status"], rb["height"], rb["width"], rb["selected"]) == \
            (ra["status"], ra["height"], ra["width"], ra["selected"]), src
        assert len(ra["faces"]) == len(rb["faces"]), src
        for fa, fb in zip(ra["faces"], rb["faces"]):
            width = fa["box"][2] - fa["box"][0]
            assert box_iou(fa["box"], fb["box"])[0, 0] >= 0.7, src
            assert np.abs(np.subtract(fa["landmarks"], fb["landmarks"])).max() <= 0.015 * width, src
        assert len(rb["outputs"]) == len(ra["outputs"]) and all((tmp_path / "gpu" / o).is_file() for o in rb["outputs"])
    assert a["b/group.jpg"]["width"] == 1280 and len(a["b/group.jpg"]["faces"]) >= 5
    # a later CPU run does not resume into the GPU run's output
    monkeypatch.delenv("FACEPREP_TEST_GPU_ON_CPU")
    with pytest.raises(JobConfigError, match="different settings"):
        run_align_job(AlignJobConfig(dst=tmp_path / "gpu", device="cpu", **common))
