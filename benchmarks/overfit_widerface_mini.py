"""Overfit MobileNet-0.25 RetinaFace (from the ImageNet backbone) on widerface_mini, on CPU.

Acceptance check of the training stack: every loss term must fall by >= 70% (mean of the first
``--window`` steps vs the last ``--window``), and the trained model must then find >= 90% of the
labelled faces wider than 20 px on its own training photos (original size, IoU >= 0.5, score >= 0.5).

    python benchmarks/overfit_widerface_mini.py --out runs/overfit        # full run (tens of minutes)
    python benchmarks/overfit_widerface_mini.py --steps 60 --out /tmp/o   # quick look

Writes ``OUT/last.pt`` (loadable by ``python -m detector detect --weights``), ``OUT/train_log.jsonl``
and ``OUT/summary.json``; prints the summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from detector.training import (  # noqa: E402
    AugmentConfig,
    CropConfig,
    OptimizerConfig,
    ScheduleConfig,
    Trainer,
    WiderFaceTrainDataset,
    build_training_model,
    evaluate_recall,
    get_train_preset,
)
from tests.shared import asset  # noqa: E402

TERMS = ("loss", "cls", "box", "landmark")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=640)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--crop-scales", type=float, nargs="+", default=[0.8, 1.0],
                        help="square crop sizes as fractions of the short side")
    parser.add_argument("--photometric", action="store_true", help="also apply colour distortion")
    parser.add_argument("--window", type=int, default=20, help="steps averaged for the before/after loss")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    parser.add_argument("--loader-workers", type=int, default=1)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    base = get_train_preset("reference-mobilenet0.25")
    config = dataclasses.replace(
        base,
        augment=AugmentConfig(
            image_size=args.image_size,
            crop=CropConfig(sampling="choices", scale_choices=tuple(args.crop_scales)),
            photometric=base.augment.photometric if args.photometric else None,
            flip_probability=0.5,
            random_interpolation=False,
        ),
        optimizer=OptimizerConfig(lr=args.lr),
        batch_size=args.batch_size,
        max_steps=args.steps,
        seed=args.seed,
        loader_workers=args.loader_workers,
        cache_images=True,
        log_every=10,
    )
    labels = asset("widerface_mini/train/label.txt")
    dataset = WiderFaceTrainDataset(labels=labels, augment=config.augment, seed=config.seed, cache_images=True)
    steps_per_epoch = -(-len(dataset) // config.batch_size)
    config = dataclasses.replace(
        config,
        schedule=ScheduleConfig(
            warmup_epochs=args.warmup_steps / steps_per_epoch,
            warmup_start_factor=0.1,
            milestones=(0.75 * args.steps / steps_per_epoch, 0.9 * args.steps / steps_per_epoch),
            gamma=0.1,
        ),
    )
    model = build_training_model(config, init_backbone=asset("weights/mobilenetV1X0.25_imagenet_pretrain.tar"))
    trainer = Trainer(config=config, model=model, dataset=dataset, device="cpu", out_dir=args.out)
    start = time.perf_counter()
    trainer.fit()
    train_seconds = time.perf_counter() - start

    window = min(args.window, len(trainer.history) // 2)
    first, last = trainer.history[:window], trainer.history[-window:]
    terms = {}
    for term in TERMS:
        before = sum(h[term] for h in first) / window
        after = sum(h[term] for h in last) / window
        terms[term] = {"before": before, "after": after, "drop_percent": 100.0 * (1.0 - after / before)}

    start = time.perf_counter()
    report = evaluate_recall(trainer.model_without_ddp, dataset.images, device="cpu", min_face_width=20.0,
                             iou_threshold=0.5, score_threshold=0.5)
    summary = {
        "config": config.to_dict(),
        "steps": trainer.step,
        "train_seconds": train_seconds,
        "seconds_per_step": train_seconds / max(1, trainer.step),
        "loss_window_steps": window,
        "terms": terms,
        "recall": report.recall,
        "faces_wider_than_20px": report.num_faces,
        "found": report.num_found,
        "per_image": [{"image": Path(p).name, "faces": n, "found": f} for p, n, f in report.per_image],
        "eval_seconds": time.perf_counter() - start,
        "checkpoint": str(args.out / Trainer.LAST),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    printable = {k: v for k, v in summary.items() if k != "config"}
    print(json.dumps(printable, indent=2))
    return summary


if __name__ == "__main__":
    main()
