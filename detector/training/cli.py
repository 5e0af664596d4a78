"""Train a RetinaFace detector with Ray Train (``TorchTrainer``, DDP over ``--num-workers``).

From the ImageNet backbone, one CPU worker (the default)::

    faceprep train --labels widerface/train/label.txt --preset reference \\
        --init-backbone mobilenetV1X0.25_imagenet_pretrain.tar --epochs 250 --batch-size 32 --out runs/mnet

Fine-tune a detector checkpoint on two DDP workers for a fixed number of steps::

    faceprep train --labels label.txt --preset reference --init mobilenet0.25_Final.pth \\
        --max-steps 500 --lr 1e-5 --freeze-bn --batch-size 8 --num-workers 2 --out runs/ft

Continue an interrupted run exactly (same arguments plus ``--resume``; ``DIR/last.pt`` by default)::

    faceprep train ... --out runs/mnet --resume

Writes ``DIR/last.pt`` (at every ``--checkpoint-every`` steps and at the end; plus ``DIR/step_*.pt``),
``DIR/train_log.jsonl`` (loss terms, learning rate, images/s and the data-vs-compute split of step
time) and ``DIR/train_config.json``. Any checkpoint loads with
``faceprep detect --weights DIR/last.pt``. ``--batch-size`` is per worker.
``python jobs/train_detector.py`` takes the same arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

from common.ray_init import RayConnectError
from detector.config import get_preset
from detector.training.config import TrainConfig, available_train_presets, get_train_preset
from detector.training.ray_job import TrainingJobConfig, run_training_job

__all__ = ["build_parser", "command", "config_from_args", "main", "train_config_from_args"]


def build_parser(prog: str = "faceprep train") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    data = parser.add_argument_group("data and model")
    data.add_argument("--labels", type=Path, required=True, help="retinaface_gt_v1.1 label.txt (images/ beside it)")
    data.add_argument("--images-dir", type=Path, default=None, help="image folder, if not images/ beside --labels")
    data.add_argument("--preset", default="reference", choices=available_train_presets(),
                      help="training recipe (default reference)")
    data.add_argument("--model", default=None,
                      help="model preset overriding the recipe's (e.g. mobilenet0.25; default: the recipe's)")
    init = data.add_mutually_exclusive_group(required=True)
    init.add_argument("--init-backbone", type=Path, help="ImageNet backbone checkpoint to start from")
    init.add_argument("--init", type=Path, help="detector checkpoint (biubug6 .pth or ours) to start from")
    data.add_argument("--eval-labels", type=Path, default=None, help="label file for periodic recall evaluation")
    data.add_argument("--val-images", type=Path, help="WIDER val images DIR/<event>/<image>.jpg: AP every epoch")
    data.add_argument("--val-gt", type=Path, help="folder of the wider_*_val.mat files (with --val-images)")

    run = parser.add_argument_group("schedule")
    length = run.add_mutually_exclusive_group()
    length.add_argument("--max-steps", type=int, default=None, help="optimiser steps (overrides the epochs)")
    length.add_argument("--epochs", type=int, default=None, help="epochs (default: the preset's)")
    run.add_argument("--batch-size", type=int, default=None, help="images per step per worker (default: preset)")
    run.add_argument("--lr", type=float, default=None, help="peak learning rate (default: preset)")
    run.add_argument("--image-size", type=int, default=None, help="square training size (default: preset)")
    run.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    run.add_argument("--grad-clip", type=float, default=None,
                     help="clip the gradient norm to this value (default: no clipping)")
    run.add_argument("--freeze-bn", action="store_true",
                     help="keep BatchNorm statistics fixed (fine-tuning with small per-worker batches)")
    run.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    run.add_argument("--amp-dtype", choices=("float16", "bfloat16"), default="float16",
                     help="mixed-precision dtype on CUDA (default float16)")

    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, required=True, help="output folder (checkpoints, logs)")
    out.add_argument("--resume", nargs="?", const="last", default=None,
                     help="resume from a checkpoint (with no value: DIR/last.pt)")
    out.add_argument("--checkpoint-every", type=int, default=0,
                     help="also keep DIR/step_N.pt every N steps (default 0: only last.pt)")
    out.add_argument("--eval-every", type=int, default=0,
                     help="evaluate recall every N steps (needs --eval-labels; default 0: never)")
    out.add_argument("--log-every", type=int, default=10, help="log a line every N steps (default 10)")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")

    workers = parser.add_argument_group("workers")
    workers.add_argument("--num-workers", type=int, default=1, help="DDP training workers (Ray Train; default 1)")
    workers.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    workers.add_argument("--cpus-per-worker", type=int, default=1,
                         help="CPUs (and torch threads) per worker (default 1)")
    workers.add_argument("--loader-workers", type=int, default=None,
                         help="DataLoader processes per worker (default: the preset's)")
    workers.add_argument("--ray-address", default=None, help="connect to this Ray cluster (default: start a local Ray)")
    return parser


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The preset with the command line's overrides applied."""
    config = get_train_preset(args.preset)
    changes: dict[str, Any] = {"seed": args.seed, "amp": not args.no_amp, "amp_dtype": args.amp_dtype,
                               "checkpoint_every": args.checkpoint_every, "eval_every": args.eval_every,
                               "log_every": args.log_every, "grad_clip_norm": args.grad_clip,
                               "freeze_batchnorm": args.freeze_bn}
    overrides = {"model": args.model, "max_steps": args.max_steps, "epochs": args.epochs,
                 "batch_size": args.batch_size, "loader_workers": args.loader_workers}
    changes.update({name: value for name, value in overrides.items() if value is not None})
    if args.lr is not None:
        changes["optimizer"] = dataclasses.replace(config.optimizer, lr=args.lr)
    augment = config.augment
    if args.image_size is not None:
        augment = dataclasses.replace(augment, image_size=args.image_size)
    model_preset = get_preset(changes.get("model", config.model))
    changes["augment"] = dataclasses.replace(augment, mean_bgr=tuple(float(v) for v in model_preset.mean_bgr))
    return dataclasses.replace(config, **changes)


def config_from_args(argv: list[str] | None = None, *, prog: str = "faceprep train") -> TrainingJobConfig:
    """Parse ``argv`` into the job's config; exits with the reason on an invalid combination."""
    args = build_parser(prog).parse_args(argv)
    try:
        return TrainingJobConfig(
            train=train_config_from_args(args), labels=args.labels, out=args.out,
            init_backbone=args.init_backbone, init=args.init, images_dir=args.images_dir,
            eval_labels=args.eval_labels, val_images=args.val_images, val_gt=args.val_gt, resume=args.resume,
            num_workers=args.num_workers,
            use_gpu=args.use_gpu, cpus_per_worker=args.cpus_per_worker, ray_address=args.ray_address,
            progress=not args.no_progress,
        )
    except ValueError as exc:
        raise SystemExit(f"{prog}: {exc}") from None


def main(argv: list[str] | None = None, *, prog: str = "faceprep train") -> dict[str, Any]:
    """Parse ``argv`` (default ``sys.argv[1:]``), train, print and return the run's summary."""
    config = config_from_args(argv, prog=prog)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        summary = run_training_job(config)
    except FileNotFoundError as exc:
        raise SystemExit(f"--resume: {exc}") from None
    except RayConnectError as exc:
        raise SystemExit(f"{prog}: {exc} (--ray-address)") from None
    print(json.dumps(summary, indent=2))
    return summary


def command(argv: list[str] | None = None, *, prog: str = "faceprep train") -> int:
    """The train command as a program: every worker's log lines shown (Ray's dedup off unless set);
    exit code 0."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    main(argv, prog=prog)
    return 0
