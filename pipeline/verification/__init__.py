"""Face-verification evaluation: does better alignment raise verification accuracy?

Protocols (IJB-B/C layout, pairs CSV) -> crops per alignment source (``provided``, ``detector``,
``box``) -> recogniser embeddings (ONNX or torch, optionally on Ray workers) -> insightface IJB-C
template aggregation -> ROC / AUC / TAR@FAR. See ``jobs/eval_verification.py`` for the command line.
"""

from pipeline.verification.aggregate import AggregationConfig, image_features, pair_scores, template_features
from pipeline.verification.crops import (
    ALIGNMENT_SOURCES,
    BOX,
    DETECTOR,
    PROVIDED,
    CropMaker,
    CropStatus,
    box_crop,
    face_aligner,
    parse_sources,
    square_box_matrix,
)
from pipeline.verification.metrics import (
    DEFAULT_FARS,
    RocCurve,
    VerificationMetrics,
    best_accuracy,
    far_key,
    far_rank,
    roc_curve,
    tar_at_far,
)
from pipeline.verification.protocols import ProtocolError, VerificationProtocol, read_ijb, read_pairs_csv
from pipeline.verification.recognizer import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    OnnxRecognizer,
    OnnxRecognizerConfig,
    Preprocess,
    Recognizer,
    TorchRecognizer,
    TorchRecognizerConfig,
)
from pipeline.verification.runner import (
    EvaluationConfig,
    EvaluationResult,
    Extraction,
    VerificationDataError,
    evaluate,
    extract,
    format_table,
    score,
    write_report,
)

__all__ = [
    "ALIGNMENT_SOURCES", "AggregationConfig", "BOX", "CropMaker", "CropStatus", "DEFAULT_FARS", "DETECTOR",
    "EvaluationConfig", "EvaluationResult", "Extraction", "IMAGENET_MEAN", "IMAGENET_STD",
    "OnnxRecognizer", "OnnxRecognizerConfig", "PROVIDED", "Preprocess", "ProtocolError", "Recognizer", "RocCurve",
    "TorchRecognizer", "TorchRecognizerConfig", "VerificationDataError", "VerificationMetrics",
    "VerificationProtocol", "best_accuracy", "box_crop", "evaluate", "extract", "face_aligner", "far_key", "far_rank",
    "format_table", "image_features", "pair_scores", "parse_sources", "read_ijb", "read_pairs_csv", "roc_curve",
    "score", "square_box_matrix", "tar_at_far", "template_features", "write_report",
]
