"""The training loop: a library function with a progress callback, resumable, early-stopping.

:func:`train` reads a dataset folder (:mod:`.datasets`), splits it deterministically, trains the
seed UNet on random ``tile_size`` crops (:mod:`.augment`) with the activation's loss
(:mod:`.losses`), validates on whole frames (reflect-padded to a multiple of 16) after every
epoch, keeps the weights with the best mean defect IoU and stops early when it stops improving.
Then it calibrates the verdict on the validation split through the inspection path
(:mod:`.evaluate`: thresholds or minimum confidence and minimum area for a target false-reject
rate on defect-free parts) and writes one product checkpoint (``.safetensors`` +
:class:`ModelSpec`) with that decision rule and the metrics it achieves in its metadata.

Data: frames are decoded once and kept in memory; crops are cut in O(1) (a random window, or
one holding a random defect pixel) and augmented in DataLoader workers (``num_workers``, by
default from the cores; persistent, pinned memory on CUDA). Every crop has its own seed derived
from ``(seed, epoch, position)``, so the crops do not depend on the number of workers.
Validation frames are normalised, padded and batched once (on the training device when they
fit); predictions and metrics stay on the device and only summaries reach the host.

Ctrl-C (or SIGTERM mapped to it by the CLI) after at least one epoch writes the best checkpoint
so far and raises :class:`TrainingInterrupted` carrying it.

After every epoch a training state is written next to the output (``<out>.state.pt``: tensors,
numbers and strings only, so it loads with ``torch.load(weights_only=True)``). Calling
:func:`train` again with the same data and model settings continues from it, also with a larger
``epochs``. The random streams of epoch ``e`` are derived from ``(seed, e)``, so a resumed run
draws what an uninterrupted one would have drawn.

Speed: channels_last and autocast (bf16 on CPUs that support it, bf16 or fp16 + GradScaler on
CUDA; ``DEFECTSCAN_DISABLE_BF16=1`` keeps ``auto`` off bf16); AdamW with a cosine or plateau
schedule.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import DataLoader, Dataset, Sampler

from defectscan.errors import ConfigError, DatasetError
from defectscan.imaging import DEFAULT_MAX_PIXELS, to_model_input
from defectscan.model.backends import autocast_dtype, make_backend, resolve_device
from defectscan.model.checkpoint import build_model, save_checkpoint
from defectscan.model.spec import Activation, ChannelOrder, ModelSpec
from defectscan.training.augment import build_train_transform, random_crop
from defectscan.training.datasets import (
    DatasetIndex,
    Sample,
    dataset_fingerprint,
    load_image,
    scan_dataset,
    split_dataset,
)
from defectscan.training.evaluate import (
    Calibration,
    calibrate,
    evaluate_dataset,
    inspect_frames,
    score_frames,
    truth_mask,
)
from defectscan.training.losses import SegmentationLoss
from defectscan.training.metrics import EvalReport, SegmentationEvaluator

__all__ = [
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
    "TrainingInterrupted",
    "default_workers",
    "evaluate_dataset",
    "evaluate_model",
    "state_path",
    "train",
]

logger = logging.getLogger(__name__)


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


def state_path(out: Path) -> Path:
    """Where the resumable training state of ``out`` lives."""
    return Path(out).with_name(Path(out).name + ".state.pt")


def default_workers(device: torch.device) -> int:
    """DataLoader workers from the cores: CUDA keeps them busy; on a small CPU they compete."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    if device.type == "cuda":
        return max(0, min(8, cores - 2))
    return 0 if cores <= 4 else min(4, cores // 4)


class _Frames:
    """Decoded frames and masks of a set of samples, loaded once and kept in memory."""

    def __init__(
        self,
        samples: Sequence[Sample],
        *,
        n_classes: int,
        binary: bool,
        channel_order: ChannelOrder,
        n_channels: int,
        max_pixels: int,
    ) -> None:
        self.samples = tuple(samples)
        self.images: list[np.ndarray] = []  # float32 (H, W, C) in [0, 1]
        self.masks: list[np.ndarray] = []  # uint8 class index (H, W)
        zeros = (0.0,) * n_channels
        ones = (1.0,) * n_channels
        for s in self.samples:
            decoded = load_image(s.image, max_pixels=max_pixels)
            chw = to_model_input(
                decoded, n_channels=n_channels, channel_order=channel_order, mean=zeros, std=ones
            )
            self.images.append(np.ascontiguousarray(chw.transpose(1, 2, 0)))
            shape = (decoded.height, decoded.width)
            self.masks.append(truth_mask(s, shape, n_classes=n_classes, binary=binary))

    def positives(self) -> list[int]:
        return [i for i, m in enumerate(self.masks) if m.any()]

    def negatives(self) -> list[int]:
        return [i for i, m in enumerate(self.masks) if not m.any()]


_MAX_DEFECT_PIXELS = 65_536  # per frame, for defect-centred crops (a subsample beyond that)


class _TileDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Augmented ``tile_size`` crops: ``(image [C, T, T] normalised, mask [T, T] long)``.

    Indexed by ``(frame, seed)`` pairs from :class:`_EpochSampler`: each crop's randomness comes
    from its own seed, wherever (whichever worker) it is computed.
    """

    def __init__(
        self,
        frames: _Frames,
        transform: Any,
        mean: np.ndarray,
        std: np.ndarray,
        *,
        tile_size: int,
        defect_crop_p: float,
    ) -> None:
        self.transform = transform
        self.mean = mean
        self.std = std
        self.tile = tile_size
        self.defect_crop_p = defect_crop_p
        self.images: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        self.defects: list[np.ndarray] = []
        rng = np.random.default_rng(0)
        for image, mask in zip(frames.images, frames.masks, strict=True):
            h, w = mask.shape
            ph, pw = max(0, tile_size - h), max(0, tile_size - w)
            if ph or pw:  # reflect-pad small frames once, image and mask alike
                image = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="reflect")
                mask = np.pad(mask, ((0, ph), (0, pw)), mode="reflect")
            where = np.flatnonzero(mask)
            if len(where) > _MAX_DEFECT_PIXELS:
                where = np.sort(rng.choice(where, _MAX_DEFECT_PIXELS, replace=False))
            self.images.append(image)
            self.masks.append(mask)
            self.defects.append(where)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i, seed = key
        rng = np.random.default_rng(seed)
        img, mask = random_crop(
            self.images[i],
            self.masks[i],
            self.tile,
            rng,
            defect_pixels=self.defects[i],
            defect_crop_p=self.defect_crop_p,
        )
        self.transform.set_random_seed(int(rng.integers(2**31)))
        out = self.transform(image=np.ascontiguousarray(img), mask=np.ascontiguousarray(mask))
        img = np.asarray(out["image"], dtype=np.float32)
        if img.ndim == 2:
            img = img[:, :, None]
        img = (img - self.mean) / self.std
        chw = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        return chw, torch.from_numpy(np.asarray(out["mask"], dtype=np.int64))


class _EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(frame, seed)`` keys; the main process sets the next epoch's keys."""

    def __init__(self) -> None:
        self.keys: list[tuple[int, int]] = []

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(list(self.keys))

    def __len__(self) -> int:
        return len(self.keys)


def _to_target(mask: torch.Tensor, activation: Activation, n_classes: int) -> torch.Tensor:
    """Class-index masks -> the loss's target: indices (softmax) or one-hot float (sigmoid)."""
    if activation == "softmax":
        return mask
    classes = torch.arange(1, n_classes + 1, device=mask.device).view(1, -1, 1, 1)
    return (mask.unsqueeze(1) == classes).float()


def _channel_stats(frames: _Frames, limit: int = 64) -> tuple[np.ndarray, np.ndarray]:
    picks = frames.images[:: max(1, len(frames.images) // limit)][:limit]
    flat = np.concatenate([im.reshape(-1, im.shape[2]) for im in picks])
    mean = flat.mean(axis=0).astype(np.float32)
    std = np.maximum(flat.std(axis=0), 1e-3).astype(np.float32)
    return mean, std


# Validation batches hold about this many padded pixels (a batch of 8 frames of 256 x 256).
_VAL_BATCH_PIXELS = 8 * 256 * 256
# Validation inputs stay on the training device below this size, else they are copied per batch.
_VAL_DEVICE_BYTES = 1 << 30


class _ValBatches:
    """Validation frames normalised, reflect-padded to a multiple of 16 and batched, once.

    Frames of one size share a batch; the batch's targets and original size go with it.
    """

    def __init__(
        self, frames: _Frames, spec: ModelSpec, device: torch.device, *, channels_last: bool
    ) -> None:
        mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1)
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, m in enumerate(frames.masks):
            by_shape.setdefault(m.shape, []).append(i)
        total = sum(im.nbytes for im in frames.images)
        keep_on = device if total <= _VAL_DEVICE_BYTES else torch.device("cpu")
        self.device = device
        self.channels_last = channels_last
        self.batches: list[tuple[torch.Tensor, torch.Tensor, int, int]] = []
        for (h, w), idx in sorted(by_shape.items()):
            ph, pw = (-h) % 16, (-w) % 16
            per = max(1, _VAL_BATCH_PIXELS // ((h + ph) * (w + pw)))
            for start in range(0, len(idx), per):
                chunk = idx[start : start + per]
                x = torch.from_numpy(np.stack([frames.images[i] for i in chunk])).permute(
                    0, 3, 1, 2
                )
                x = (x - mean) / std
                if ph or pw:
                    x = F.pad(x, (0, pw, 0, ph), mode="reflect")
                t = torch.from_numpy(np.stack([frames.masks[i] for i in chunk]).astype(np.int64))
                if keep_on.type == "cuda":
                    x, t = x.to(keep_on), t.to(keep_on)
                elif device.type == "cuda":
                    x, t = x.pin_memory(), t.pin_memory()
                self.batches.append((x.contiguous(), t, h, w))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int, int]]:
        for x, t, h, w in self.batches:
            x = x.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, t.to(self.device, non_blocking=True), h, w


def evaluate_model(
    model: torch.nn.Module,
    spec: ModelSpec,
    frames_or_samples: Any,
    *,
    thresholds: Sequence[float] | None = None,
    device: torch.device | None = None,
    autocast_dtype: torch.dtype | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    binary: bool = False,
    channels_last: bool = True,
) -> tuple[EvalReport, SegmentationEvaluator]:
    """Score ``model`` on whole frames (padded to a multiple of 16), on ``device``.

    ``frames_or_samples``: prepared validation batches, preloaded frames or :class:`Sample`\\ s.
    This is the quick per-epoch score (no tiling, no minimum area); the decision production
    makes is scored by :func:`defectscan.training.evaluate.evaluate_dataset`.
    """
    device = device or torch.device("cpu")
    if isinstance(frames_or_samples, _ValBatches):
        batches = frames_or_samples
    else:
        frames = frames_or_samples
        if not isinstance(frames, _Frames):
            frames = _Frames(
                frames_or_samples,
                n_classes=len(spec.class_names),
                binary=binary,
                channel_order=spec.channel_order,
                n_channels=spec.n_channels,
                max_pixels=max_pixels,
            )
        batches = _ValBatches(frames, spec, device, channels_last=channels_last)
    evaluator = SegmentationEvaluator(
        spec.class_names, spec.activation, thresholds=thresholds or spec.thresholds
    )
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for x, target, h, w in batches:
            with _autocast(device, autocast_dtype):
                logits = model(x)
            logits = logits.float()[:, :, :h, :w]
            probs = torch.sigmoid(logits) if spec.activation == "sigmoid" else logits.softmax(1)
            evaluator.update(probs, target)
    model.train(was_training)
    return evaluator.compute(), evaluator


def _autocast(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _compat_key(config: TrainConfig, spec: ModelSpec, fingerprint: str) -> str:
    """What must match for a saved state to be resumed (not epochs, patience or lr)."""
    return json.dumps(
        {
            "fingerprint": fingerprint,
            # Not the run id or the thresholds: a resumed run is a new run of the same training.
            "spec": {
                k: v
                for k, v in spec.to_dict().items()
                if k not in ("metrics", "thresholds", "min_confidence", "min_area", "training_run")
            },
            "batch_size": config.batch_size,
            "seed": config.seed,
            "val_fraction": config.val_fraction,
            "scheduler": config.scheduler,
        },
        sort_keys=True,
    )


def _epoch_keys(frames: _Frames, config: TrainConfig, epoch: int) -> list[tuple[int, int]]:
    """This epoch's ``(frame, crop seed)`` keys: a function of ``(seed, epoch)`` only."""
    rng = np.random.default_rng([config.seed, epoch])
    pos, neg = frames.positives(), frames.negatives()
    if config.neg_per_pos is not None and pos:
        n_neg = min(len(neg), round(config.neg_per_pos * len(pos)))
        neg = sorted(rng.choice(neg, size=n_neg, replace=False).tolist()) if n_neg else []
    chosen = np.array(pos + neg, dtype=np.int64)
    order = rng.permutation(chosen)
    if config.samples_per_epoch is not None:
        order = np.resize(order, config.samples_per_epoch)
    seeds = np.random.default_rng([config.seed, epoch, 1]).integers(0, 2**62, size=len(order))
    return [(int(i), int(s)) for i, s in zip(order, seeds, strict=True)]


def _make_loader(
    dataset: _TileDataset,
    sampler: _EpochSampler,
    config: TrainConfig,
    device: torch.device,
    workers: int,
    n_keys: int,
) -> DataLoader[tuple[torch.Tensor, torch.Tensor]]:
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=n_keys > config.batch_size,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=_worker_init if workers else None,
    )


def _worker_init(worker_id: int) -> None:
    # Each worker computes with one thread: the workers are the parallelism.
    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover - opencv is a dependency
        pass


def train(
    config: TrainConfig,
    *,
    progress: ProgressFn | None = None,
    parent_version: str | None = None,
) -> TrainResult:
    """Train as ``config`` says, write the checkpoint to ``config.out``, return the result.

    Raises :class:`TrainingInterrupted` on Ctrl-C after writing the best checkpoint so far.
    """
    t0 = time.perf_counter()
    report_fn = progress or (lambda _p: None)
    out = Path(config.out)
    if out.suffix != ".safetensors":
        msg = f"--out must end in .safetensors (the product's checkpoint format), got {out.name!r}"
        raise ConfigError(msg)
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    amp_dtype = autocast_dtype(config.precision, device)

    index = scan_dataset(config.data, layout=config.layout, class_names=config.class_names)
    fingerprint = dataset_fingerprint(index)
    train_samples, val_samples = split_dataset(
        index, val_fraction=config.val_fraction, seed=config.seed
    )
    if not train_samples:
        msg = f"no training images left in {config.data} after the validation split"
        raise DatasetError(msg)
    binary, activation, class_names = _task(index, config)
    channel_order, n_channels = _channels(config, index)
    common = {
        "n_classes": len(index.class_names),
        "binary": binary,
        "channel_order": channel_order,
        "n_channels": n_channels,
        "max_pixels": config.max_pixels,
    }
    train_frames = _Frames(train_samples, **common)  # type: ignore[arg-type]
    # Without a validation split, validate on the training frames (better than nothing).
    val_frames = _Frames(val_samples, **common) if val_samples else train_frames  # type: ignore[arg-type]
    mean, std = _channel_stats(train_frames)
    spec = ModelSpec(
        n_channels=n_channels,
        activation=activation,
        class_names=class_names,
        bilinear=config.bilinear,
        base_width=config.base_width,
        channel_order=channel_order,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        tile_size=config.tile_size,
        tile_overlap=min(config.tile_overlap, config.tile_size - 1),
        name=config.name,
        training_run=config.training_run,
    )
    workers = config.num_workers if config.num_workers is not None else default_workers(device)
    logger.info(
        "training %s (%s, %d classes) on %d images, validating on %d, device %s, autocast %s, "
        "%d loader workers",
        config.name,
        activation,
        len(class_names),
        len(train_frames.images),
        len(val_frames.images),
        device,
        amp_dtype,
        workers,
    )

    model = build_model(spec).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler: Any
    if config.scheduler == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=config.epochs, eta_min=config.lr * 0.01
        )
    else:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=0.5, patience=max(1, config.patience // 2)
        )
    use_scaler = device.type == "cuda" and amp_dtype == torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    loss_fn = SegmentationLoss(
        activation,
        spec.n_classes,
        dice_weight=config.dice_weight,
        class_weights=config.class_weights,
        focal_gamma=config.focal_gamma,
    ).to(device)

    compat = _compat_key(config, spec, fingerprint)
    start_epoch, best_score, best_epoch, bad_epochs = 0, -math.inf, -1, 0
    history: list[dict[str, float]] = []
    best_state: dict[str, torch.Tensor] = {
        k: v.detach().cpu().clone() for k, v in model.state_dict().items()
    }
    spath = state_path(out)
    if config.resume and spath.is_file():
        saved = torch.load(spath, map_location="cpu", weights_only=True)
        if saved.get("compat") == compat:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            if use_scaler and saved.get("scaler"):
                scaler.load_state_dict(saved["scaler"])
            if isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
                # A longer run stretches the schedule; T_max is not a learned quantity.
                scheduler.T_max = config.epochs
            start_epoch = int(saved["epoch"]) + 1
            best_score = float(saved["best_score"])
            best_epoch = int(saved["best_epoch"])
            bad_epochs = int(saved["bad_epochs"])
            history = json.loads(saved["history"])
            best_state = dict(saved["best_model"])
            logger.info("resuming %s from epoch %d (best IoU %.4f)", spath, start_epoch, best_score)
        else:
            logger.warning(
                "ignoring %s: it was written for other data or model settings; starting afresh",
                spath,
            )
    resumed_from = start_epoch

    flips_only = config.augment == "flips"
    transform = build_train_transform(
        config.tile_size,
        seed=config.seed,
        crop=False,
        affine=not flips_only,
        photometric=not flips_only,
    )
    tiles = _TileDataset(
        train_frames,
        transform,
        mean,
        std,
        tile_size=config.tile_size,
        defect_crop_p=config.defect_crop_p,
    )
    val_batches = _ValBatches(val_frames, spec, device, channels_last=config.channels_last)
    sampler = _EpochSampler()
    n_keys = len(_epoch_keys(train_frames, config, 0))
    loader = _make_loader(tiles, sampler, config, device, workers, n_keys)
    timings = {"data_s": 0.0, "step_s": 0.0, "val_s": 0.0, "crops": 0.0}
    report_fn(
        TrainProgress(
            "start",
            start_epoch,
            config.epochs,
            elapsed_s=time.perf_counter() - t0,
            message=f"{len(train_frames.images)} train / {len(val_frames.images)} val",
        )
    )
    stopped_early = bad_epochs >= config.patience
    epoch = start_epoch
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def finish(*, interrupted: bool) -> TrainResult:
        # Reads the loop's state when called: the best weights and history so far.
        return _finish(
            config,
            spec,
            model,
            best_state,
            history=history,
            best_epoch=best_epoch,
            val_samples=val_samples,
            val_frames=val_frames,
            val_batches=val_batches,
            device=device,
            amp_dtype=amp_dtype,
            binary=binary,
            n_index_classes=len(index.class_names),
            fingerprint=fingerprint,
            parent_version=parent_version,
            t0=t0,
            stopped_early=stopped_early,
            resumed_from=resumed_from,
            timings=timings,
            interrupted=interrupted,
            n_train=len(train_frames.images),
        )

    try:
        while epoch < config.epochs and not stopped_early:
            torch.manual_seed(config.seed * 100_003 + epoch)
            sampler.keys = _epoch_keys(train_frames, config, epoch)
            steps = (
                max(1, len(sampler.keys) // config.batch_size)
                if len(sampler.keys) > config.batch_size
                else 1
            )
            model.train()
            losses: list[torch.Tensor] = []
            shown_loss: float | None = None
            t_fetch = time.perf_counter()
            for step, (x, m) in enumerate(loader, start=1):
                t_step = time.perf_counter()
                timings["data_s"] += t_step - t_fetch
                x = x.to(device, non_blocking=True)
                if config.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                m = m.to(device, non_blocking=True)
                target = _to_target(m, activation, len(class_names))
                optimizer.zero_grad(set_to_none=True)
                with _autocast(device, amp_dtype):
                    logits = model(x)
                loss = loss_fn(logits, target)
                if use_scaler:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                losses.append(loss.detach())
                timings["crops"] += x.shape[0]
                if step % 20 == 0 or step == steps:
                    # One host sync every 20 steps: the loss is shown, not needed per step.
                    shown_loss = float(torch.stack(losses[-20:]).mean())
                    logger.info(
                        "epoch %d step %d/%d loss %.4f (%.0f s)",
                        epoch + 1,
                        step,
                        steps,
                        shown_loss,
                        time.perf_counter() - t0,
                    )
                report_fn(
                    TrainProgress(
                        "step",
                        epoch,
                        config.epochs,
                        step=step,
                        steps=steps,
                        loss=shown_loss,
                        lr=optimizer.param_groups[0]["lr"],
                        best_score=_finite(best_score),
                        elapsed_s=time.perf_counter() - t0,
                    )
                )
                t_fetch = time.perf_counter()
                timings["step_s"] += t_fetch - t_step
            sync()
            t_val = time.perf_counter()
            report, _ = evaluate_model(
                model, spec, val_batches, device=device, autocast_dtype=amp_dtype
            )
            timings["val_s"] += time.perf_counter() - t_val
            score = report.mean_iou if report.mean_iou is not None else 0.0
            row = {
                "epoch": float(epoch),
                "loss": float(torch.stack(losses).mean()) if losses else math.nan,
                "lr": float(optimizer.param_groups[0]["lr"]),
                **report.flat(),
            }
            history.append(row)
            if score > best_score + config.min_delta:
                best_score, best_epoch, bad_epochs = score, epoch, 0
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            else:
                bad_epochs += 1
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(score)
            else:
                scheduler.step()
            stopped_early = bad_epochs >= config.patience and epoch + 1 < config.epochs
            _save_state(
                spath,
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                scaler=scaler if use_scaler else None,
                epoch=epoch,
                best_score=best_score,
                best_epoch=best_epoch,
                bad_epochs=bad_epochs,
                history=history,
                best_state=best_state,
                compat=compat,
            )
            report_fn(
                TrainProgress(
                    "epoch",
                    epoch,
                    config.epochs,
                    step=steps,
                    steps=steps,
                    loss=row["loss"],
                    lr=row["lr"],
                    metrics=report.flat(),
                    best_score=_finite(best_score),
                    elapsed_s=time.perf_counter() - t0,
                    message="early stop" if stopped_early else "",
                    timings_s=dict(timings),
                )
            )
            epoch += 1
    except KeyboardInterrupt as exc:
        if best_epoch < 0:
            raise
        partial = finish(interrupted=True)
        logger.warning(
            "training interrupted after %d epochs: best checkpoint so far written to %s",
            len(history),
            partial.checkpoint_path,
        )
        raise TrainingInterrupted(partial) from exc
    finally:
        del loader  # stops persistent workers

    try:
        result = finish(interrupted=False)
    except KeyboardInterrupt as exc:
        # Stopped while calibrating: keep the trained weights with the default rule.
        partial = finish(interrupted=True)
        raise TrainingInterrupted(partial) from exc
    report_fn(
        TrainProgress(
            "done",
            max(0, epoch - 1),
            config.epochs,
            metrics=result.best_metrics,
            best_score=_finite(best_score),
            elapsed_s=result.wall_s,
            message=str(out),
            timings_s=dict(result.timings_s),
        )
    )
    return result


def _finish(
    config: TrainConfig,
    spec: ModelSpec,
    model: torch.nn.Module,
    best_state: dict[str, torch.Tensor],
    *,
    history: list[dict[str, float]],
    best_epoch: int,
    val_samples: Sequence[Sample],
    val_frames: _Frames,
    val_batches: _ValBatches,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    binary: bool,
    n_index_classes: int,
    fingerprint: str,
    parent_version: str | None,
    t0: float,
    stopped_early: bool,
    resumed_from: int,
    timings: dict[str, float],
    interrupted: bool,
    n_train: int,
) -> TrainResult:
    """Best weights -> calibrated decision rule -> scored through inspection -> checkpoint.

    An interrupted run skips calibration and the inspection pass (a supervisor that sent
    SIGTERM waits only so long): its checkpoint keeps the default rule and the epoch's scores.
    """
    t_fin = time.perf_counter()
    model.load_state_dict(best_state)
    model.eval()
    cpu_model = copy.deepcopy(model).to("cpu").float()
    cpu_model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    calibration: Calibration | None = None
    if interrupted:
        report, _ = evaluate_model(
            model, spec, val_batches, device=device, autocast_dtype=amp_dtype
        )
        final = report
    else:
        from defectscan.pipeline import Inspector

        samples = tuple(val_samples) if val_samples else val_frames.samples
        backend = make_backend(
            "torch",
            cpu_model,
            spec.activation,
            n_channels=spec.n_channels,
            tile=spec.tile_size,
            device=str(device),
            precision=config.precision,
        )
        inspector = Inspector(
            backend,
            spec,
            model_version="validation",
            batch_size=8,  # as `inspect` and `eval` batch by default: the same numbers
            max_pixels=config.max_pixels,
        )
        frames = list(inspect_frames(inspector, samples, n_classes=n_index_classes, binary=binary))
        if config.calibrate:
            calibration = calibrate(
                frames, spec, target_false_reject_rate=config.target_false_reject_rate
            )
            spec = calibration.apply(spec)
            logger.info("verdict calibration: %s", calibration.to_dict())
        from defectscan.postprocess import PostprocessConfig

        final = score_frames(frames, spec, config=PostprocessConfig.from_spec(spec))
    timings = {**timings, "finish_s": time.perf_counter() - t_fin}
    metrics: dict[str, Any] = {
        **final.flat(),
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "n_train": n_train,
        "n_val": len(val_samples),
        "val_fraction": config.val_fraction,
        "split_seed": config.seed,
        "dataset_fingerprint": fingerprint,
        "parent_version": parent_version,
        "interrupted": interrupted,
        "scored_by": "epoch-validation" if interrupted else "inspection",
    }
    if calibration is not None:
        metrics["calibration"] = calibration.to_dict()
    spec = spec.replace(metrics=metrics)
    out = Path(config.out)
    digest = save_checkpoint(cpu_model, spec, out)
    wall = time.perf_counter() - t0
    return TrainResult(
        checkpoint_path=out,
        spec=spec,
        sha256=digest,
        version=f"{spec.name}-{digest[:12]}",
        best_epoch=best_epoch,
        best_metrics=final.flat(),
        report=final,
        history=history,
        dataset_fingerprint=fingerprint,
        n_train=n_train,
        n_val=len(val_samples),
        wall_s=wall,
        stopped_early=stopped_early,
        resumed_from_epoch=resumed_from,
        parent_version=parent_version,
        interrupted=interrupted,
        calibration=calibration.to_dict() if calibration is not None else None,
        timings_s=timings,
    )


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _task(index: DatasetIndex, config: TrainConfig) -> tuple[bool, Activation, tuple[str, ...]]:
    """(binary?, activation, class names of the model)."""
    mode = config.mode
    if mode == "auto":
        mode = "multiclass" if len(index.class_names) > 1 else "binary"
    if mode == "binary":
        names = index.class_names if len(index.class_names) == 1 else ("defect",)
        return True, "sigmoid", names
    return False, "softmax", index.class_names


def _channels(config: TrainConfig, index: DatasetIndex) -> tuple[ChannelOrder, int]:
    if config.channel_order != "auto":
        order: ChannelOrder = config.channel_order
        return order, 1 if order == "GRAY" else 3
    first = load_image(index.samples[0].image, max_pixels=config.max_pixels)
    if first.channels == 1:
        return "GRAY", 1
    return "BGR", 3


def _save_state(
    path: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler | None,
    epoch: int,
    best_score: float,
    best_epoch: int,
    bad_epochs: int,
    history: list[dict[str, float]],
    best_state: dict[str, torch.Tensor],
    compat: str,
) -> None:
    state = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "best_model": best_state,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "epoch": epoch,
        "best_score": best_score,
        "best_epoch": best_epoch,
        "bad_epochs": bad_epochs,
        "history": json.dumps(history),
        "compat": compat,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
