"""Training: datasets, augmentation, losses, the training loop, metrics, registry, reviews."""

from __future__ import annotations

from defectscan.training.augment import build_train_transform, build_val_transform
from defectscan.training.datasets import (
    MASK_THRESHOLD,
    DatasetIndex,
    Sample,
    dataset_fingerprint,
    load_mask,
    scan_dataset,
    split_dataset,
)
from defectscan.training.evaluate import Calibration, calibrate
from defectscan.training.losses import SegmentationLoss, check_target
from defectscan.training.metrics import EvalReport, SegmentationEvaluator
from defectscan.training.train import (
    TrainConfig,
    TrainingInterrupted,
    TrainProgress,
    TrainResult,
    evaluate_dataset,
    evaluate_model,
    state_path,
    train,
)

__all__ = [
    "MASK_THRESHOLD",
    "Calibration",
    "DatasetIndex",
    "EvalReport",
    "Sample",
    "SegmentationEvaluator",
    "SegmentationLoss",
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
    "TrainingInterrupted",
    "build_train_transform",
    "build_val_transform",
    "calibrate",
    "check_target",
    "dataset_fingerprint",
    "evaluate_dataset",
    "evaluate_model",
    "load_mask",
    "scan_dataset",
    "split_dataset",
    "state_path",
    "train",
]
