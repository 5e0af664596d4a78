"""The training loop on CPU: presets, schedule, checkpoints, exact resume, a short overfit, and
fine-tuning the reference checkpoint without losing its detections."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detector.inference import Detector
from detector.training import (
    OptimizerConfig,
    ScheduleConfig,
    TrainConfig,
    Trainer,
    WarmupMultiStepLR,
    available_train_presets,
    build_training_model,
    get_train_preset,
    matched_faces,
)
from detector.training.augment import AugmentConfig, CropConfig
from detector.training.dataset import WiderFaceTrainDataset
from detector.weights import load_model, read_checkpoint
from tests.shared import MOBILENET_WEIGHTS, asset, golden

LABELS = "widerface_mini/train/label.txt"
BACKBONE = "weights/mobilenetV1X0.25_imagenet_pretrain.tar"
GOLDEN = "retinaface/biubug6_mobilenet0.25_reference_detections.json"


@pytest.fixture(autouse=True, scope="module")
def one_intra_op_thread():
    """These tiny models gain nothing from intra-op threads, and on a loaded 2-core machine
    OpenMP's spinning threads make a step up to 100x slower; the setting is restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def small_config(**changes) -> TrainConfig:
    base = get_train_preset("reference")
    config = dataclasses.replace(
        base,
        augment=dataclasses.replace(base.augment, image_size=160),
        batch_size=2,
        max_steps=4,
        loader_workers=0,
        cache_images=True,
        log_every=2,
        optimizer=OptimizerConfig(lr=1e-2),
        schedule=ScheduleConfig(warmup_epochs=2 / 3, warmup_start_factor=0.1, milestones=(1.0,), gamma=0.1),
    )
    return dataclasses.replace(config, **changes)


def make_dataset(config: TrainConfig, labels: Path | None = None, images_dir: Path | None = None):
    return WiderFaceTrainDataset(labels=labels or asset(LABELS), images_dir=images_dir, augment=config.augment,
                                 seed=config.seed, cache_images=True)


@pytest.mark.parametrize("name", available_train_presets())
def test_presets_round_trip_through_plain_dicts(name):
    config = get_train_preset(name)
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_dict({**config.to_dict(), "bogus": 1})


def test_paper_and_reference_schedules():
    paper, reference = get_train_preset("paper"), get_train_preset("reference")
    assert (paper.matcher.positive_iou, paper.matcher.negative_iou, paper.loss.negpos_ratio) == (0.5, 0.3, 3.0)
    assert (paper.loss.box_weight, paper.loss.landmark_weight) == (0.25, 0.1)
    assert (reference.matcher.positive_iou, reference.loss.negpos_ratio, reference.loss.box_weight) == (0.35, 7.0, 2.0)
    parameter = torch.nn.Parameter(torch.zeros(1))
    steps_per_epoch = 10
    optimizer = torch.optim.SGD([parameter], lr=paper.optimizer.lr)
    scheduler = WarmupMultiStepLR.from_config(optimizer, schedule=paper.schedule, steps_per_epoch=steps_per_epoch)
    lrs = []
    for _ in range(80 * steps_per_epoch):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # 1e-3 rising to 1e-2 over 5 epochs, /10 at epochs 55 and 68
    assert lrs[0] == pytest.approx(1e-3) and lrs[25] == pytest.approx(1e-3 + 9e-3 * 25 / 50)
    assert lrs[50] == pytest.approx(1e-2) and lrs[549] == pytest.approx(1e-2)
    assert lrs[550] == pytest.approx(1e-3) and lrs[680] == pytest.approx(1e-4)
    optimizer = torch.optim.SGD([parameter], lr=reference.optimizer.lr)
    scheduler = WarmupMultiStepLR.from_config(optimizer, schedule=reference.schedule, steps_per_epoch=1)
    assert [scheduler.factor(s) for s in (0, 189, 190, 220)] == pytest.approx([1.0, 1.0, 0.1, 0.01])


def test_backbone_initialisation_uses_the_imagenet_weights():
    config = small_config()
    model = build_training_model(config, init_backbone=asset(BACKBONE))
    tar = torch.load(asset(BACKBONE), map_location="cpu", weights_only=True)["state_dict"]
    torch.testing.assert_close(model.body.stage1[0][0].weight, tar["module.stage1.0.0.weight"], rtol=0, atol=0)
    again = build_training_model(config, init_backbone=asset(BACKBONE))
    other = build_training_model(dataclasses.replace(config, seed=1), init_backbone=asset(BACKBONE))
    head = "ClassHead.0.conv1x1.weight"
    assert torch.equal(model.state_dict()[head], again.state_dict()[head])
    assert not torch.equal(model.state_dict()[head], other.state_dict()[head])
    with pytest.raises(ValueError, match="exactly one"):
        build_training_model(config)


def all_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().float() for k, v in model.state_dict().items()}


def test_resume_reproduces_the_uninterrupted_run(tmp_path: Path):
    config = small_config()
    # uninterrupted: 4 steps, data loaded by a worker process
    straight = Trainer(config=dataclasses.replace(config, loader_workers=1),
                       model=build_training_model(config, init_backbone=asset(BACKBONE)),
                       dataset=make_dataset(config), device="cpu", progress=False)
    straight.fit()
    # interrupted: 2 steps, checkpoint, new process state, resume for 2 more
    first = Trainer(config=dataclasses.replace(config, max_steps=2, checkpoint_every=1),
                    model=build_training_model(config, init_backbone=asset(BACKBONE)),
                    dataset=make_dataset(config), device="cpu", out_dir=tmp_path, progress=False)
    first.fit()
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["last.pt", "step_0000001.pt", "step_0000002.pt"]
    torch.manual_seed(12345)  # disturb the global RNG: resume must restore it
    resumed = Trainer(config=config, model=build_training_model(config, init_backbone=asset(BACKBONE)),
                      dataset=make_dataset(config), device="cpu", resume_from=tmp_path / "last.pt", progress=False)
    assert resumed.step == 2 and resumed.scheduler.last_epoch == 2
    resumed.fit()
    assert resumed.step == straight.step == 4
    a, b = all_state(straight.model), all_state(resumed.model)
    max_diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert max_diff <= 1e-5, max_diff
    for state_a, state_b in zip(straight.optimizer.state.values(), resumed.optimizer.state.values()):
        torch.testing.assert_close(state_a["momentum_buffer"], state_b["momentum_buffer"], atol=1e-5, rtol=0)
    assert [h["loss"] for h in straight.history[2:]] == pytest.approx([h["loss"] for h in resumed.history], abs=1e-5)
    # the learning rate went through warm-up and the milestone identically
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(straight.optimizer.param_groups[0]["lr"])

    # the checkpoint is a detector checkpoint with the training state beside it
    model_config, _, extra = read_checkpoint(tmp_path / "last.pt")
    assert model_config is not None and model_config.name == "mobilenet0.25"
    training = extra["training"]
    assert {"optimizer", "scheduler", "scaler", "step", "epoch", "train_config", "rng_state"} <= set(training)
    assert training["step"] == 2 and training["epoch"] == 0
    stored = TrainConfig.from_dict(training["train_config"])
    assert stored == dataclasses.replace(config, max_steps=2, checkpoint_every=1)
    assert isinstance(load_model(tmp_path / "last.pt"), torch.nn.Module)
    # a different recipe cannot silently resume
    with pytest.raises(ValueError, match="different configuration"):
        Trainer(config=dataclasses.replace(config, seed=5),
                model=build_training_model(config, init_backbone=asset(BACKBONE)),
                dataset=make_dataset(dataclasses.replace(config, seed=5)), device="cpu",
                resume_from=tmp_path / "last.pt", progress=False)


def test_short_overfit_lowers_every_loss_term(tmp_path: Path):
    # the two photos with landmark labels (31 faces), 256 px, from the ImageNet backbone, 30 steps;
    # the full-size run is benchmarks/overfit_widerface_mini.py
    mini = asset(LABELS)
    lines = mini.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# pseudo--group/"))
    labels = tmp_path / "label.txt"
    labels.write_text("\n".join(lines[start:]) + "\n")
    config = small_config(
        augment=AugmentConfig(image_size=256, crop=CropConfig(scale_choices=(1.0,)), photometric=None,
                              random_interpolation=False),
        max_steps=30,
        log_every=10,
        optimizer=OptimizerConfig(lr=2e-2),
        schedule=ScheduleConfig(warmup_epochs=3, warmup_start_factor=0.1, milestones=(22.0,), gamma=0.1),
    )
    dataset = make_dataset(config, labels=labels, images_dir=mini.parent / "images")
    assert len(dataset) == 2 and dataset.num_faces == 31
    trainer = Trainer(config=config, model=build_training_model(config, init_backbone=asset(BACKBONE)),
                      dataset=dataset, device="cpu", out_dir=tmp_path / "run", progress=False)
    logs = trainer.fit()
    assert [log.step for log in logs] == [10, 20, 30]
    assert all(log.images_per_second > 0 and log.compute_seconds > 0 and log.data_seconds >= 0 for log in logs)
    assert [log.lr for log in logs] == pytest.approx([2e-2, 2e-2, 2e-3])
    first, last = trainer.history[:5], trainer.history[-5:]
    drops = {
        term: 1 - np.mean([h[term] for h in last]) / np.mean([h[term] for h in first])
        for term in ("cls", "box", "landmark")
    }
    # measured: cls 82%, box 79%, landmark 75%
    assert all(drop >= 0.5 for drop in drops.values()), drops
    assert (tmp_path / "run" / "train_log.jsonl").read_text().count("\n") == 3


def test_fine_tuning_the_reference_keeps_its_detections():
    # 50 steps at lr 1e-5 with frozen BatchNorm statistics (with batch 1 the running statistics
    # would otherwise be replaced within the 50 steps and recall collapses to ~45%)
    config = small_config(
        augment=dataclasses.replace(get_train_preset("reference").augment, image_size=256),
        batch_size=1,
        max_steps=50,
        log_every=25,
        optimizer=OptimizerConfig(lr=1e-5),
        schedule=ScheduleConfig(),
        freeze_batchnorm=True,
    )
    model = build_training_model(config, init=asset(MOBILENET_WEIGHTS))
    trainer = Trainer(config=config, model=model, dataset=make_dataset(config), device="cpu", progress=False)
    trainer.fit()
    assert trainer.step == 50
    before = load_model(asset(MOBILENET_WEIGHTS)).state_dict()
    after = trainer.model_without_ddp.state_dict()
    assert float((before["ClassHead.0.conv1x1.weight"] - after["ClassHead.0.conv1x1.weight"]).abs().max()) > 0
    assert torch.equal(before["body.stage1.0.1.running_mean"], after["body.stage1.0.1.running_mean"])
    detector = Detector(trainer.model_without_ddp, device="cpu")
    wanted = found = 0
    # the golden photos as the reference ran them with the long side at 640 (8 images, 114 faces)
    for entry in json.loads(golden(GOLDEN).read_text())["images"]:
        if entry["resize"] == 1.0:
            continue
        table = np.asarray(entry["detections"], dtype=np.float32).reshape(-1, 15)
        reference = torch.from_numpy(table[table[:, 4] >= 0.5, :4])
        image = cv2.imread(str(asset(entry["image"])), cv2.IMREAD_COLOR)
        long_side = round(max(image.shape[:2]) * entry["resize"])
        result = detector.detect([image], resize=f"long:{long_side}")[0]
        hit = matched_faces(result.boxes, result.scores, reference, iou_threshold=0.5, score_threshold=0.5)
        wanted += reference.shape[0]
        found += int(hit.sum())
    assert wanted == 114
    assert found / wanted >= 0.95, (found, wanted)


def test_matched_faces_is_one_to_one_and_respects_thresholds():
    faces = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    detections = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 61.0], [100.0, 100.0, 110.0, 110.0]])
    # one detection covers both overlapping faces but may only claim one of them
    found = matched_faces(detections, torch.tensor([0.9, 0.4, 0.99]), faces, iou_threshold=0.5, score_threshold=0.5)
    assert found.tolist() == [True, False, False]
    found = matched_faces(detections, torch.tensor([0.9, 0.6, 0.99]), faces, iou_threshold=0.5, score_threshold=0.5)
    assert found.tolist() == [True, False, True]


def test_periodic_evaluation_logs_recall(tmp_path: Path):
    config = small_config(max_steps=1, eval_every=1, optimizer=OptimizerConfig(lr=1e-6), schedule=ScheduleConfig(),
                          freeze_batchnorm=True)
    dataset = make_dataset(config)
    group = [image for image in dataset.images if image.path.name == "group_insightface_t1.jpg"]
    trainer = Trainer(config=config, model=build_training_model(config, init=asset(MOBILENET_WEIGHTS)),
                      dataset=dataset, device="cpu", out_dir=tmp_path, eval_images=group, progress=False)
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    evaluation = [r for r in records if "recall" in r]
    # the reference model finds all six (pseudo-)labelled faces of the group photo
    assert evaluation == [{"step": 1, "recall": 1.0, "faces": 6, "found": 6}]
    assert trainer.model.training  # back in training mode after evaluating


def test_wider_val_reports_the_benchmarks_ap_per_epoch(tmp_path: Path):
    from detector.evaluation.predict import predict_submission
    from detector.evaluation.val import WiderValSet
    from detector.evaluation.widerface import evaluate_folder
    from detector.training.ray_job import TrainingJobConfig

    config = small_config(max_steps=1, optimizer=OptimizerConfig(lr=1e-6), schedule=ScheduleConfig(),
                          freeze_batchnorm=True)
    val = WiderValSet(images_dir=asset("widerface/val/images"), gt_dir=asset("widerface/ground_truth"))
    trainer = Trainer(config=config, model=build_training_model(config, init=asset(MOBILENET_WEIGHTS)),
                      dataset=make_dataset(config), device="cpu", out_dir=tmp_path, val=val, progress=False)
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    logged = [r for r in records if "widerface_val" in r]
    assert [(r["step"], r["widerface_val"]["images"]) for r in logged] == [(1, 4)]  # the run's end
    assert trainer.model.training
    # the same AP as the benchmark's path: a submission written for the trained weights, scored
    detector = Detector(trainer.model_without_ddp, device="cpu")
    predict_submission(val.images_dir, tmp_path / "pred", detector.detect, progress=False)
    expected = evaluate_folder(tmp_path / "pred", gt_dir=val.gt_dir, progress=False)
    for setting in ("easy", "medium", "hard"):
        assert logged[0]["widerface_val"][setting] == pytest.approx(expected[setting], abs=1e-12)
    # lr 1e-6 for one step: still the reference checkpoint's AP on these images (56.70 / 68.80 / 79.82 %)
    assert logged[0]["widerface_val"]["hard"] == pytest.approx(0.7982, abs=0.002)
    with pytest.raises(ValueError, match="val_images and val_gt go together"):
        TrainingJobConfig(train=config, labels=asset(LABELS), out=tmp_path, init=asset(MOBILENET_WEIGHTS),
                          val_images=asset("widerface/val/images"))
