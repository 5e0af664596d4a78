"""Training RetinaFace, one module per concern.

* :mod:`.dataset`, :mod:`.augment`: WIDER FACE labels, samples and the training augmentation.
* :mod:`.matcher`, :mod:`.loss`: anchor matching and the multi-task loss with OHEM.
* :mod:`.config`: :class:`TrainConfig` and its presets; :mod:`.schedule`: the learning-rate
  schedule; :mod:`.rng`: generator states for exact resume.
* :mod:`.model_init`: the model a run starts from; :mod:`.recall`: recall evaluation during training.
* :mod:`.trainer`: the loop (:class:`Trainer`); :mod:`.ray_job`: the loop on Ray Train
  (:func:`run_training_job`).

Importing this package chooses no device and starts nothing (Ray is imported by the job only).
"""

from detector.training.augment import (
    AugmentConfig,
    AugmentedSample,
    CropConfig,
    PhotometricConfig,
    TrainAugmentation,
    flip_horizontal,
)
from detector.training.config import (
    TRAIN_PRESETS,
    OptimizerConfig,
    ScheduleConfig,
    TrainConfig,
    available_train_presets,
    get_train_preset,
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
from detector.training.matcher import AnchorMatcher, MatcherConfig, MatchResult
from detector.training.model_init import architecture, build_training_model
from detector.training.ray_job import TrainingJobConfig, run_training_job
from detector.training.recall import RecallReport, evaluate_recall, matched_faces
from detector.training.rng import capture_rng_state, restore_rng_state
from detector.training.schedule import WarmupMultiStepLR
from detector.training.trainer import StepLog, Trainer

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
    "TRAIN_PRESETS",
    "TrainAugmentation",
    "TrainConfig",
    "Trainer",
    "TrainingBatch",
    "TrainingJobConfig",
    "TrainingSample",
    "WarmupMultiStepLR",
    "WiderFaceTrainDataset",
    "architecture",
    "available_train_presets",
    "build_training_model",
    "capture_rng_state",
    "collate_training_samples",
    "evaluate_recall",
    "flip_horizontal",
    "get_train_preset",
    "hard_negative_mask",
    "matched_faces",
    "parse_label_file",
    "restore_rng_state",
    "run_training_job",
]
