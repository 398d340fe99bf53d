"""What a training run takes and gives: its config, progress reports, result and interruption."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from defectscan.imaging import DEFAULT_MAX_PIXELS
from defectscan.model.spec import ModelSpec
from defectscan.training.metrics import EvalReport

__all__ = ["ProgressFn", "TrainConfig", "TrainProgress", "TrainResult", "TrainingInterrupted"]


class TrainConfig(BaseModel):
    """Everything a training run needs; frozen, JSON-serialisable (stored with the run)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data: Path
    out: Path
    layout: Literal["auto", "images-masks", "class-folders"] = "auto"
    mode: Literal["auto", "binary", "multiclass"] = Field(
        default="auto",
        description="binary: all defect classes -> one 'defect' class, sigmoid; multiclass: "
        "softmax over background + classes; auto: multiclass when there are several classes",
    )
    class_names: tuple[str, ...] | None = None
    channel_order: Literal["auto", "GRAY", "RGB", "BGR"] = "auto"
    epochs: int = Field(default=20, ge=1)
    batch_size: int = Field(default=8, ge=1)
    tile_size: int = Field(default=256, ge=16)
    tile_overlap: int = Field(default=32, ge=0)
    base_width: int = Field(default=16, ge=1)
    bilinear: bool = True
    lr: float = Field(default=2e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    scheduler: Literal["cosine", "plateau"] = "cosine"
    patience: int = Field(default=6, ge=1, description="epochs without val IoU gain before stop")
    min_epochs: int | None = Field(
        default=None,
        ge=0,
        description="epochs before early stopping starts counting; None: half of epochs with "
        "the cosine schedule (rare, thin classes often appear only as its learning rate falls), "
        "0 with plateau",
    )
    init: Path | None = Field(
        default=None,
        description="start from this checkpoint's weights (fine-tuning); None: random weights",
    )
    warmup_epochs: int = Field(
        default=0, ge=0, description="epochs of linear learning-rate warm-up (cosine only)"
    )
    max_minutes: float | None = Field(
        default=None,
        gt=0,
        description="wall-clock budget: no epoch starts that would end after it, and a cosine "
        "schedule is fitted to the epochs that fit (calibration and the checkpoint follow as "
        "usual)",
    )
    min_delta: float = Field(default=1e-3, ge=0)
    val_fraction: float = Field(default=0.2, ge=0, lt=1)
    seed: int = 0
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    num_workers: int | None = Field(
        default=None, ge=0, description="DataLoader workers; None: from the cores and device"
    )
    dice_weight: float = Field(default=1.0, ge=0)
    dice_log: bool = Field(
        default=True,
        description="Dice term as -ln Dice (rare, thin classes get a strong gradient before the "
        "model predicts them); False: 1 - Dice",
    )
    focal_gamma: float | None = Field(default=None, ge=0)
    class_weights: tuple[float, ...] | None = None
    samples_per_epoch: int | None = Field(default=None, ge=1)
    neg_per_pos: float | None = Field(
        default=None, ge=0, description="cap defect-free training images per epoch to this ratio"
    )
    defect_crop_p: float = Field(default=0.5, ge=0, le=1)
    augment: Literal["full", "flips"] = Field(
        default="full",
        description="full: flips, 90-degree turns, a small affine, photometric noise; "
        "flips: flips and 90-degree turns only",
    )
    target_false_reject_rate: float = Field(
        default=0.02, ge=0, le=1, description="calibrate the verdict to this share of good parts"
    )
    calibrate: bool = True
    tta: Literal["auto", "none", "h", "hv"] = Field(
        default="auto",
        description="test-time flips the checkpoint carries; auto: calibration tries none, h "
        "and hv and keeps flips only where they raise image recall at the false-reject target "
        "by tta_margin",
    )
    tta_margin: float = Field(
        default=0.02, ge=0, le=1, description="recall gain a test-time flip setting must bring"
    )
    resume: bool = True
    name: str = "unet"
    training_run: str | None = None
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1)


@dataclass(frozen=True)
class TrainProgress:
    """One progress report: ``phase`` is ``start``, ``step``, ``epoch`` or ``done``."""

    phase: Literal["start", "step", "epoch", "done"]
    epoch: int
    epochs: int
    step: int = 0
    steps: int = 0
    loss: float | None = None
    lr: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    best_score: float | None = None
    elapsed_s: float = 0.0
    message: str = ""
    timings_s: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainResult:
    """What a finished (or interrupted) run produced."""

    checkpoint_path: Path
    spec: ModelSpec
    sha256: str
    version: str
    best_epoch: int
    best_metrics: dict[str, float]
    report: EvalReport
    history: list[dict[str, float]]
    dataset_fingerprint: str
    n_train: int
    n_val: int
    wall_s: float
    stopped_early: bool
    resumed_from_epoch: int
    parent_version: str | None = None
    interrupted: bool = False
    calibration: dict[str, Any] | None = None
    timings_s: dict[str, float] = field(default_factory=dict)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM during training; ``result`` is the best checkpoint written so far.

    ``result`` is None when no epoch had finished (nothing worth keeping).
    """

    def __init__(self, result: TrainResult | None) -> None:
        super().__init__("training interrupted")
        self.result = result


ProgressFn = Callable[[TrainProgress], None]
