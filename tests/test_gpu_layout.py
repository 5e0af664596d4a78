"""The GPU layout without a GPU: packing, the CUDA-resolved fingerprint, every failure of the GPU
check, the read path's bytes for 12 MP photos, and the whole layout (read tasks -> GPU actors ->
write tasks) on a Ray that advertises 2 logical GPUs, with the test-only switch
``FACEPREP_TEST_GPU_ON_CPU`` (:data:`detector.probe.GPU_ON_CPU_ENV`) running the actors on the CPU."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.config import ResizePolicy
from detector.spec import DetectorSpec
from pipeline.job import AlignJobConfig, JobConfigError, estimate_input_bytes, object_store_budget, plan_workers
from pipeline.job.config import EXIT_USAGE
from pipeline.job.plan import (
    GPU_RESOURCE_STEP,
    MIN_DECODE_CPUS_PER_GPU,
    TASKS_IN_FLIGHT_PER_ACTOR,
    gpu_share,
    resolve_device,
)
from pipeline.select import box_iou
from tests.shared import asset

REPO = Path(__file__).resolve().parents[1]
DETECT = ResizePolicy.parse("long:640")  # the job's detection size


# ------------------------------------------------------------------------------------ planning (pure)


def test_three_workers_on_two_gpus_pack_two_per_gpu_and_all_start():
    plan = plan_workers({"CPU": 16, "GPU": 2}, device="cuda", num_workers=3)
    assert (plan.num_actors, plan.gpus_per_actor, plan.actors_per_gpu) == (3, 0.5, 2)
    # Ray places an actor where its share fits: 3 shares of 0.5 fit on 2 GPUs (0.667 did not)
    free = [1.0, 1.0]
    for _ in range(plan.num_actors):
        gpu = next(i for i, f in enumerate(free) if f + 1e-9 >= plan.gpus_per_actor)
        free[gpu] -= plan.gpus_per_actor
    assert any("multiple of 2" in note for note in plan.notes)  # uneven: said so
    assert "2 per GPU" in plan.describe()


@pytest.mark.parametrize("actors,gpus", [(n, g) for n in range(1, 13) for g in (1, 2, 3, 2.5, 8)])
def test_gpu_shares_are_whole_gpus_or_an_integer_fraction_that_packs(actors, gpus):
    share, per_gpu = gpu_share(actors, gpus)
    whole = int(gpus)
    if actors <= whole:
        assert (share, per_gpu) == (1.0, 1)
        return
    assert per_gpu == math.ceil(actors / whole) and share * per_gpu <= 1.0 + 1e-12
    assert share > 1.0 / per_gpu - GPU_RESOURCE_STEP - 1e-12  # no more rounded off than Ray's resolution
    assert per_gpu * whole >= actors  # every actor starts
    assert math.floor((1.0 + 1e-9) / share) >= per_gpu


def test_eight_gpus_with_sixteen_cpus_warns_that_decoding_is_short():
    plan = plan_workers({"CPU": 16, "GPU": 8})
    assert (plan.device, plan.num_actors, plan.gpus_per_actor) == ("cuda", 8, 1.0)
    assert plan.num_actors * plan.cpus_per_actor + plan.write_cpus + plan.read_cpus <= 16
    assert [n for n in plan.notes if "decoding" in n and f"fewer than {MIN_DECODE_CPUS_PER_GPU}" in n]
    roomy = plan_workers({"CPU": 64, "GPU": 8})
    assert not roomy.notes
    idle = plan_workers({"CPU": 16, "GPU": 4}, num_workers=2)
    assert idle.gpus_per_actor == 1.0 and any("2 GPU(s) stay idle" in n for n in idle.notes)
    with pytest.raises(JobConfigError, match="no GPU"):
        plan_workers({"CPU": 16, "GPU": 0.5}, device="cuda")


def test_the_device_is_resolved_from_the_cluster_like_the_actors():
    assert resolve_device("auto", {"CPU": 4}) == "cpu"
    assert resolve_device("auto", {"CPU": 4, "GPU": 2}) == "cuda"
    assert resolve_device("cpu", {"CPU": 4, "GPU": 2}) == "cpu"
    assert resolve_device("cuda:1", {"CPU": 4, "GPU": 2}) == "cuda"
    with pytest.raises(JobConfigError, match="Ray sees no GPU"):
        resolve_device("cuda", {"CPU": 4})


def test_the_fingerprint_of_a_cuda_resolved_spec_records_what_runs(mobilenet_weights, tmp_path):
    from pipeline.job.run import check_detector, device_spec

    detector = DetectorSpec(weights=str(mobilenet_weights), precision="auto")
    cuda = check_detector(device_spec(detector, "cuda"))
    cpu = check_detector(device_spec(detector, "cpu"))
    assert (cuda.device, cuda.runtime, cuda.precision) == ("cuda", "torch", "fp16")
    assert cpu.device == "cpu" and cpu.precision in ("fp32", "bf16")
    config = AlignJobConfig(src=tmp_path, dst=tmp_path / "out", detector=detector)
    gpu_print, cpu_print = config.fingerprint(cuda)["detector"], config.fingerprint(cpu)["detector"]
    assert (gpu_print["runtime"], gpu_print["precision"]) == ("torch", "fp16") and gpu_print != cpu_print
    # onnxruntime runs fp16 only through TensorRT: auto is fp32 there; an explicit precision is kept
    ort = device_spec(DetectorSpec(weights=str(mobilenet_weights), runtime="onnxruntime", precision="auto"), "cuda")
    assert ort.precision == "fp32"
    assert device_spec(DetectorSpec(precision="fp32"), "cuda").precision == "fp32"
    # --precision fp16 with the default device is judged on the device that runs, not on the CPU
    fp16 = device_spec(DetectorSpec(weights=str(mobilenet_weights), precision="fp16"), "cuda")
    assert check_detector(fp16).precision == "fp16"


# ------------------------------------------------------------------------------------ the GPU check (in process)


def test_the_gpu_check_names_a_torch_built_without_cuda(mobilenet_weights):
    import torch

    from detector.probe import check_device

    assert not torch.backends.cuda.is_built()  # this CI's torch is the CPU wheel
    spec = DetectorSpec(weights=str(mobilenet_weights), runtime="torch", precision="fp16", device="cuda").resolved()
    problem = check_device(spec)
    assert problem.startswith("torch was built without CUDA") and "\n" not in problem


def test_the_gpu_check_names_a_cuda_torch_that_sees_no_gpu(mobilenet_weights, monkeypatch):
    import torch

    from detector.probe import check_device

    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    spec = DetectorSpec(weights=str(mobilenet_weights), runtime="torch", device="cuda").resolved()
    assert "sees no usable GPU" in check_device(spec)


@pytest.fixture()
def scrfd_cuda():
    return DetectorSpec(weights=str(asset("weights/peers/scrfd_500m_bnkps.onnx")), runtime="onnxruntime",
                        device="cuda").resolved()


def test_the_gpu_check_names_onnxruntime_without_its_cuda_provider(scrfd_cuda, monkeypatch):
    from detector import probe

    monkeypatch.setattr(probe, "_installed", lambda dist: dist == "onnxruntime")
    problem = probe.check_device(scrfd_cuda)
    assert problem.startswith("onnxruntime has no CUDA provider") and "install faceprep[gpu]" in problem
    # both wheels installed: the CPU one hides the CUDA provider, and the message says so
    monkeypatch.setattr(probe, "_installed", lambda dist: True)
    problem = probe.check_device(scrfd_cuda)
    assert "CPU wheel 'onnxruntime' hides" in problem and "pip uninstall -y onnxruntime onnxruntime-gpu" in problem


def test_the_gpu_check_refuses_fp16_without_tensorrt_and_a_provider_that_fell_back(scrfd_cuda, monkeypatch):
    import dataclasses

    import onnxruntime

    from detector.probe import check_device, session_providers
    from pipeline.verification.recognizer import OnnxRecognizerConfig

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider",
                                                                         "CPUExecutionProvider"])
    assert "fp16 only through TensorRT" in check_device(dataclasses.replace(scrfd_cuda, precision="fp16"))
    # the CUDA provider is "there" but does not start: onnxruntime silently runs on the CPU
    assert "CUDA provider did not start" in check_device(scrfd_cuda)
    assert session_providers(dataclasses.replace(scrfd_cuda, device="cpu").build()) == ["CPUExecutionProvider"]
    # the recogniser inside a GPU actor, under the test switch (the detector on the CPU): not checked for CUDA
    monkeypatch.setenv("FACEPREP_TEST_GPU_ON_CPU", "1")
    recognizer = OnnxRecognizerConfig(model=asset("weights/mobilefacenet_arcface112.onnx"),
                                      providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert check_device(scrfd_cuda, recognizer) is None
    monkeypatch.delenv("FACEPREP_TEST_GPU_ON_CPU")
    monkeypatch.setattr("detector.probe.onnxruntime_cuda_problem", lambda precision="fp32": None)
    monkeypatch.setattr("detector.probe.session_providers",
                        lambda model: ["CUDAExecutionProvider" if hasattr(model, "detect") else "CPUExecutionProvider"])
    problem = check_device(scrfd_cuda, recognizer)
    assert problem.startswith("the recogniser would run on the CPU inside a GPU actor")


# ------------------------------------------------------------------------------------ 12 MP photos: the read path


@pytest.fixture(scope="module")
def photo_12mp(tmp_path_factory) -> Path:
    """A 4000x3000 JPEG (12 MP) made from a real face photo."""
    src = tmp_path_factory.mktemp("mp12") / "raw"
    (src / "p").mkdir(parents=True)
    face = cv2.imread(str(asset("verification/deepface/img1.jpg")))
    big = cv2.resize(face, (4000, 3000), interpolation=cv2.INTER_LINEAR)
    cv2.imwrite(str(src / "p" / "big.jpg"), big, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return src


def test_the_gpu_read_path_ships_uint8_drafts_not_full_size_pixels(photo_12mp):
    from pipeline.job.stages import read_images

    size = (photo_12mp / "p/big.jpg").stat().st_size
    batch = {"src": np.array([[b"p/big.jpg"]], dtype=object), "stem": np.array([[b"p/big"]], dtype=object)}
    table = read_images(batch, src_root=str(photo_12mp), decode=True, max_pixels=None, exif_orientation=True,
                        draft=DETECT)
    row = table.to_pylist()[0]
    assert row["error"] == ""
    assert (row["full_height"], row["full_width"]) == (3000, 4000)
    assert (row["height"], row["width"]) == (750, 1000)  # a 1/4 draft: still >= 640 on the long side
    assert len(row["pixels"]) == 750 * 1000 * 3  # one byte per value: uint8, never float
    assert len(row["data"]) == size  # the file, for a full-size crop of a face too small in the draft
    shipped = sum(table.column(c).nbytes for c in table.column_names)
    assert shipped < 3000 * 4000 * 3 / 8  # not full size: under 1/8 of the 36 MB of pixels
    full = read_images(batch, src_root=str(photo_12mp), decode=True, max_pixels=None, exif_orientation=True)
    assert full.column("height").to_pylist() == [3000] and "pixels" not in full.column_names


def test_the_object_store_budget_keeps_every_read_task_going_with_12mp_photos(photo_12mp):
    rels = ["p/big.jpg"]
    per_photo = estimate_input_bytes(photo_12mp, rels, decoded=True, draft=DETECT)
    assert per_photo == 750 * 1000 * 3 + (photo_12mp / "p/big.jpg").stat().st_size
    assert estimate_input_bytes(photo_12mp, rels, decoded=True) == 3000 * 4000 * 3
    plan = plan_workers({"CPU": 16, "GPU": 1})
    budget = object_store_budget(plan, photo_bytes=per_photo, cluster_cpus=16, cluster_object_store=64e9)
    chunk = plan.batch_size * per_photo
    read_tasks = math.floor((16 - plan.cpus_per_actor - plan.write_cpus) / plan.read_cpus)
    assert read_tasks >= 14
    # room for every running read task's chunk and the actor's queue, whatever Ray's block cap
    assert budget >= (read_tasks + plan.num_actors * TASKS_IN_FLIGHT_PER_ACTOR) * chunk
    assert budget < 0.5 * 64e9


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


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory) -> Path:
    """Four photos: two portraits, a 1280x886 group photo (a 1/2 draft) and a portrait enlarged
    to 2600x1950 (a 1/4 draft)."""
    src = tmp_path_factory.mktemp("gpu_tree") / "raw"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    shutil.copy(asset("verification/deepface/img1.jpg"), src / "a" / "1.jpg")
    shutil.copy(asset("verification/deepface/img2.jpg"), src / "a" / "2.jpg")
    shutil.copy(asset("images/group_insightface_t1.jpg"), src / "b" / "group.jpg")
    face = cv2.imread(str(asset("verification/deepface/img3.jpg")))
    cv2.imwrite(str(src / "b" / "big.jpg"), cv2.resize(face, (2600, 1950)), [cv2.IMWRITE_JPEG_QUALITY, 92])
    return src


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

    # read-task drafts are used once the actor takes them (pipeline.job.feed): today full-size uint8 pixels
    assert ("uint8 JPEG drafts" in gpu.plan) == takes_read_drafts(FaceCropPredictor)
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


# ------------------------------------------------------------------------------------ weights on every node


def test_a_node_without_the_drivers_weights_file_resolves_the_named_weights_itself(tmp_path, monkeypatch,
                                                                                   mobilenet_weights):
    """What an actor does with the driver's spec (:func:`detector.probe.weights_on_node`): the
    driver's file where the node has it, else the user's name resolved on the node (its own
    FACEPREP_WEIGHTS / cache); a named *file* the node lacks is one line naming the node."""
    import dataclasses
    import socket

    from detector.hub import CheckpointError
    from detector.probe import check_device, weights_on_node

    spec = DetectorSpec(weights=str(mobilenet_weights), runtime="torch").resolved()
    assert weights_on_node(spec, None) is spec  # a shared file system: the driver's file
    elsewhere = dataclasses.replace(spec, weights="/home/driver/.cache/faceprep/" + Path(mobilenet_weights).name)
    monkeypatch.setenv("FACEPREP_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("FACEPREP_WEIGHTS", str(Path(mobilenet_weights).parent))  # this node's own folder
    for asked in (None, "mobilenet0.25"):
        on_node = weights_on_node(elsewhere, asked)
        assert Path(on_node.weights) == Path(mobilenet_weights)
        assert dataclasses.replace(on_node, weights=spec.weights) == spec  # nothing else changes
    with pytest.raises(CheckpointError, match=f"not on node {socket.gethostname()}"):
        weights_on_node(elsewhere, "/home/driver/models/mine.pth")
    assert check_device(elsewhere, asked_weights="/home/driver/models/mine.pth").startswith("weights file ")
