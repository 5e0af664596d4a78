"""The GPU layout without a GPU: packing, the CUDA-resolved fingerprint, every failure of the GPU
check, the read path's bytes for 12 MP photos, and the whole layout (read tasks -> GPU actors ->
write tasks) on a Ray that advertises 2 logical GPUs, with the test-only switch
``FACEPREP_TEST_GPU_ON_CPU`` (:data:`detector.probe.GPU_ON_CPU_ENV`) running the actors on the CPU."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.config import ResizePolicy
from detector.spec import DetectorSpec
from pipeline.job import AlignJobConfig, JobConfigError, estimate_input_bytes, object_store_budget, plan_workers
from pipeline.job.plan import (
    GPU_RESOURCE_STEP,
    MIN_DECODE_CPUS_PER_GPU,
    TASKS_IN_FLIGHT_PER_ACTOR,
    gpu_share,
    resolve_device,
)
from tests.shared import asset

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


class _DecodeSpy:
    """Counts the decodes of :class:`pipeline.photo.Photo` (the actor's own decodes of a file)."""

    def __init__(self, monkeypatch):
        import pipeline.photo

        self.reductions: list[int] = []
        real = pipeline.photo.decode_image

        def spy(*args, **kwargs):
            self.reductions.append(kwargs.get("reduce", 1))
            return real(*args, **kwargs)

        monkeypatch.setattr(pipeline.photo, "decode_image", spy)


def test_the_gpu_actor_takes_the_drafts_and_decodes_nothing_full_size_for_a_large_face(photo_12mp, monkeypatch,
                                                                                       mobilenet_weights):
    """The actor's inputs: a read task's row of a 12 MP photo is the 1/4 draft plus the file
    (uint8, under 1/8 of the full pixels), and a face large in the draft is detected, measured and
    cropped from the draft alone: the actor decodes nothing (the job's defaults, ``long:640``)."""
    from pipeline.job.feed import photo_input
    from pipeline.job.stages import FaceCropPredictor, _columns, read_images

    batch = {"src": np.array([[b"p/big.jpg"]], dtype=object), "stem": np.array([[b"p/big"]], dtype=object)}
    rows = _columns(read_images(batch, src_root=str(photo_12mp), decode=True, max_pixels=None,
                                exif_orientation=True, draft=DETECT))
    arrays = [np.asarray(v) for v in rows.values()]
    assert not [a for a in arrays if a.dtype.kind == "f"]  # nothing float
    shipped = sum(sum(map(len, a)) if a.dtype == object else a.nbytes for a in arrays)
    assert shipped < 3000 * 4000 * 3 / 8
    inp = photo_input(rows, 0)
    assert inp.image is None and inp.draft.shape == (750, 1000, 3) and inp.draft.dtype == np.uint8
    assert (inp.shape, inp.factor, len(inp.data)) == ((3000, 4000), 4, (photo_12mp / "p/big.jpg").stat().st_size)
    spy = _DecodeSpy(monkeypatch)
    spec = DetectorSpec(weights=str(mobilenet_weights), runtime="torch", threads=1)
    out = FaceCropPredictor(detector=spec, align=_job_align(), draft=True)(rows).to_pylist()[0]
    assert (out["status"], out["height"], out["width"], out["num_crops"]) == ("ok", 3000, 4000, 1)
    assert spy.reductions == []  # the draft was enough: the 36 MB of pixels were never decoded


def _job_align():
    from pipeline.job.config import job_align_defaults

    return job_align_defaults()


def test_a_photo_input_with_its_draft_gives_the_choice_of_the_file(small_tree, monkeypatch, mobilenet_weights):
    """A PhotoInput holding a read task's JPEG draft (with the file) and one holding only the file
    give the same FaceChoice, bit for bit: the same draft is detected on, and the finer pixels
    (the group photo's small faces: refinement windows, full-size crops) are decoded from the file
    only where needed, never at the draft's own factor."""
    from pipeline.job.feed import photo_input
    from pipeline.job.stages import _columns, read_images
    from pipeline.stage import FaceAligner, PhotoInput

    names = [b"a/1.jpg", b"b/group.jpg", b"b/big.jpg", b"a/2.jpg"]
    batch = {"src": np.array(names, dtype=object), "stem": np.array(names, dtype=object)}
    rows = _columns(read_images(batch, src_root=str(small_tree), decode=True, max_pixels=None,
                                exif_orientation=True, draft=DETECT))
    aligner = FaceAligner(detector=DetectorSpec(weights=str(mobilenet_weights), runtime="torch", threads=1).build,
                          config=_job_align(), draft=True)
    drafted = 0
    for row, name in enumerate(names):
        with_draft = photo_input(rows, row)
        data = (small_tree / name.decode()).read_bytes()
        spy = _DecodeSpy(monkeypatch)
        got = aligner.run([with_draft])[0]
        from_draft = list(spy.reductions)
        want = aligner.run([PhotoInput(data=data, source=name.decode())])[0]
        if with_draft.draft is not None:
            drafted += 1
            assert with_draft.data == data and with_draft.factor in (2, 4)
            assert spy.reductions[len(from_draft)] == with_draft.factor  # the file alone: the same draft, decoded here
            assert all(f < with_draft.factor for f in from_draft), name  # only finer pixels, from the file
        assert not got.error and got.shape == want.shape
        assert got.selected == want.selected and len(got.selected) >= 1, name
        for field in ("boxes", "scores", "landmarks", "refined", "crops", "matrices"):
            np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=f"{name} {field}")
        assert got.quality == want.quality, name
        if name == b"b/group.jpg":
            assert got.refined.any() and 1 in from_draft  # small faces: refined and cropped at full size
    assert drafted >= 2  # the group photo (1/2) and the enlarged portrait (1/4)


def test_a_draft_must_match_its_photo():
    from pipeline.job.feed import draft_reduction
    from pipeline.photo import PhotoInput

    assert draft_reduction((3000, 4000), (750, 1000)) == 4 and draft_reduction((1951, 2601), (976, 1301)) == 2
    with pytest.raises(ValueError, match="no 1/2, 1/4 or 1/8 JPEG draft"):
        draft_reduction((3000, 4000), (1000, 750))
    draft = np.zeros((750, 1000, 3), np.uint8)
    with pytest.raises(ValueError, match="comes with the file's data"):
        PhotoInput(draft=draft, shape=(3000, 4000), factor=4)
    with pytest.raises(ValueError, match=r"\(375, 500, 3\) uint8"):
        PhotoInput(data=b"x", draft=draft, shape=(3000, 4000), factor=8)
    with pytest.raises(ValueError, match="a factor in"):
        PhotoInput(data=b"x", draft=draft, shape=(3000, 4000), factor=3)


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


# ------------------------------------------------------------------------------------ batches of one shape


def test_shape_grouped_batches_give_the_padded_batchs_detections(mobilenet_weights, monkeypatch):
    """The CUDA input path (``group_shapes``, run here on the CPU): photos of one size go through
    the network together, uint8 in, resized and normalised by torch, without padding or mask, and
    the detections come back on the host; they match the CPU path's (one padded batch, cv2's
    resize) to float noise, in the caller's order."""
    import torch

    from detector.inference import Detector

    face = cv2.imread(str(asset("verification/deepface/img1.jpg")))
    group = cv2.imread(str(asset("images/group_insightface_t1.jpg")))
    images = [cv2.resize(face, (1000, 750)), group, cv2.resize(face[:, ::-1], (1000, 750)),
              cv2.resize(face, (480, 640)), group[:, ::-1].copy()]
    padded = Detector.from_weights(str(mobilenet_weights), resize="long:640")
    grouped = Detector.from_weights(str(mobilenet_weights), resize="long:640")
    grouped.group_shapes = True
    assert not padded.group_shapes  # the CPU default: unchanged
    shapes = []
    forward = grouped.forward
    monkeypatch.setattr(grouped, "forward", lambda batch, sizes=None: shapes.append(
        (tuple(batch.shape), sizes, batch.dtype)) or forward(batch, sizes))
    want, got = padded.detect(images), grouped.detect(images)
    # three input shapes, one forward each, no mask; the 1000x750 pair shrunk to 640x480 together
    assert shapes == [((2, 3, 480, 640), None, torch.float32), ((2, 3, 443, 640), None, torch.float32),
                      ((1, 3, 640, 480), None, torch.float32)]
    for w, g in zip(want, got):
        assert g.boxes.device.type == "cpu" and len(g) == len(w) >= 1
        w, g = w.numpy(), g.numpy()
        np.testing.assert_allclose(g.scores, w.scores, atol=2e-3)
        np.testing.assert_allclose(g.boxes, w.boxes, atol=0.5)
        np.testing.assert_allclose(g.landmarks, w.landmarks, atol=0.5)
    assert len(got[1]) >= 5  # the group photo, batched with its mirror image


def test_the_test_switch_gives_a_cuda_actor_the_cuda_input_path_on_the_cpu(monkeypatch, mobilenet_weights):
    """Under FACEPREP_TEST_GPU_ON_CPU the GPU layout's actors run the CUDA input path (batches of
    one shape, results copied to the host per batch) on the CPU, so the layout test covers it."""
    from pipeline.job.feed import on_granted_device
    from pipeline.job.stages import FaceCropPredictor

    spec = DetectorSpec(weights=str(mobilenet_weights), runtime="torch", precision="fp16", device="cuda").resolved()
    monkeypatch.setenv("FACEPREP_TEST_GPU_ON_CPU", "1")
    built = on_granted_device(FaceCropPredictor)(detector=spec, align=_job_align(), draft=True)._aligner.detector
    assert (built.device.type, built.fp16, built.group_shapes) == ("cpu", False, True)
    cpu = on_granted_device(FaceCropPredictor)(detector=dataclasses.replace(spec, device="cpu", precision="fp32"),
                                               align=_job_align(), draft=True)._aligner.detector
    assert not cpu.group_shapes



def test_nms_with_fewer_host_syncs_keeps_what_greedy_nms_keeps():
    """On a GPU the NMS fixed point is tested every 4 rounds (one host sync each test): the same
    kept boxes as testing every round and as greedy NMS written out."""
    import torch

    from detector.boxes import _greedy_keep

    gen = torch.Generator().manual_seed(0)
    for _ in range(100):
        k = int(torch.randint(1, 40, (1,), generator=gen))
        suppresses = (torch.rand(3, k, k, generator=gen) < 0.2).triu(1)
        valid = torch.rand(3, k, generator=gen) < 0.8
        greedy = torch.zeros_like(valid)
        for b in range(3):
            for j in range(k):
                greedy[b, j] = bool(valid[b, j]) and not bool((greedy[b, :j] & suppresses[b, :j, j]).any())
        for rounds in (1, 4):
            assert torch.equal(_greedy_keep(suppresses, valid, rounds), greedy)
