"""The RetinaFace training loop: :class:`Trainer` runs a :class:`~detector.training.config.TrainConfig`.

SGD with :class:`~detector.training.schedule.WarmupMultiStepLR`, AMP on CUDA, optional gradient
clipping, DDP when ``torch.distributed`` is initialised, each loss term logged with images/s and the
data-vs-compute split of step time, progress bar, optional periodic recall evaluation
(:func:`~detector.training.recall.evaluate_recall`), and checkpoints in the detector's own format
(:func:`detector.weights.save_checkpoint`: model config + weights) plus the training state
(optimiser, scheduler, grad scaler, step, epoch, train config, RNG states of every rank), so
``python -m detector detect --weights DIR/last.pt`` loads any checkpoint and ``resume_from``
continues a run exactly: the data of step ``s`` depends only on ``(seed, s)`` (see
:class:`detector.training.dataset.StepSampler`).

Nothing here picks a device on import; the caller passes one. The run's starting model comes from
:func:`detector.training.model_init.build_training_model`; :mod:`detector.training.ray_job` runs
this loop on Ray Train workers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from detector.anchors import AnchorGenerator
from detector.box_coder import BoxCoder
from detector.config import ModelConfig
from detector.model import RetinaFace
from detector.training.config import TrainConfig
from detector.training.dataset import (
    LabeledImage,
    StepSampler,
    TrainingBatch,
    WiderFaceTrainDataset,
    collate_training_samples,
)
from detector.training.loss import LossOutput, RetinaFaceLoss
from detector.training.matcher import AnchorMatcher
from detector.training.model_init import architecture
from detector.training.recall import RecallReport, evaluate_recall
from detector.training.rng import capture_rng_state, restore_rng_state
from detector.training.schedule import WarmupMultiStepLR
from detector.weights import read_checkpoint, save_checkpoint

if TYPE_CHECKING:  # pragma: no cover
    from detector.evaluation.val import WiderValSet
    from detector.evaluation.widerface import WiderFaceResult

__all__ = ["StepLog", "Trainer"]

logger = logging.getLogger(__name__)


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
        val: WIDER FACE validation images scored with the official protocol (easy / medium / hard
            AP, :class:`detector.evaluation.val.WiderValSet`) every ``val.every_epochs`` epochs and
            at the end of the run (rank 0; written to ``train_log.jsonl`` as ``{"widerface_val": ...}``).
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
        val: WiderValSet | None = None,
        progress: bool = True,
        on_log: Callable[[StepLog], None] | None = None,
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        self.dataset = dataset
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.eval_images = tuple(eval_images)
        self.val = val
        self.val_results: list[dict[str, Any]] = []
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
        if stored_model_config is not None and architecture(stored_model_config) != architecture(model.config):
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
                if self.val is not None and (
                    self.step % (self.steps_per_epoch * self.val.every_epochs) == 0 or self.step == self.total_steps
                ):
                    self.validate()
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

    def validate(self) -> WiderFaceResult | None:
        """WIDER FACE val AP of the current weights (rank 0; ``None`` on other ranks or without ``val``)."""
        if self.rank != 0 or self.val is None:
            return None
        start = time.perf_counter()
        try:
            result = self.val.evaluate_model(self.model_without_ddp, device=self.device)
        finally:
            self._train_mode()
        record = {"step": self.step, "epoch": self.epoch,
                  "widerface_val": {**{s: result[s] for s in result.settings}, "images": result.images_evaluated,
                                    "seconds": round(time.perf_counter() - start, 3)}}
        self.val_results.append(record)
        logger.info("step %d epoch %d WIDER val AP %s (%d images)", self.step, self.epoch,
                    " / ".join(f"{s} {result[s]:.4f}" for s in result.settings), result.images_evaluated)
        if self.out_dir is not None:
            with (self.out_dir / self.LOG).open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        return result

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
