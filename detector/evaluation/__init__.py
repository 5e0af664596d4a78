"""Evaluation: WIDER FACE AP (:mod:`.widerface`; ground truth and submission files in
:mod:`.submission`, running a detector over the images in :mod:`.predict`, PR curves in :mod:`.plots`),
the evaluation job (:mod:`.job`: predict, score, write the summary), the validation AP of a detector in
memory (:mod:`.val`, what training reports per epoch) and test-time augmentation (:mod:`.tta`).

Only numpy-only modules are imported here, so that scoring a prediction folder does not import
torch; import :mod:`detector.evaluation.tta` explicitly for TTA.
"""

from detector.evaluation.job import DetectorRunConfig, EvalJobConfig, run_widerface_eval
from detector.evaluation.predict import iter_detections, select_images
from detector.evaluation.val import WiderValSet
from detector.evaluation.widerface import (
    SETTINGS,
    PredictionFormatError,
    SettingResult,
    WiderFaceEvalConfig,
    WiderFaceEvaluator,
    WiderFaceGroundTruth,
    WiderFaceResult,
    bbox_overlaps_plus_one,
    evaluate_folder,
    iter_image_files,
    load_ground_truth,
    plot_pr_curves,
    predict_submission,
    read_prediction_file,
    read_submission,
    voc_ap,
    write_detections,
    write_prediction_file,
    write_submission,
)

__all__ = [
    "DetectorRunConfig",
    "EvalJobConfig",
    "SETTINGS",
    "PredictionFormatError",
    "SettingResult",
    "WiderFaceEvalConfig",
    "WiderFaceEvaluator",
    "WiderFaceGroundTruth",
    "WiderFaceResult",
    "WiderValSet",
    "bbox_overlaps_plus_one",
    "evaluate_folder",
    "iter_detections",
    "iter_image_files",
    "load_ground_truth",
    "plot_pr_curves",
    "predict_submission",
    "read_prediction_file",
    "read_submission",
    "run_widerface_eval",
    "select_images",
    "voc_ap",
    "write_prediction_file",
    "write_detections",
    "write_submission",
]
