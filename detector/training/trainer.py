"""RetinaFace training: configuration, schedule presets, the loop, checkpoints and resume.

* :class:`TrainConfig` (frozen, nested) holds everything that defines a run; presets
  (:func:`get_train_preset`) give the reference's (biubug6/Pytorch_Retinaface ``train.py``) and the
  paper's recipes; :meth:`TrainConfig.to_dict` / :meth:`TrainConfig.from_dict` store it in
  checkpoints.
* :class:`WarmupMultiStepLR`: linear warm-up, then division by ``1 / gamma`` at milestones. Both
  are given in epochs and converted to optimiser steps for the run's data.
* :class:`Trainer`: SGD, AMP on CUDA, optional gradient clipping, DDP when ``torch.distributed`` is
  initialised, each loss term logged with images/s and the data-vs-compute split of step time,
  progress bar, optional periodic recall evaluation, and checkpoints in the detector's own format
  (:func:`detector.weights.save_checkpoint`: model config + weights) plus the training state
  (optimiser, scheduler, grad scaler, step, epoch, train config, RNG states), so
  ``python -m detector detect --weights DIR/last.pt`` loads any checkpoint and
  :meth:`Trainer.resume` continues a run exactly: the data of step ``s`` depends only on
  ``(seed, s)`` (see :class:`detector.training.dataset.StepSampler`).

Nothing here picks a device on import; the caller passes one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader

from detector.anchors import AnchorGenerator
from detector.box_coder import BoxCoder
from detector.boxes import box_iou
from detector.config import ModelConfig, get_preset
from detector.inference import Detector, PostprocessConfig
from detector.model import RetinaFace
from detector.training.augment import AugmentConfig, CropConfig, PhotometricConfig
from detector.training.dataset import (
    LabeledImage,
    StepSampler,
    TrainingBatch,
    WiderFaceTrainDataset,
    collate_training_samples,
)
from detector.training.loss import LossConfig, LossOutput, RetinaFaceLoss
from detector.training.matcher import AnchorMatcher, MatcherConfig
from detector.weights import load_backbone_weights, load_model, read_checkpoint, save_checkpoint

__all__ = [
    "OptimizerConfig",
    "ScheduleConfig",
    "TrainConfig",
    "TRAIN_PRESETS",
    "available_train_presets",
    "get_train_preset",
    "WarmupMultiStepLR",
    "StepLog",
    "RecallReport",
    "evaluate_recall",
    "build_training_model",
    "Trainer",
    "capture_rng_state",
    "restore_rng_state",
]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True, slots=True, kw_only=True)
class OptimizerConfig:
    """SGD settings. ``lr`` is the peak (post-warm-up) learning rate."""

    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError("lr must be positive")


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleConfig:
    """Warm-up then step decay, in epochs (fractions allowed).

    ``lr(t) = lr * (start + (1 - start) * t / warmup)`` for ``t < warmup``, then
    ``lr * gamma ** (number of milestones <= t)``.

    Attributes:
        warmup_epochs: length of the linear warm-up (0: none).
        warmup_start_factor: fraction of ``lr`` the warm-up starts from.
        milestones: epochs at which the learning rate is multiplied by ``gamma``.
        gamma: decay factor.
    """

    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.1
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.warmup_epochs < 0:
            raise ValueError("warmup_epochs must be non-negative")
        if not 0.0 <= self.warmup_start_factor <= 1.0:
            raise ValueError("warmup_start_factor must lie in [0, 1]")
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"milestones must be increasing, got {self.milestones}")


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainConfig:
    """One training run.

    Attributes:
        model: model preset (:func:`detector.config.get_preset`) built when training starts from an
            ImageNet backbone; a run initialised from a detector checkpoint must match it.
        batch_size: images per step and per rank (DDP: the global batch is ``world * batch_size``).
        epochs: run length in epochs, unless ``max_steps`` is set.
        max_steps: run length in optimiser steps (overrides ``epochs``).
        seed: the one seed of the run (data order, augmentation, head initialisation).
        amp: mixed precision on CUDA (ignored on CPU); ``amp_dtype`` float16 uses a grad scaler.
        grad_clip_norm: clip the global gradient norm to this value (``None``: no clipping).
        freeze_batchnorm: keep BatchNorm layers in eval mode (running statistics frozen, affine
            parameters still trained): for fine-tuning with small batches, whose statistics would
            otherwise replace the pretrained ones within a few dozen steps.
        loader_workers: DataLoader worker processes per rank (0: load in the training process).
        loader_start_method: how workers start. ``"forkserver"`` (default) and ``"spawn"`` start
            them from a clean process; ``"fork"`` is fastest to start but copies the trainer's
            thread pools (OpenCV's deadlocks in a forked child that reconfigures it, and Ray/gloo
            threads make fork unsafe in general).
        cache_images: keep decoded images in memory (small sets).
        checkpoint_every: also write ``step_XXXXXXX.pt`` every this many steps (0: only ``last.pt``,
            written at those steps and at the end).
        eval_every: evaluate recall every this many steps when evaluation images are given (0: never).
        log_every: aggregate and log the loss terms every this many steps.
    """

    model: str = "mobilenet0.25"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    matcher: MatcherConfig = field(default_factory=MatcherConfig.reference)
    loss: LossConfig = field(default_factory=LossConfig.reference)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    batch_size: int = 32
    epochs: int = 250
    max_steps: int | None = None
    seed: int = 0
    amp: bool = True
    amp_dtype: Literal["float16", "bfloat16"] = "float16"
    grad_clip_norm: float | None = None
    freeze_batchnorm: bool = False
    loader_workers: int = 2
    loader_start_method: Literal["forkserver", "spawn", "fork"] = "forkserver"
    cache_images: bool = False
    checkpoint_every: int = 0
    eval_every: int = 0
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.epochs < 1 and self.max_steps is None:
            raise ValueError("epochs must be at least 1 (or set max_steps)")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError("max_steps must be non-negative")
        if self.loader_start_method not in ("forkserver", "spawn", "fork"):
            raise ValueError(f"unknown loader_start_method {self.loader_start_method!r}")
        if self.amp_dtype not in ("float16", "bfloat16"):
            raise ValueError(f"amp_dtype must be float16 or bfloat16, got {self.amp_dtype!r}")
        if self.grad_clip_norm is not None and self.grad_clip_norm <= 0:
            raise ValueError("grad_clip_norm must be positive")
        if min(self.loader_workers, self.checkpoint_every, self.eval_every) < 0 or self.log_every < 1:
            raise ValueError("loader_workers, checkpoint_every, eval_every must be >= 0 and log_every >= 1")

    # Fields that change how long or how verbosely a run goes, not what it computes: a resumed run
    # may change them.
    RUNTIME_FIELDS: typing.ClassVar[frozenset[str]] = frozenset(
        {"epochs", "max_steps", "loader_workers", "loader_start_method", "cache_images", "checkpoint_every",
         "eval_every", "log_every"}
    )

    def total_steps(self, steps_per_epoch: int) -> int:
        return self.max_steps if self.max_steps is not None else self.epochs * steps_per_epoch

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of builtins (stored in checkpoints, loadable with ``weights_only``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        return _dataclass_from_dict(cls, data)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def _coerce(annotation: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        for option in options:
            if dataclasses.is_dataclass(option):
                return _coerce(option, value)
        return _coerce(options[0], value) if len(options) == 1 else value
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return _dataclass_from_dict(annotation, value)
    if origin is tuple:
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], item) for item in value)
        return tuple(_coerce(arg, item) for arg, item in zip(args, value, strict=True))
    return value


def _dataclass_from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    return cls(**{name: _coerce(hints[name], value) for name, value in data.items()})


def _reference_augment(image_size: int) -> AugmentConfig:
    return AugmentConfig(
        image_size=image_size,
        crop=CropConfig(sampling="choices"),
        photometric=PhotometricConfig(),
        flip_probability=0.5,
        random_interpolation=True,
    )


def _reference_mobilenet() -> TrainConfig:
    # biubug6 train.py + data/config.py cfg_mnet: batch 32, lr 1e-3, 250 epochs, x0.1 at 190 and 220;
    # its warm-up (warmup_epoch = -1) is disabled.
    return TrainConfig(
        model="mobilenet0.25",
        augment=_reference_augment(640),
        matcher=MatcherConfig.reference(),
        loss=LossConfig.reference(),
        optimizer=OptimizerConfig(lr=1e-3, momentum=0.9, weight_decay=5e-4),
        schedule=ScheduleConfig(warmup_epochs=0.0, milestones=(190.0, 220.0), gamma=0.1),
        batch_size=32,
        epochs=250,
    )


def _reference_resnet50() -> TrainConfig:
    # cfg_re50: batch 24, image 840, 100 epochs, x0.1 at 70 and 90.
    return dataclasses.replace(
        _reference_mobilenet(),
        model="resnet50",
        augment=_reference_augment(840),
        schedule=ScheduleConfig(warmup_epochs=0.0, milestones=(70.0, 90.0), gamma=0.1),
        batch_size=24,
        epochs=100,
    )


def _paper() -> TrainConfig:
    # RetinaFace paper, Sec. 4.3: crops of [0.3, 1] of the short side resized to 640, colour
    # distortion, flips; IoU > 0.5 positive, < 0.3 background; OHEM 3:1; lambda1 0.25, lambda2 0.1;
    # SGD (0.9, 5e-4), batch 8 x 4 GPUs, lr 1e-3 rising to 1e-2 after 5 epochs, /10 at 55 and 68,
    # stop at 80.
    return TrainConfig(
        model="paper",
        augment=AugmentConfig(image_size=640, crop=CropConfig(sampling="uniform", scale_range=(0.3, 1.0))),
        matcher=MatcherConfig.paper(),
        loss=LossConfig.paper(),
        optimizer=OptimizerConfig(lr=1e-2, momentum=0.9, weight_decay=5e-4),
        schedule=ScheduleConfig(warmup_epochs=5.0, warmup_start_factor=0.1, milestones=(55.0, 68.0), gamma=0.1),
        batch_size=32,
        epochs=80,
    )


def _paper_mobilenet() -> TrainConfig:
    """The paper's recipe on the MobileNet-0.25 model."""
    return dataclasses.replace(_paper(), model="mobilenet0.25")


TRAIN_PRESETS: dict[str, Callable[[], TrainConfig]] = {
    # the biubug6 recipes, also under the model preset names they train
    "reference": _reference_mobilenet,
    "reference-mobilenet0.25": _reference_mobilenet,
    "mobilenet0.25": _reference_mobilenet,
    "reference-resnet50": _reference_resnet50,
    "resnet50": _reference_resnet50,
    "paper": _paper,
    "paper-mobilenet0.25": _paper_mobilenet,
}


def available_train_presets() -> list[str]:
    return sorted(TRAIN_PRESETS)


def get_train_preset(name: str) -> TrainConfig:
    try:
        return TRAIN_PRESETS[name]()
    except KeyError:
        raise KeyError(f"unknown training preset {name!r}; available: {', '.join(available_train_presets())}") from None


# ----------------------------------------------------------------------------------------------
# schedule


class WarmupMultiStepLR(LRScheduler):
    """Linear warm-up over ``warmup_steps`` from ``start_factor``, then ``gamma`` at each milestone.

    ``last_epoch`` counts optimiser steps; call :meth:`step` after every optimiser step.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        warmup_steps: int,
        start_factor: float,
        milestones: Sequence[int],
        gamma: float,
        last_epoch: int = -1,
    ) -> None:
        self.warmup_steps = int(warmup_steps)
        self.start_factor = float(start_factor)
        self.milestones = tuple(int(m) for m in milestones)
        self.gamma = float(gamma)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start_factor + (1.0 - self.start_factor) * step / self.warmup_steps
        return self.gamma ** sum(1 for m in self.milestones if step >= m)

    def get_lr(self) -> list[float]:
        factor = self.factor(self.last_epoch)
        return [base * factor for base in self.base_lrs]

    @classmethod
    def from_config(
        cls, optimizer: torch.optim.Optimizer, *, schedule: ScheduleConfig, steps_per_epoch: int
    ) -> WarmupMultiStepLR:
        return cls(
            optimizer,
            warmup_steps=round(schedule.warmup_epochs * steps_per_epoch),
            start_factor=schedule.warmup_start_factor,
            milestones=[round(m * steps_per_epoch) for m in schedule.milestones],
            gamma=schedule.gamma,
        )


# ----------------------------------------------------------------------------------------------
# RNG state


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy (legacy global) and torch CPU/CUDA generator states, ``weights_only``-safe."""
    numpy_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(numpy_state["state"]["key"], dtype=np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": numpy_state["bit_generator"],
            "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------
# evaluation


@dataclass(frozen=True, slots=True, kw_only=True)
class RecallReport:
    """Recall of labelled faces: a face counts as found when a detection with score >= the
    threshold matches it one-to-one (greedy by score) at IoU >= the threshold.

    Attributes:
        num_faces: labelled faces considered (wider than the minimum width).
        num_found: of those, found.
        per_image: ``(path, num_faces, num_found)`` per image.
    """

    num_faces: int
    num_found: int
    per_image: tuple[tuple[str, int, int], ...]

    @property
    def recall(self) -> float:
        return self.num_found / self.num_faces if self.num_faces else float("nan")


def matched_faces(
    detections: torch.Tensor, scores: torch.Tensor, faces: torch.Tensor, *, iou_threshold: float, score_threshold: float
) -> torch.Tensor:
    """``bool [G]``: which of ``faces [G, 4]`` a detection ``[D, 4]`` with ``scores [D]`` matches.

    Greedy one-to-one matching in decreasing score order, each detection taking its best unmatched
    face with IoU >= ``iou_threshold``.
    """
    found = torch.zeros(faces.shape[0], dtype=torch.bool)
    keep = scores >= score_threshold
    detections, scores = detections[keep].float().cpu(), scores[keep].float().cpu()
    if faces.shape[0] == 0 or detections.shape[0] == 0:
        return found
    overlaps = box_iou(detections[torch.argsort(scores, descending=True, stable=True)], faces.float().cpu())
    for row in overlaps:
        candidates = torch.where(found, torch.full_like(row, -1.0), row)
        best = int(torch.argmax(candidates))
        if float(candidates[best]) >= iou_threshold:
            found[best] = True
    return found


def evaluate_recall(
    model: RetinaFace,
    images: Sequence[LabeledImage],
    *,
    device: torch.device | str,
    min_face_width: float = 20.0,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.5,
    resize: str | None = None,
) -> RecallReport:
    """Detect on each labelled image (original size unless ``resize``) and count found faces."""
    detector = Detector(model, device=device, resize=resize, postprocess=PostprocessConfig())
    per_image: list[tuple[str, int, int]] = []
    for labeled in images:
        image = cv2.imread(str(labeled.path), cv2.IMREAD_COLOR)
        if image is None:
            raise OSError(f"cannot decode {labeled.path}")
        faces = torch.from_numpy(labeled.boxes)
        faces = faces[(faces[:, 2] - faces[:, 0]) > min_face_width]
        result = detector.detect([image])[0]
        found = matched_faces(
            result.boxes, result.scores, faces, iou_threshold=iou_threshold, score_threshold=score_threshold
        )
        per_image.append((str(labeled.path), int(faces.shape[0]), int(found.sum())))
    return RecallReport(
        num_faces=sum(n for _, n, _ in per_image), num_found=sum(f for _, _, f in per_image), per_image=tuple(per_image)
    )


# ----------------------------------------------------------------------------------------------
# model


def build_training_model(
    config: TrainConfig, *, init_backbone: str | Path | None = None, init: str | Path | None = None
) -> RetinaFace:
    """The model a run starts from, on CPU, in train mode.

    Args:
        init_backbone: ImageNet backbone checkpoint (e.g. ``mobilenetV1X0.25_imagenet_pretrain.tar``,
            ``module.``-prefixed keys); FPN, SSH and heads are freshly initialised from ``config.seed``.
        init: a detector checkpoint (biubug6 ``.pth`` or ours); its architecture must be
            ``config.model``'s.
    """
    if (init_backbone is None) == (init is None):
        raise ValueError("give exactly one of init_backbone and init")
    expected = get_preset(config.model)
    if init is not None:
        model = load_model(init)
        if _architecture(model.config) != _architecture(expected):
            raise ValueError(
                f"{init} holds a {model.config.name!r} model but the run is configured for {config.model!r}; "
                "pass a matching model preset"
            )
        return model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = RetinaFace(expected)
    load_backbone_weights(model, init_backbone)
    return model.train()


def _architecture(config: ModelConfig) -> dict[str, Any]:
    data = config.to_dict()
    data.pop("name")
    data.pop("train_image_size")
    return data


# ----------------------------------------------------------------------------------------------
# the loop


@dataclass(frozen=True, slots=True, kw_only=True)
class StepLog:
    """Loss terms and timing averaged over the ``steps`` steps ending at ``step`` (all ranks).

    ``data_seconds`` is the mean time a step waited for its batch (including its copy to the
    device), ``compute_seconds`` the mean time of forward, loss, backward and optimiser step
    (device-synchronised); ``images_per_second`` counts all ranks' images over the window's wall
    time.
    """

    step: int
    epoch: int
    lr: float
    loss: float
    cls: float
    box: float
    landmark: float
    num_positives: float
    images_per_second: float
    data_seconds: float
    compute_seconds: float
    steps: int

    def as_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


def _fresh_worker_init(worker_id: int) -> None:
    """One OpenCV thread per DataLoader worker (torch already sets one intra-op thread there).

    Only for workers started from a clean process: in a forked child, reconfiguring the thread
    pool OpenCV inherited from the parent deadlocks.
    """
    del worker_id
    cv2.setNumThreads(1)


def _unwrap(model: nn.Module) -> RetinaFace:
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model.module  # type: ignore[return-value]
    return model  # type: ignore[return-value]


class Trainer:
    """Runs a :class:`TrainConfig` on one device (one rank of a DDP group when
    ``torch.distributed`` is initialised with more than one process).

    Args:
        config: the run.
        model: the starting model (:func:`build_training_model`); moved to ``device``.
        dataset: training samples; its augmentation must match ``config.augment`` and the model's
            input normalisation.
        device: where to train (CUDA enables AMP when ``config.amp``).
        out_dir: where checkpoints and ``train_log.jsonl`` go (rank 0 writes); ``None``: nowhere.
        resume_from: a checkpoint written by a trainer; restores weights and training state.
        eval_images: labelled images for periodic recall evaluation (rank 0).
        progress: show a progress bar (rank 0).
        on_log: called with every :class:`StepLog` on every rank (e.g. to report to Ray Train).
    """

    LAST = "last.pt"
    LOG = "train_log.jsonl"

    def __init__(
        self,
        *,
        config: TrainConfig,
        model: RetinaFace,
        dataset: WiderFaceTrainDataset,
        device: torch.device | str,
        out_dir: str | Path | None = None,
        resume_from: str | Path | None = None,
        eval_images: Sequence[LabeledImage] = (),
        progress: bool = True,
        on_log: Callable[[StepLog], None] | None = None,
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        self.dataset = dataset
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.eval_images = tuple(eval_images)
        self.progress = progress
        self.on_log = on_log
        self._check_compatible(model.config, dataset)

        self.distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.world_size = dist.get_world_size() if self.distributed else 1
        self.rank = dist.get_rank() if self.distributed else 0
        self.steps_per_epoch = StepSampler.steps_per_epoch_for(
            dataset_size=len(dataset), batch_size=config.batch_size, num_replicas=self.world_size
        )
        self.total_steps = config.total_steps(self.steps_per_epoch)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.logs: list[StepLog] = []

        resume_state: dict[str, Any] | None = None
        if resume_from is not None:
            resume_state = self._read_resume(Path(resume_from), model)
        model = model.to(self.device)
        if self.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        self.model = model
        self._train_mode()
        model_config = _unwrap(model).config

        self.criterion = RetinaFaceLoss(
            matcher=AnchorMatcher(config=config.matcher, coder=BoxCoder(model_config.variance)),
            anchor_generator=AnchorGenerator(model_config.anchors),
            config=config.loss,
        )
        self.optimizer = torch.optim.SGD(
            model.parameters(),
            lr=config.optimizer.lr,
            momentum=config.optimizer.momentum,
            weight_decay=config.optimizer.weight_decay,
            nesterov=config.optimizer.nesterov,
        )
        self.scheduler = WarmupMultiStepLR.from_config(
            self.optimizer, schedule=config.schedule, steps_per_epoch=self.steps_per_epoch
        )
        self.amp = config.amp and self.device.type == "cuda"
        self.amp_dtype = torch.float16 if config.amp_dtype == "float16" else torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)
        if resume_state is not None:
            self._restore_training_state(resume_state)

    # -- setup -------------------------------------------------------------------------------

    def _check_compatible(self, model_config: ModelConfig, dataset: WiderFaceTrainDataset) -> None:
        augment = dataset.augment_config
        if augment != self.config.augment:
            raise ValueError("the dataset's augmentation differs from config.augment")
        if model_config.channel_order != "BGR" or any(s != 1.0 for s in model_config.std):
            raise ValueError("training supports BGR models with unit std only")
        if tuple(augment.mean_bgr) != tuple(model_config.mean_bgr):
            raise ValueError(
                f"augmentation subtracts mean {augment.mean_bgr} but the model expects {model_config.mean_bgr}"
            )
        if dataset.seed != self.config.seed:
            raise ValueError(f"dataset seed {dataset.seed} differs from config.seed {self.config.seed}")

    def _read_resume(self, path: Path, model: RetinaFace) -> dict[str, Any]:
        stored_model_config, state, extra = read_checkpoint(path)
        if "training" not in extra:
            raise ValueError(f"{path} holds no training state; use it as --init instead")
        training = extra["training"]
        stored = TrainConfig.from_dict(training["train_config"])
        differences = {
            name: (getattr(stored, name), getattr(self.config, name))
            for name in (f.name for f in dataclasses.fields(TrainConfig))
            if name not in TrainConfig.RUNTIME_FIELDS and getattr(stored, name) != getattr(self.config, name)
        }
        if differences:
            listed = "; ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in differences.items())
            raise ValueError(f"cannot resume {path} with a different configuration: {listed}")
        if stored_model_config is not None and _architecture(stored_model_config) != _architecture(model.config):
            raise ValueError(f"{path} holds a different architecture than the model given")
        if training["world_size"] != self.world_size:
            raise ValueError(
                f"{path} was written by a {training['world_size']}-rank run; resuming on {self.world_size} "
                "ranks would change the data order"
            )
        if training.get("labels") != str(self.dataset.labels_path):
            logger.warning("resuming %s (trained on %s) with labels %s", path, training.get("labels"),
                           self.dataset.labels_path)
        model.load_state_dict(state, strict=True)
        return training

    def _restore_training_state(self, training: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(training["optimizer"])
        self.scheduler.load_state_dict(training["scheduler"])
        self.scaler.load_state_dict(training["scaler"])
        self.step = int(training["step"])
        restore_rng_state(training["rng_state"][self.rank])  # same world size: checked on reading

    def _train_mode(self) -> None:
        self.model.train()
        if self.config.freeze_batchnorm:
            for module in self.model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    @property
    def model_without_ddp(self) -> RetinaFace:
        return _unwrap(self.model)

    # -- checkpoints -------------------------------------------------------------------------

    def training_state(self) -> dict[str, Any]:
        """Everything besides the weights needed to continue exactly (on every rank)."""
        rng = capture_rng_state()
        if self.distributed:
            gathered: list[Any] = [None] * self.world_size
            dist.all_gather_object(gathered, rng)
            rng_states = gathered
        else:
            rng_states = [rng]
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "world_size": self.world_size,
            "train_config": self.config.to_dict(),
            "rng_state": rng_states,
            "labels": str(self.dataset.labels_path),
        }

    def save(self, path: str | Path) -> Path | None:
        """Write a checkpoint (a collective under DDP: call on all ranks; rank 0 writes)."""
        training = self.training_state()
        if self.rank != 0:
            return None
        return save_checkpoint(path, self.model_without_ddp, training=training)

    def _checkpoint(self) -> None:
        if self.out_dir is None:
            return
        if self.config.checkpoint_every and self.step % self.config.checkpoint_every == 0:
            self.save(self.out_dir / f"step_{self.step:07d}.pt")
        self.save(self.out_dir / self.LAST)

    # -- loop --------------------------------------------------------------------------------

    def _loader(self, end_step: int) -> DataLoader:
        sampler = StepSampler(
            dataset_size=len(self.dataset),
            batch_size=self.config.batch_size,
            seed=self.config.seed,
            start_step=self.step,
            end_step=end_step,
            num_replicas=self.world_size,
            rank=self.rank,
        )
        workers = self.config.loader_workers
        fresh_workers = workers > 0 and self.config.loader_start_method != "fork"
        return DataLoader(
            self.dataset,
            batch_size=self.config.batch_size,
            sampler=sampler,
            num_workers=workers,
            collate_fn=collate_training_samples,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=_fresh_worker_init if fresh_workers else None,
            prefetch_factor=2 if workers > 0 else None,
            persistent_workers=False,
            multiprocessing_context=self.config.loader_start_method if workers > 0 else None,
        )

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def train_step(self, batch: TrainingBatch) -> LossOutput:
        """One optimiser step on a batch already on the device."""
        autocast = (
            torch.autocast(device_type="cuda", dtype=self.amp_dtype) if self.amp else nullcontext()
        )
        with autocast:
            output = self.model(batch.images)
        losses = self.criterion(output, batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses.total).backward()
        if self.config.grad_clip_norm is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        return losses

    def fit(self, *, until: int | None = None) -> list[StepLog]:
        """Train until step ``until`` (default and at most ``total_steps``); returns this call's logs.

        Logs are written every ``log_every`` steps and at the last step of the call; checkpoints
        every ``checkpoint_every`` steps and at ``total_steps``.
        """
        end = self.total_steps if until is None else min(until, self.total_steps)
        if self.step >= end:
            return []
        if self.out_dir is not None and self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        bar = None
        if self.progress and self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=end, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        window: list[tuple[dict[str, float], int, float, float]] = []
        window_start = time.perf_counter()
        logs: list[StepLog] = []
        self._train_mode()
        iterator = iter(self._loader(end))
        try:
            while self.step < end:
                wait_start = time.perf_counter()
                batch = next(iterator)
                batch = batch.to(self.device, non_blocking=True)
                compute_start = time.perf_counter()
                losses = self.train_step(batch)
                self._synchronize()
                compute_end = time.perf_counter()
                terms = losses.terms()
                if not all(math.isfinite(value) for value in terms.values()):
                    raise FloatingPointError(f"non-finite loss at step {self.step}: {terms}")
                self.history.append({"step": self.step, **terms})
                window.append((terms, losses.num_positives, compute_start - wait_start, compute_end - compute_start))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        loss=f"{terms['loss']:.3f}", cls=f"{terms['cls']:.3f}", box=f"{terms['box']:.3f}",
                        lm=f"{terms['landmark']:.3f}", refresh=False,
                    )
                if self.step % self.config.log_every == 0 or self.step == end:
                    log = self._log(window, time.perf_counter() - window_start, batch_images=len(batch))
                    logs.append(log)
                    window, window_start = [], time.perf_counter()
                if self.config.eval_every and self.eval_images and self.step % self.config.eval_every == 0:
                    self._evaluate()
                if (self.config.checkpoint_every and self.step % self.config.checkpoint_every == 0) or (
                    self.step == self.total_steps
                ):
                    self._checkpoint()
        finally:
            if bar is not None:
                bar.close()
        return logs

    def _log(
        self, window: list[tuple[dict[str, float], int, float, float]], wall: float, *, batch_images: int
    ) -> StepLog:
        """Aggregate a window of ``(terms, positives, data seconds, compute seconds)`` over ranks."""
        count = len(window)
        sums = torch.tensor(
            [
                sum(t["loss"] for t, _, _, _ in window),
                sum(t["cls"] for t, _, _, _ in window),
                sum(t["box"] for t, _, _, _ in window),
                sum(t["landmark"] for t, _, _, _ in window),
                sum(p for _, p, _, _ in window),
                sum(d for _, _, d, _ in window),
                sum(c for _, _, _, c in window),
                float(count * batch_images),
                wall,
            ],
            dtype=torch.float64,
        )
        if self.distributed:
            backend_device = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
            sums = sums.to(backend_device)
            dist.all_reduce(sums)
            sums = sums.cpu()
            sums[:7] /= self.world_size
            sums[8] /= self.world_size
        values = sums.tolist()
        log = StepLog(
            step=self.step,
            epoch=self.epoch,
            lr=float(self.optimizer.param_groups[0]["lr"]),
            loss=values[0] / count,
            cls=values[1] / count,
            box=values[2] / count,
            landmark=values[3] / count,
            num_positives=values[4] / count,
            images_per_second=values[7] / max(values[8], 1e-9),
            data_seconds=values[5] / count,
            compute_seconds=values[6] / count,
            steps=count,
        )
        self.logs.append(log)
        if self.rank == 0:
            logger.info(
                "step %d epoch %d lr %.2e loss %.4f (cls %.4f box %.4f landmark %.4f) %.1f img/s "
                "data %.3fs compute %.3fs",
                log.step, log.epoch, log.lr, log.loss, log.cls, log.box, log.landmark, log.images_per_second,
                log.data_seconds, log.compute_seconds,
            )
            if self.out_dir is not None:
                with (self.out_dir / self.LOG).open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(log.as_dict()) + "\n")
        if self.on_log is not None:
            self.on_log(log)
        return log

    def _evaluate(self) -> RecallReport | None:
        if self.rank != 0:
            return None
        report = evaluate_recall(self.model_without_ddp, self.eval_images, device=self.device)
        self._train_mode()
        logger.info("step %d recall %.4f (%d / %d faces)", self.step, report.recall, report.num_found, report.num_faces)
        if self.out_dir is not None:
            with (self.out_dir / self.LOG).open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": self.step, "recall": report.recall, "faces": report.num_faces,
                                         "found": report.num_found}) + "\n")
        return report
