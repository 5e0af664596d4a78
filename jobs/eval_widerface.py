#!/usr/bin/env python
"""WIDER FACE validation evaluation: easy / medium / hard AP with the official protocol.

Score an existing submission folder::

    python jobs/eval_widerface.py --pred widerface_txt/ --gt ground_truth/ --json ap.json

or run the detector over a WIDER val image folder (``<images>/<event>/<image>.jpg``), write the
predictions under ``--out``, then score them::

    python jobs/eval_widerface.py --images val/images --weights mobilenet0.25.pth \\
        --gt ground_truth/ --resize widerface --out runs/eval --json runs/eval/ap.json [--tta]

When only some validation images have predictions (or images), those are evaluated and the count
is reported; ``--require-all`` makes that an error. One PR-curve PNG per setting is written to
``--out`` unless ``--no-plot``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

try:
    import detector  # noqa: F401  (installed editable)
except ImportError:  # running from a plain checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.evaluation.widerface import (
    WiderFaceEvalConfig,
    WiderFaceResult,
    evaluate_folder,
    load_ground_truth,
    plot_pr_curves,
    predict_submission,
)


@dataclass(frozen=True)
class DetectorRunConfig:
    """How predictions are produced in ``--images`` mode."""

    images_dir: Path
    weights: str
    preset: str | None = None
    device: str = "cpu"
    fp16: bool = False
    resize: str = "original"
    batch_size: int = 4
    conf_threshold: float = 0.02
    nms_threshold: float = 0.4
    tta: bool = False
    tta_scales: tuple[int, ...] = (500, 800, 1100, 1400, 1700)
    tta_max_size: int | None = None


@dataclass(frozen=True)
class EvalJobConfig:
    gt_dir: Path
    out_dir: Path
    pred_dir: Path | None = None
    run: DetectorRunConfig | None = None
    json_path: Path | None = None
    plot: bool = True
    require_all: bool = False
    iou_threshold: float = 0.5
    progress: bool = True

    def __post_init__(self) -> None:
        if (self.pred_dir is None) == (self.run is None):
            raise ValueError("give exactly one of --pred or --images/--weights")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("what to score (one of)")
    src.add_argument("--pred", type=Path, metavar="DIR",
                     help="submission folder: DIR/<event>/<image>.txt (name, count, 'x y w h score' lines)")
    src.add_argument("--images", type=Path, metavar="DIR",
                     help="WIDER val images DIR/<event>/<image>.jpg to run the detector on (needs --weights)")
    p.add_argument("--gt", type=Path, required=True, metavar="DIR",
                   help="folder with wider_face_val.mat and wider_{easy,medium,hard}_val.mat")
    p.add_argument("--out", type=Path, default=Path("runs/eval_widerface"), metavar="DIR",
                   help="output folder: predictions/ (--images mode) and pr_curve_<setting>.png "
                        "(default: %(default)s)")
    p.add_argument("--json", type=Path, metavar="PATH",
                   help="write {easy, medium, hard, images_evaluated, ...} here (default: OUT/widerface_ap.json)")
    p.add_argument("--no-plot", dest="plot", action="store_false", help="skip the PR-curve PNGs")
    p.add_argument("--require-all", action="store_true",
                   help="fail unless all 3,226 validation images have predictions")
    p.add_argument("--iou", type=float, default=0.5, help="matching IoU threshold (default: %(default)s, official)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    det = p.add_argument_group("detector (--images mode)")
    det.add_argument("--weights", help="checkpoint path or registry name (biubug6 .pth or ours)")
    det.add_argument("--preset", help="model preset when the checkpoint does not say (e.g. mobilenet0.25)")
    det.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    det.add_argument("--fp16", action="store_true", help="half precision (CUDA only)")
    det.add_argument("--resize", default="original",
                     help="resize policy: 'original' (no resize, biubug6 --origin_size), 'widerface' "
                          "(short side 1600, long side capped at 2150), 'short:N[,MAX]', 'long:N' "
                          "(default: %(default)s)")
    det.add_argument("--batch-size", type=int, default=4,
                     help="images per forward pass; only same-size images are batched (default: %(default)s)")
    det.add_argument("--conf-threshold", type=float, default=0.02, help="default: %(default)s")
    det.add_argument("--nms-threshold", type=float, default=0.4, help="default: %(default)s")
    det.add_argument("--tta", action="store_true",
                     help="flip + multi-scale test-time augmentation merged by box voting at IoU 0.4 "
                          "(replaces --resize)")
    det.add_argument("--tta-scales", default="500,800,1100,1400,1700",
                     help="TTA short sides, comma separated (default: %(default)s, the paper's)")
    det.add_argument("--tta-max-size", type=int, help="cap the resized long side in TTA (default: none)")
    return p


def config_from_args(argv: list[str] | None = None) -> EvalJobConfig:
    parser = build_parser()
    a = parser.parse_args(argv)
    if (a.pred is None) == (a.images is None):
        parser.error("give exactly one of --pred DIR or --images DIR")
    if a.images is not None and not a.weights:
        parser.error("--images needs --weights")
    run = None
    if a.images is not None:
        try:
            scales = tuple(int(s) for s in a.tta_scales.split(",") if s.strip())
        except ValueError:
            parser.error(f"--tta-scales must be comma-separated integers, got {a.tta_scales!r}")
        run = DetectorRunConfig(
            images_dir=a.images, weights=a.weights, preset=a.preset, device=a.device, fp16=a.fp16,
            resize=a.resize, batch_size=a.batch_size, conf_threshold=a.conf_threshold,
            nms_threshold=a.nms_threshold, tta=a.tta, tta_scales=scales, tta_max_size=a.tta_max_size)
    return EvalJobConfig(gt_dir=a.gt, out_dir=a.out, pred_dir=a.pred, run=run,
                         json_path=a.json, plot=a.plot, require_all=a.require_all,
                         iou_threshold=a.iou, progress=not a.quiet)


def predict(run: DetectorRunConfig, pred_dir: Path, *, progress: bool) -> int:
    """Detect faces in ``run.images_dir`` and write a submission folder; returns the image count."""
    from detector.evaluation.tta import TTAConfig, detect_tta
    from detector.inference import Detector, ResizePolicy

    det = Detector.from_weights(run.weights, preset=run.preset, device=run.device, fp16=run.fp16,
                                resize=ResizePolicy.parse(run.resize), conf_threshold=run.conf_threshold,
                                nms_threshold=run.nms_threshold)
    if run.tta:
        tta = TTAConfig(scales=run.tta_scales, max_size=run.tta_max_size)

        def detect(images):
            return detect_tta(det, images, config=tta)
    else:
        detect = det.detect
    return len(predict_submission(run.images_dir, pred_dir, detect, batch_size=run.batch_size,
                                  progress=progress))


def run(config: EvalJobConfig) -> WiderFaceResult:
    t0 = time.perf_counter()
    gt = load_ground_truth(config.gt_dir)
    pred_dir = config.pred_dir
    if config.run is not None:
        pred_dir = config.out_dir / "predictions"
        n = predict(config.run, pred_dir, progress=config.progress)
        print(f"wrote predictions for {n} images to {pred_dir}")
    assert pred_dir is not None
    result = evaluate_folder(pred_dir, ground_truth=gt, config=WiderFaceEvalConfig(iou_threshold=config.iou_threshold),
                             require_all=config.require_all, progress=config.progress)
    print(result.summary())
    if not result.complete:
        print(f"note: {result.images_evaluated} of {result.images_total} validation images evaluated; "
              "AP over a subset is not comparable with full-set numbers")

    summary = result.to_dict()
    summary["pred_dir"] = str(pred_dir)
    if config.run is not None:
        summary["detector"] = {k: (str(v) if isinstance(v, Path) else v)
                               for k, v in dataclasses.asdict(config.run).items()}
    if config.plot:
        label = Path(config.run.weights).stem if config.run is not None else pred_dir.name
        summary["plots"] = [str(p) for p in plot_pr_curves(result, config.out_dir, label=label)]
    json_path = config.json_path or config.out_dir / "widerface_ap.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    json_path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {json_path}" + (f" and {len(summary['plots'])} PR curves in {config.out_dir}" if config.plot else ""))
    return result


def main(argv: list[str] | None = None) -> int:
    run(config_from_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
