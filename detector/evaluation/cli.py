"""WIDER FACE validation evaluation: easy / medium / hard AP with the official protocol.

Score an existing submission folder::

    faceprep eval-widerface --pred widerface_txt/ --gt ground_truth/ --json ap.json

or run the detector over a WIDER val image folder (``<images>/<event>/<image>.jpg``), write the
predictions under ``--out``, then score them::

    faceprep eval-widerface --images val/images --gt ground_truth/ --detect-resize widerface \\
        --out runs/eval --json runs/eval/ap.json [--tta]

The detector's weights are found as by every command: ``--weights``, else ``$FACEPREP_WEIGHTS``
(a file or a folder holding it), else the cache (``$FACEPREP_CACHE`` or ``~/.cache/faceprep``), else
a download. ``python jobs/eval_widerface.py`` takes the same arguments.

When only some validation images have predictions (or images), those are evaluated and the count
is reported; ``--require-all`` makes that an error. One PR-curve PNG per setting is written to
``--out`` unless ``--no-plot``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from detector.api import PostprocessConfig
from detector.evaluation.job import DetectorRunConfig, EvalJobConfig, run_widerface_eval
from detector.evaluation.predict import BOX_FORMATS
from detector.hub import CheckpointError
from detector.spec import add_detector_arguments, spec_from_args

__all__ = ["build_parser", "config_from_args", "main"]


def build_parser(prog: str = "faceprep eval-widerface") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("what to score (one of)")
    src.add_argument("--pred", type=Path, metavar="DIR",
                     help="submission folder: DIR/<event>/<image>.txt (name, count, 'x y w h score' lines)")
    src.add_argument("--images", type=Path, metavar="DIR",
                     help="WIDER val images DIR/<event>/<image>.jpg to run the detector on (weights: see --weights)")
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

    det = add_detector_arguments(p, group_title="detector (--images mode)")
    det.add_argument("--batch-size", type=int, default=4,
                     help="images per forward pass; only same-size images are batched (default: %(default)s)")
    det.add_argument("--conf-threshold", type=float, default=0.02, help="default: %(default)s")
    det.add_argument("--nms-threshold", type=float, default=0.4, help="default: %(default)s")
    det.add_argument("--box-format", choices=BOX_FORMATS, default="float",
                     help="prediction boxes as detected ('float', default) or as biubug6's test_widerface.py "
                          "writes them ('reference-int': x, y, x2, y2 truncated to integers), to compare with "
                          "its published table")
    det.add_argument("--tta", action="store_true",
                     help="flip + multi-scale test-time augmentation merged by box voting at IoU 0.4 "
                          "(replaces --detect-resize)")
    det.add_argument("--tta-scales", default="500,800,1100,1400,1700",
                     help="TTA short sides, comma separated (default: %(default)s, the paper's)")
    det.add_argument("--tta-max-size", type=int, help="cap the resized long side in TTA (default: none)")
    return p


def config_from_args(argv: list[str] | None = None, *, prog: str = "faceprep eval-widerface") -> EvalJobConfig:
    """Parse ``argv`` into the job's config; exits with the reason on an invalid combination."""
    parser = build_parser(prog)
    a = parser.parse_args(argv)
    if (a.pred is None) == (a.images is None):
        parser.error("give exactly one of --pred DIR or --images DIR")
    run = None
    if a.images is not None:
        try:
            scales = tuple(int(s) for s in a.tta_scales.split(",") if s.strip())
        except ValueError:
            parser.error(f"--tta-scales must be comma-separated integers, got {a.tta_scales!r}")
        postprocess = PostprocessConfig(conf_threshold=a.conf_threshold, nms_threshold=a.nms_threshold)
        run = DetectorRunConfig(
            images_dir=a.images, detector=spec_from_args(a, postprocess=postprocess), batch_size=a.batch_size,
            tta=a.tta, tta_scales=scales, tta_max_size=a.tta_max_size, box_format=a.box_format)
    return EvalJobConfig(gt_dir=a.gt, out_dir=a.out, pred_dir=a.pred, run=run,
                         json_path=a.json, plot=a.plot, require_all=a.require_all,
                         iou_threshold=a.iou, progress=not a.quiet)


def main(argv: list[str] | None = None, *, prog: str = "faceprep eval-widerface") -> int:
    """The eval-widerface command: 0 scored; 2 nothing done (the detector's weights or runtime missing)."""
    config = config_from_args(argv, prog=prog)
    try:
        if config.run is not None:
            config.run.detector.check()  # weights found the same way as every command, before any work
        run_widerface_eval(config)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
