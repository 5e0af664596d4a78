#!/usr/bin/env python
"""Train a RetinaFace detector with Ray Train (``TorchTrainer``, DDP over ``--num-workers``).

From the ImageNet backbone, one CPU worker (the default)::

    python jobs/train_detector.py --labels widerface/train/label.txt --preset reference \\
        --init-backbone mobilenetV1X0.25_imagenet_pretrain.tar --epochs 250 --batch-size 32 --out runs/mnet

Fine-tune a detector checkpoint on two DDP workers for a fixed number of steps::

    python jobs/train_detector.py --labels label.txt --preset reference --init mobilenet0.25_Final.pth \\
        --max-steps 500 --lr 1e-5 --freeze-bn --batch-size 8 --num-workers 2 --out runs/ft

Continue an interrupted run exactly (same arguments plus ``--resume``; ``DIR/last.pt`` by default)::

    python jobs/train_detector.py ... --out runs/mnet --resume

Writes ``DIR/last.pt`` (at every ``--checkpoint-every`` steps and at the end; plus ``DIR/step_*.pt``),
``DIR/train_log.jsonl`` (loss terms, learning rate, images/s and the data-vs-compute split of step
time) and ``DIR/train_config.json``. Any checkpoint loads with
``python -m detector detect --weights DIR/last.pt``. ``--batch-size`` is per worker.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

try:
    import detector  # noqa: F401  (installed editable)
except ImportError:  # running from a plain checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.training.augment import AugmentConfig
from detector.training.trainer import (
    TrainConfig,
    available_train_presets,
    get_train_preset,
)

__all__ = ["build_parser", "config_from_args", "main", "train_loop_per_worker"]

logger = logging.getLogger("train_detector")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    data = parser.add_argument_group("data and model")
    data.add_argument("--labels", type=Path, required=True, help="retinaface_gt_v1.1 label.txt (images/ beside it)")
    data.add_argument("--images-dir", type=Path, default=None, help="image folder, if not images/ beside --labels")
    data.add_argument("--preset", default="reference", choices=available_train_presets(), help="training recipe")
    data.add_argument("--model", default=None, help="model preset overriding the recipe's (e.g. mobilenet0.25)")
    init = data.add_mutually_exclusive_group(required=True)
    init.add_argument("--init-backbone", type=Path, help="ImageNet backbone checkpoint to start from")
    init.add_argument("--init", type=Path, help="detector checkpoint (biubug6 .pth or ours) to start from")
    data.add_argument("--eval-labels", type=Path, default=None, help="label file for periodic recall evaluation")

    run = parser.add_argument_group("schedule")
    length = run.add_mutually_exclusive_group()
    length.add_argument("--max-steps", type=int, default=None, help="optimiser steps (overrides the epochs)")
    length.add_argument("--epochs", type=int, default=None, help="epochs (default: the preset's)")
    run.add_argument("--batch-size", type=int, default=None, help="images per step per worker (default: preset)")
    run.add_argument("--lr", type=float, default=None, help="peak learning rate (default: preset)")
    run.add_argument("--image-size", type=int, default=None, help="square training size (default: preset)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--grad-clip", type=float, default=None, help="clip the gradient norm to this value")
    run.add_argument("--freeze-bn", action="store_true",
                     help="keep BatchNorm statistics fixed (fine-tuning with small per-worker batches)")
    run.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    run.add_argument("--amp-dtype", choices=("float16", "bfloat16"), default="float16")

    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, required=True, help="output folder (checkpoints, logs)")
    out.add_argument("--resume", nargs="?", const="last", default=None,
                     help="resume from a checkpoint (default DIR/last.pt)")
    out.add_argument("--checkpoint-every", type=int, default=0, help="also keep DIR/step_N.pt every N steps")
    out.add_argument("--eval-every", type=int, default=0, help="evaluate recall every N steps (needs --eval-labels)")
    out.add_argument("--log-every", type=int, default=10)
    out.add_argument("--no-progress", action="store_true")

    workers = parser.add_argument_group("workers")
    workers.add_argument("--num-workers", type=int, default=1, help="DDP training workers (Ray Train)")
    workers.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    workers.add_argument("--cpus-per-worker", type=int, default=1, help="CPUs (and torch threads) per worker")
    workers.add_argument("--loader-workers", type=int, default=None, help="DataLoader processes per worker")
    workers.add_argument("--ray-address", default=None, help="connect to this Ray cluster instead of starting one")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The preset with the command line's overrides applied."""
    config = get_train_preset(args.preset)
    changes: dict[str, Any] = {"seed": args.seed, "amp": not args.no_amp, "amp_dtype": args.amp_dtype,
                               "checkpoint_every": args.checkpoint_every, "eval_every": args.eval_every,
                               "log_every": args.log_every, "grad_clip_norm": args.grad_clip,
                               "freeze_batchnorm": args.freeze_bn}
    if args.model is not None:
        changes["model"] = args.model
    if args.max_steps is not None:
        changes["max_steps"] = args.max_steps
    if args.epochs is not None:
        changes["epochs"] = args.epochs
    if args.batch_size is not None:
        changes["batch_size"] = args.batch_size
    if args.lr is not None:
        changes["optimizer"] = dataclasses.replace(config.optimizer, lr=args.lr)
    if args.loader_workers is not None:
        changes["loader_workers"] = args.loader_workers
    augment: AugmentConfig = config.augment
    if args.image_size is not None:
        augment = dataclasses.replace(augment, image_size=args.image_size)
    from detector.config import get_preset

    model_preset = get_preset(changes.get("model", config.model))
    changes["augment"] = dataclasses.replace(augment, mean_bgr=tuple(float(v) for v in model_preset.mean_bgr))
    return dataclasses.replace(config, **changes)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: one DDP rank (process group set up by Ray)."""
    import ray.train
    import torch

    from detector.training.dataset import WiderFaceTrainDataset, parse_label_file
    from detector.training.trainer import Trainer, build_training_model

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(int(loop_config["threads"]))
    context = ray.train.get_context()
    rank = context.get_world_rank()
    if loop_config["use_gpu"]:
        import ray.train.torch

        device = ray.train.torch.get_device()
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    config = TrainConfig.from_dict(loop_config["train_config"])
    dataset = WiderFaceTrainDataset(
        labels=loop_config["labels"], images_dir=loop_config["images_dir"], augment=config.augment, seed=config.seed,
        cache_images=config.cache_images,
    )
    eval_images = parse_label_file(loop_config["eval_labels"]) if loop_config["eval_labels"] else ()
    model = build_training_model(config, init_backbone=loop_config["init_backbone"], init=loop_config["init"])

    def report(log) -> None:
        ray.train.report(log.as_dict())

    trainer = Trainer(
        config=config,
        model=model,
        dataset=dataset,
        device=device,
        out_dir=loop_config["out"],
        resume_from=loop_config["resume"],
        eval_images=eval_images,
        progress=loop_config["progress"] and rank == 0,
        on_log=report,
    )
    if rank == 0:
        logger.info(
            "rank 0 of %d on %s: %d images, %d steps per epoch, steps %d..%d",
            trainer.world_size, device, len(dataset), trainer.steps_per_epoch, trainer.step, trainer.total_steps,
        )
    trainer.fit()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.num_workers < 1:
        raise SystemExit("--num-workers must be at least 1")
    if args.eval_every and args.eval_labels is None:
        raise SystemExit("--eval-every needs --eval-labels")
    config = config_from_args(args)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    resume = None
    if args.resume is not None:
        resume = out / "last.pt" if args.resume == "last" else Path(args.resume).resolve()
        if not resume.is_file():
            raise SystemExit(f"--resume: no checkpoint at {resume}")
    (out / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2))

    import ray
    import ray.cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # This file is not an importable module on the workers: ship the loop function by value.
    module = sys.modules[__name__]
    if __name__ != "__main__":
        ray.cloudpickle.register_pickle_by_value(module)

    started_ray = False
    if not ray.is_initialized():
        ray.init(address=args.ray_address, include_dashboard=False, log_to_driver=True)
        started_ray = True
    loop_config = {
        "train_config": config.to_dict(),
        "labels": str(args.labels.resolve()),
        "images_dir": str(args.images_dir.resolve()) if args.images_dir else None,
        "eval_labels": str(args.eval_labels.resolve()) if args.eval_labels else None,
        "init_backbone": str(args.init_backbone.resolve()) if args.init_backbone else None,
        "init": str(args.init.resolve()) if args.init else None,
        "out": str(out),
        "resume": str(resume) if resume else None,
        "threads": args.cpus_per_worker,
        "use_gpu": args.use_gpu,
        "progress": not args.no_progress,
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=args.num_workers, use_gpu=args.use_gpu, resources_per_worker={"CPU": args.cpus_per_worker}
        ),
        run_config=RunConfig(name="train_detector", storage_path=str(out / "ray")),
    )
    try:
        result = trainer.fit()
    finally:
        if __name__ != "__main__":
            ray.cloudpickle.unregister_pickle_by_value(module)
        if started_ray:
            ray.shutdown()
    del result  # fit() raises if a worker failed; the metrics are in train_log.jsonl
    log_lines = (out / "train_log.jsonl").read_text().splitlines() if (out / "train_log.jsonl").exists() else []
    last_log = json.loads(log_lines[-1]) if log_lines else {}
    summary = {"checkpoint": str(out / "last.pt"), "last_log": last_log, "num_workers": args.num_workers}
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    main()
