"""Training RetinaFace: data, augmentation, anchor matching, the multi-task loss and the loop.

Importing this package chooses no device and starts nothing.
"""

from detector.training.augment import (
    AugmentConfig,
    AugmentedSample,
    CropConfig,
    PhotometricConfig,
    TrainAugmentation,
    flip_horizontal,
)
from detector.training.dataset import (
    LabeledImage,
    LabelFormatError,
    SampleKey,
    StepSampler,
    TrainingBatch,
    TrainingSample,
    WiderFaceTrainDataset,
    collate_training_samples,
    parse_label_file,
)
from detector.training.loss import LossConfig, LossOutput, RetinaFaceLoss, hard_negative_mask
from detector.training.matcher import AnchorMatcher, MatchResult, MatcherConfig
from detector.training.trainer import (
    OptimizerConfig,
    RecallReport,
    ScheduleConfig,
    StepLog,
    TrainConfig,
    Trainer,
    WarmupMultiStepLR,
    available_train_presets,
    build_training_model,
    evaluate_recall,
    get_train_preset,
)

__all__ = [
    "AnchorMatcher",
    "AugmentConfig",
    "AugmentedSample",
    "CropConfig",
    "LabelFormatError",
    "LabeledImage",
    "LossConfig",
    "LossOutput",
    "MatchResult",
    "MatcherConfig",
    "OptimizerConfig",
    "PhotometricConfig",
    "RecallReport",
    "RetinaFaceLoss",
    "SampleKey",
    "ScheduleConfig",
    "StepLog",
    "StepSampler",
    "TrainAugmentation",
    "TrainConfig",
    "Trainer",
    "TrainingBatch",
    "TrainingSample",
    "WarmupMultiStepLR",
    "WiderFaceTrainDataset",
    "available_train_presets",
    "build_training_model",
    "collate_training_samples",
    "evaluate_recall",
    "flip_horizontal",
    "get_train_preset",
    "hard_negative_mask",
    "parse_label_file",
]
