"""What defines a training run: :class:`TrainConfig` (frozen, nested) and its named presets.

:func:`get_train_preset` gives the reference's (biubug6/Pytorch_Retinaface ``train.py``) and the
paper's recipes; :meth:`TrainConfig.to_dict` / :meth:`TrainConfig.from_dict` store a run's config in
its checkpoints (plain builtins, loadable with ``weights_only``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from detector.training.augment import AugmentConfig, CropConfig, PhotometricConfig
from detector.training.loss import LossConfig
from detector.training.matcher import MatcherConfig

__all__ = [
    "OptimizerConfig",
    "ScheduleConfig",
    "TrainConfig",
    "TRAIN_PRESETS",
    "available_train_presets",
    "get_train_preset",
]


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


# ----------------------------------------------------------------------------------------------
# presets


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
