"""Evaluation: WIDER FACE AP (:mod:`.widerface`), the evaluation job (:mod:`.job`: predict, score,
write the summary) and test-time augmentation (:mod:`.tta`).

Only numpy-only modules are imported here, so that scoring a prediction folder does not import
torch; import :mod:`detector.evaluation.tta` explicitly for TTA.
"""

from detector.evaluation.job import DetectorRunConfig, EvalJobConfig, run_widerface_eval
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
    "bbox_overlaps_plus_one",
    "evaluate_folder",
    "iter_image_files",
    "load_ground_truth",
    "plot_pr_curves",
    "predict_submission",
    "read_prediction_file",
    "read_submission",
    "run_widerface_eval",
    "voc_ap",
    "write_prediction_file",
    "write_detections",
    "write_submission",
]
