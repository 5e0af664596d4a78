"""The WIDER FACE validation job: optionally run a detector over the val images, then score.

:func:`run_widerface_eval` takes an :class:`EvalJobConfig`: either an existing submission folder
(``pred_dir``) or a :class:`DetectorRunConfig` whose predictions are first written to
``out_dir/predictions``. It writes ``widerface_ap.json`` (or ``json_path``) and one PR-curve PNG per
setting, and returns the :class:`~detector.evaluation.widerface.WiderFaceResult`.

Scoring a submission needs numpy only: torch (and the detector) are imported when predictions are
made, in :func:`_build_detector` and :func:`detect_function`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from detector.evaluation.predict import SubmissionBoxFormat, check_box_format
from detector.evaluation.widerface import (
    WiderFaceEvalConfig,
    WiderFaceResult,
    evaluate_folder,
    load_ground_truth,
    plot_pr_curves,
    predict_submission,
)
from detector.spec import DetectorSpec

if TYPE_CHECKING:  # pragma: no cover
    from detector.inference import Detections

__all__ = [
    "DetectorRunConfig",
    "EvalJobConfig",
    "SupportsDetect",
    "detect_function",
    "predict",
    "run_widerface_eval",
]


class SupportsDetect(Protocol):
    """What the job needs of a detector (:class:`detector.inference.Detector` has it); TTA also
    reads ``device``."""

    def detect(self, images: Sequence[np.ndarray], *, resize: Any = None,
               conf_threshold: float | None = None) -> list[Detections]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectorRunConfig:
    """How predictions are produced in ``--images`` mode.

    Attributes:
        images_dir: WIDER val images, ``<images_dir>/<event>/<image>.jpg``.
        detector: which detector (:class:`detector.spec.DetectorSpec`: weights, runtime,
            precision, device, resize, postprocess).
        batch_size: images per forward pass (only same-size images share one).
        tta: flip + multi-scale test-time augmentation (replaces ``resize``), at ``tta_scales``
            short sides, the long side capped at ``tta_max_size`` if given.
        box_format: how the prediction files write boxes: ``"float"`` (exact) or
            ``"reference-int"`` (biubug6's ``test_widerface.py``: truncated integer ``x y w h``;
            see :mod:`detector.evaluation.predict`).
    """

    images_dir: Path
    detector: DetectorSpec
    batch_size: int = 4
    tta: bool = False
    tta_scales: tuple[int, ...] = (500, 800, 1100, 1400, 1700)
    tta_max_size: int | None = None
    box_format: SubmissionBoxFormat = "float"

    def __post_init__(self) -> None:
        check_box_format(self.box_format)


@dataclass(frozen=True, slots=True, kw_only=True)
class EvalJobConfig:
    """One evaluation: exactly one of ``pred_dir`` (score a submission) and ``run`` (predict first).

    Attributes:
        gt_dir: folder with ``wider_face_val.mat`` and ``wider_{easy,medium,hard}_val.mat``.
        out_dir: ``predictions/`` (``run`` mode), PR curves and, by default, the JSON summary.
        json_path: where the summary goes (default ``out_dir/widerface_ap.json``).
        plot: write ``pr_curve_<setting>.png``.
        require_all: fail unless every validation image has predictions.
        iou_threshold: matching IoU (0.5 is the official protocol).
        progress: progress bars.
    """

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


def _build_detector(run: DetectorRunConfig) -> SupportsDetect:
    """The detector ``run`` describes (the one place the job constructs one)."""
    return run.detector.build()


def detect_function(detector: SupportsDetect, run: DetectorRunConfig
                    ) -> Callable[[list[np.ndarray]], list[Detections]]:
    """``detector.detect``, or flip + multi-scale TTA around it when ``run.tta``."""
    if not run.tta:
        return detector.detect
    from detector.evaluation.tta import TTAConfig, detect_tta

    tta = TTAConfig(scales=run.tta_scales, max_size=run.tta_max_size)

    def detect(images: list[np.ndarray]) -> list[Detections]:
        return detect_tta(detector, images, config=tta)  # type: ignore[arg-type]

    return detect


def predict(detector: SupportsDetect, run: DetectorRunConfig, pred_dir: Path, *, progress: bool = True) -> int:
    """Detect faces in ``run.images_dir`` with ``detector`` and write a submission folder to
    ``pred_dir``; returns the image count."""
    return len(predict_submission(run.images_dir, pred_dir, detect_function(detector, run),
                                  batch_size=run.batch_size, progress=progress, box_format=run.box_format))


def run_widerface_eval(config: EvalJobConfig, *, detector: SupportsDetect | None = None,
                       echo: Callable[[str], None] = print) -> WiderFaceResult:
    """Predict (``config.run``; with ``detector`` if given, else the one ``config.run`` describes),
    score, write the JSON summary and PR curves; ``echo`` reports progress lines."""
    t0 = time.perf_counter()
    gt = load_ground_truth(config.gt_dir)
    pred_dir = config.pred_dir
    if config.run is not None:
        pred_dir = config.out_dir / "predictions"
        built = detector if detector is not None else _build_detector(config.run)
        n = predict(built, config.run, pred_dir, progress=config.progress)
        echo(f"wrote predictions for {n} images to {pred_dir} (boxes: {config.run.box_format})")
    assert pred_dir is not None
    result = evaluate_folder(pred_dir, ground_truth=gt, config=WiderFaceEvalConfig(iou_threshold=config.iou_threshold),
                             require_all=config.require_all, progress=config.progress)
    echo(result.summary())
    if not result.complete:
        echo(f"note: {result.images_evaluated} of {result.images_total} validation images evaluated; "
             "AP over a subset is not comparable with full-set numbers")

    summary = result.to_dict()
    summary["pred_dir"] = str(pred_dir)
    if config.run is not None:
        summary["detector"] = {k: (str(v) if isinstance(v, Path) else v)
                               for k, v in dataclasses.asdict(config.run).items()}
    if config.plot:
        label = Path(config.run.detector.weights or "mobilenet0.25").stem if config.run is not None else pred_dir.name
        summary["plots"] = [str(p) for p in plot_pr_curves(result, config.out_dir, label=label)]
    json_path = config.json_path or config.out_dir / "widerface_ap.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    json_path.write_text(json.dumps(summary, indent=2) + "\n")
    echo(f"wrote {json_path}" + (f" and {len(summary['plots'])} PR curves in {config.out_dir}" if config.plot else ""))
    return result
