"""Training throughput: images/s and the data-vs-compute split of a training step.

Runs ``--warmup`` + ``--steps`` optimiser steps of the real training loop (augmentation in
DataLoader workers, matching, OHEM loss, SGD, AMP on CUDA) on widerface_mini (or ``--labels``) and
reports, over the timed steps only, images/s and the mean time a step waited for data versus the
time it computed (forward, loss, backward, optimiser step; device-synchronised).

    python benchmarks/bench_train_step.py                                  # CPU, 640 px, batch 8
    python benchmarks/bench_train_step.py --device cuda --batch-size 32 --loader-workers 8
    python benchmarks/bench_train_step.py --device cuda --no-amp --json out.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from detector.training import Trainer, WiderFaceTrainDataset, build_training_model, get_train_preset  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--preset", default="reference")
    parser.add_argument("--labels", type=Path, default=None, help="label file (default: widerface_mini)")
    parser.add_argument("--init-backbone", type=Path, default=None,
                        help="backbone checkpoint (default: the shared ImageNet MobileNet-0.25)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=640)
    parser.add_argument("--loader-workers", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--no-amp", action="store_true")
    parser.add_argument("--amp-dtype", choices=("float16", "bfloat16"), default="float16")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.labels is None or args.init_backbone is None:
        from tests.shared import asset

        labels = args.labels or asset("widerface_mini/train/label.txt")
        backbone = args.init_backbone or asset("weights/mobilenetV1X0.25_imagenet_pretrain.tar")
    else:
        labels, backbone = args.labels, args.init_backbone
    base = get_train_preset(args.preset)
    config = dataclasses.replace(
        base,
        augment=dataclasses.replace(base.augment, image_size=args.image_size),
        batch_size=args.batch_size,
        max_steps=args.warmup + args.steps,
        loader_workers=args.loader_workers,
        cache_images=True,
        amp=not args.no_amp,
        amp_dtype=args.amp_dtype,
        log_every=1,
    )
    dataset = WiderFaceTrainDataset(labels=labels, augment=config.augment, seed=config.seed, cache_images=True)
    model = build_training_model(config, init_backbone=backbone)
    trainer = Trainer(config=config, model=model, dataset=dataset, device=device, progress=False)
    logs = trainer.fit()[args.warmup:]  # one log per step; one DataLoader for all of them
    images_per_step = trainer.world_size * config.batch_size
    wall = sum(images_per_step / log.images_per_second for log in logs)
    step_seconds = wall / len(logs)
    data_seconds = sum(log.data_seconds for log in logs) / len(logs)
    compute_seconds = sum(log.compute_seconds for log in logs) / len(logs)
    result = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "amp": trainer.amp,
        "amp_dtype": args.amp_dtype if trainer.amp else None,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "loader_workers": args.loader_workers,
        "timed_steps": args.steps,
        "images_per_second": images_per_step * len(logs) / wall,
        "step_seconds": step_seconds,
        "data_seconds_per_step": data_seconds,
        "compute_seconds_per_step": compute_seconds,
        "data_fraction": data_seconds / step_seconds,
        "loss_last_step": logs[-1].loss,
    }
    if device.type == "cuda":
        result["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
