"""A training run on Ray Train: :func:`run_training_job` starts ``TorchTrainer`` (DDP over
``num_workers`` workers, each one :class:`~detector.training.trainer.Trainer` rank).

The output folder gets ``train_config.json`` (the :class:`TrainConfig` as a dict), ``last.pt`` (at
every ``checkpoint_every`` steps and at the end; plus ``step_*.pt``), ``train_log.jsonl`` (loss
terms, learning rate, images/s, data-vs-compute time) and Ray's own files under ``ray/``. Every
checkpoint loads with ``python -m detector detect --weights DIR/last.pt``. ``batch_size`` is per
worker.

Ray is imported when a job runs, not with this module; the worker loop is this module's
:func:`train_loop_per_worker`, which Ray's workers import by name.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detector.training.config import TrainConfig
from detector.training.dataset import WiderFaceTrainDataset, parse_label_file
from detector.training.model_init import build_training_model
from detector.training.trainer import StepLog, Trainer

if TYPE_CHECKING:  # pragma: no cover
    from detector.evaluation.val import WiderValSet

__all__ = ["CONFIG_NAME", "TrainingJobConfig", "run_training_job", "train_loop_per_worker"]

logger = logging.getLogger(__name__)

CONFIG_NAME = "train_config.json"


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainingJobConfig:
    """One training run on Ray Train; paths are made absolute on construction (the workers may
    start elsewhere).

    Attributes:
        train: the run (:class:`TrainConfig`; its ``batch_size`` is per worker).
        labels: retinaface_gt_v1.1 ``label.txt``.
        out: output folder (checkpoints, logs, ``train_config.json``).
        init_backbone: ImageNet backbone checkpoint to start from; or
        init: detector checkpoint (biubug6 ``.pth`` or ours) to start from (exactly one of the two).
        images_dir: image folder, if not ``images/`` beside ``labels``.
        eval_labels: label file for the recall evaluation every ``train.eval_every`` steps.
        val_images: WIDER FACE val images (``<dir>/<event>/<image>.jpg``): easy / medium / hard AP
            with the official protocol every epoch and at the end (rank 0, ``train_log.jsonl``);
            needs ``val_gt``, the folder of the ``wider_*_val.mat`` files.
        resume: checkpoint to continue exactly (``"last"``: ``out/last.pt``; ``None``: start anew).
        num_workers: DDP workers (Ray Train).
        use_gpu: one GPU per worker.
        cpus_per_worker: CPUs reserved, and torch intra-op threads, per worker.
        ray_address: Ray cluster to connect to (``None``: the Ray already initialised in this
            process, else a new local one).
        progress: progress bar on rank 0.
    """

    train: TrainConfig
    labels: Path
    out: Path
    init_backbone: Path | None = None
    init: Path | None = None
    images_dir: Path | None = None
    eval_labels: Path | None = None
    val_images: Path | None = None
    val_gt: Path | None = None
    resume: Path | str | None = None
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: int = 1
    ray_address: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("labels", "out", "init_backbone", "init", "images_dir", "eval_labels", "val_images", "val_gt"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value).resolve())
        if self.resume is not None:
            resume = self.out / Trainer.LAST if str(self.resume) == "last" else Path(self.resume).resolve()
            object.__setattr__(self, "resume", resume)
        if not isinstance(self.train, TrainConfig):
            raise TypeError(f"train must be a TrainConfig, got {type(self.train).__name__}")
        if (self.init_backbone is None) == (self.init is None):
            raise ValueError("give exactly one of init_backbone and init")
        if self.num_workers < 1 or self.cpus_per_worker < 1:
            raise ValueError("num_workers and cpus_per_worker must be at least 1")
        if self.train.eval_every and self.eval_labels is None:
            raise ValueError("eval_every needs eval_labels")
        if (self.val_images is None) != (self.val_gt is None):
            raise ValueError("val_images and val_gt go together (the WIDER val images and their ground-truth folder)")

    def val_set(self) -> WiderValSet | None:
        """The WIDER val set to score every epoch (``None`` without ``val_images``)."""
        if self.val_images is None:
            return None
        from detector.evaluation.val import WiderValSet

        return WiderValSet(images_dir=self.val_images, gt_dir=self.val_gt)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: one DDP rank (process group set up by Ray).

    ``loop_config["job"]`` is the :class:`TrainingJobConfig`.
    """
    import ray.train
    import torch

    job: TrainingJobConfig = loop_config["job"]
    config = job.train
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(job.cpus_per_worker)
    rank = ray.train.get_context().get_world_rank()
    if job.use_gpu:
        import ray.train.torch

        device = ray.train.torch.get_device()
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dataset = WiderFaceTrainDataset(
        labels=job.labels, images_dir=job.images_dir, augment=config.augment, seed=config.seed,
        cache_images=config.cache_images,
    )
    eval_images = parse_label_file(job.eval_labels) if job.eval_labels is not None else ()
    model = build_training_model(config, init_backbone=job.init_backbone, init=job.init)

    def report(log: StepLog) -> None:
        ray.train.report(log.as_dict())

    trainer = Trainer(
        config=config,
        model=model,
        dataset=dataset,
        device=device,
        out_dir=job.out,
        resume_from=job.resume,
        eval_images=eval_images,
        val=job.val_set(),
        progress=job.progress and rank == 0,
        on_log=report,
    )
    if rank == 0:
        logger.info(
            "rank 0 of %d on %s: %d images, %d steps per epoch, steps %d..%d",
            trainer.world_size, device, len(dataset), trainer.steps_per_epoch, trainer.step, trainer.total_steps,
        )
    trainer.fit()


def run_training_job(config: TrainingJobConfig) -> dict[str, Any]:
    """Train on Ray Train until ``config.train``'s end; raises if a worker failed.

    Returns:
        ``{"checkpoint": out/last.pt, "last_log": the last train_log.jsonl record (or {}),
        "num_workers": ...}``.
    """
    if config.resume is not None and not config.resume.is_file():
        raise FileNotFoundError(f"no checkpoint at {config.resume} to resume from")
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_NAME).write_text(json.dumps(config.train.to_dict(), indent=2))

    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from common.ray_init import ray_session

    with ray_session(config.ray_address, log_to_driver=True):
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"job": config},
            scaling_config=ScalingConfig(
                num_workers=config.num_workers, use_gpu=config.use_gpu,
                resources_per_worker={"CPU": config.cpus_per_worker},
            ),
            run_config=RunConfig(name="train_detector", storage_path=str(out / "ray")),
        )
        trainer.fit()  # raises if a worker failed; the metrics are in train_log.jsonl
    log_path = out / Trainer.LOG
    log_lines = log_path.read_text().splitlines() if log_path.exists() else []
    return {
        "checkpoint": str(out / Trainer.LAST),
        "last_log": json.loads(log_lines[-1]) if log_lines else {},
        "num_workers": config.num_workers,
    }
