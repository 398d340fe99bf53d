"""The training loop: a library function with a progress callback, resumable, early-stopping.

:func:`train` reads a dataset folder (:mod:`.datasets`), splits it deterministically, trains the
seed UNet on random ``tile_size`` crops (:mod:`.augment`) with the activation's loss
(:mod:`.losses`), validates on whole frames (reflect-padded to a multiple of 16, so every pixel
is scored as at inference), keeps the weights with the best pooled defect IoU, stops early when
it stops improving, and writes one product checkpoint (``.safetensors`` + :class:`ModelSpec`)
with the best-F1 thresholds and the validation metrics in its metadata.

After every epoch a training state is written next to the output (``<out>.state.pt``: tensors,
numbers and strings only, so it loads with ``torch.load(weights_only=True)``). Calling
:func:`train` again with the same data and model settings continues from it, also with a larger
``epochs``. The random streams of epoch ``e`` are derived from ``(seed, e)``, so a resumed run
draws what an uninterrupted one would have drawn.

Speed: channels_last and autocast (bf16 on CPUs that support it, bf16 or fp16 + GradScaler on
CUDA); AdamW with a cosine or plateau schedule.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import DataLoader, Dataset

from defectscan.errors import ConfigError, DatasetError
from defectscan.imaging import DEFAULT_MAX_PIXELS, to_model_input
from defectscan.model.backends import autocast_dtype, resolve_device
from defectscan.model.checkpoint import build_model, save_checkpoint
from defectscan.model.spec import Activation, ChannelOrder, ModelSpec
from defectscan.training.augment import build_train_transform, build_val_transform
from defectscan.training.datasets import (
    DatasetIndex,
    Sample,
    dataset_fingerprint,
    load_image,
    load_mask,
    scan_dataset,
    split_dataset,
)
from defectscan.training.losses import SegmentationLoss
from defectscan.training.metrics import EvalReport, SegmentationEvaluator

__all__ = [
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
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
    num_workers: int = Field(default=0, ge=0)
    dice_weight: float = Field(default=1.0, ge=0)
    focal_gamma: float | None = Field(default=None, ge=0)
    class_weights: tuple[float, ...] | None = None
    samples_per_epoch: int | None = Field(default=None, ge=1)
    neg_per_pos: float | None = Field(
        default=None, ge=0, description="cap defect-free training images per epoch to this ratio"
    )
    defect_crop_p: float = Field(default=0.5, ge=0, le=1)
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


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced."""

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


ProgressFn = Callable[[TrainProgress], None]


def state_path(out: Path) -> Path:
    """Where the resumable training state of ``out`` lives."""
    return Path(out).with_name(Path(out).name + ".state.pt")


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
            mask = load_mask(
                s.mask,
                shape=(decoded.height, decoded.width),
                n_classes=n_classes if s.class_index is None else max(n_classes, s.class_index),
                class_index=s.class_index,
            )
            if binary:
                mask = (mask > 0).astype(np.uint8)
            elif int(mask.max(initial=0)) > n_classes:
                msg = f"mask {s.mask} has class {int(mask.max())} > {n_classes} classes"
                raise DatasetError(msg)
            self.masks.append(mask)

    def positives(self) -> list[int]:
        return [i for i, m in enumerate(self.masks) if m.any()]

    def negatives(self) -> list[int]:
        return [i for i, m in enumerate(self.masks) if not m.any()]


class _TileDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Augmented ``tile_size`` crops: ``(image [C, T, T] normalised, mask [T, T] long)``."""

    def __init__(self, frames: _Frames, transform: Any, mean: np.ndarray, std: np.ndarray) -> None:
        self.frames = frames
        self.transform = transform
        self.mean = mean
        self.std = std

    def __len__(self) -> int:
        return len(self.frames.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.transform(image=self.frames.images[i], mask=self.frames.masks[i])
        img = np.asarray(out["image"], dtype=np.float32)
        if img.ndim == 2:
            img = img[:, :, None]
        img = (img - self.mean) / self.std
        chw = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        return chw, torch.from_numpy(np.asarray(out["mask"], dtype=np.int64))


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
) -> tuple[EvalReport, SegmentationEvaluator]:
    """Score ``model`` on whole frames (pad to a multiple of 16, crop back), as inference sees them.

    ``frames_or_samples``: preloaded frames or a sequence of :class:`Sample`.
    """
    device = device or torch.device("cpu")
    if isinstance(frames_or_samples, _Frames):
        frames = frames_or_samples
    else:
        frames = _Frames(
            frames_or_samples,
            n_classes=len(spec.class_names),
            binary=binary,
            channel_order=spec.channel_order,
            n_channels=spec.n_channels,
            max_pixels=max_pixels,
        )
    pad = build_val_transform()
    mean = np.asarray(spec.mean, np.float32)
    std = np.asarray(spec.std, np.float32)
    evaluator = SegmentationEvaluator(
        spec.class_names, spec.activation, thresholds=thresholds or spec.thresholds
    )
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for image, mask in zip(frames.images, frames.masks, strict=True):
            h, w = mask.shape
            padded = pad(image=image)["image"]
            if padded.ndim == 2:
                padded = padded[:, :, None]
            x = torch.from_numpy(
                np.ascontiguousarray(((padded - mean) / std).transpose(2, 0, 1))
            ).unsqueeze(0)
            x = x.to(device).contiguous(memory_format=torch.channels_last)
            with _autocast(device, autocast_dtype):
                logits = model(x)
            logits = logits.float()[:, :, :h, :w]
            probs = torch.sigmoid(logits) if spec.activation == "sigmoid" else logits.softmax(1)
            evaluator.update(probs.cpu(), torch.from_numpy(mask.astype(np.int64)).unsqueeze(0))
    model.train(was_training)
    return evaluator.compute(), evaluator


def evaluate_dataset(
    checkpoint: Any,
    data: Path,
    *,
    layout: Literal["auto", "images-masks", "class-folders"] = "auto",
    split: Literal["all", "val"] = "all",
    val_fraction: float | None = None,
    seed: int | None = None,
    device: str = "cpu",
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> EvalReport:
    """Score a loaded :class:`~defectscan.model.checkpoint.Checkpoint` on a dataset folder.

    ``split="val"`` scores only the held-out split that training used (its ``val_fraction``
    and seed are read from the checkpoint's metrics unless given). A single-class (binary)
    model on a multi-class dataset is scored on defect vs background.
    """
    spec: ModelSpec = checkpoint.spec
    index = scan_dataset(data, layout=layout, class_names=None)
    binary = len(spec.class_names) == 1 and len(index.class_names) > 1
    if not binary and tuple(index.class_names) != tuple(spec.class_names):
        index = scan_dataset(data, layout=layout, class_names=spec.class_names)
    samples: Sequence[Sample] = index.samples
    if split == "val":
        frac = val_fraction if val_fraction is not None else spec.metrics.get("val_fraction", 0.2)
        sd = seed if seed is not None else spec.metrics.get("split_seed", 0)
        samples = split_dataset(index, val_fraction=float(frac), seed=int(sd))[1]
    dev = resolve_device(device)
    frames = _Frames(
        samples,
        n_classes=len(index.class_names),
        binary=binary,
        channel_order=spec.channel_order,
        n_channels=spec.n_channels,
        max_pixels=max_pixels,
    )
    model = checkpoint.model.to(dev)
    model.to(memory_format=torch.channels_last)
    report, _ = evaluate_model(
        model, spec, frames, device=dev, autocast_dtype=autocast_dtype(precision, dev)
    )
    return report


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
                if k not in ("metrics", "thresholds", "training_run")
            },
            "batch_size": config.batch_size,
            "seed": config.seed,
            "val_fraction": config.val_fraction,
            "scheduler": config.scheduler,
        },
        sort_keys=True,
    )


def _epoch_order(frames: _Frames, config: TrainConfig, epoch: int) -> list[int]:
    rng = np.random.default_rng([config.seed, epoch])
    pos, neg = frames.positives(), frames.negatives()
    if config.neg_per_pos is not None and pos:
        n_neg = min(len(neg), round(config.neg_per_pos * len(pos)))
        neg = sorted(rng.choice(neg, size=n_neg, replace=False).tolist()) if n_neg else []
    chosen = np.array(pos + neg, dtype=np.int64)
    order = rng.permutation(chosen)
    if config.samples_per_epoch is not None:
        order = np.resize(order, config.samples_per_epoch)
    return order.tolist()


def _batches(
    dataset: _TileDataset, order: list[int], config: TrainConfig
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    drop_last = len(order) > config.batch_size
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=order,
        num_workers=config.num_workers,
        drop_last=drop_last,
        worker_init_fn=_seed_worker if config.num_workers else None,
    )
    yield from loader


def _seed_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    if info is not None:
        info.dataset.transform.set_random_seed(int(torch.initial_seed() % 2**31) + worker_id)  # type: ignore[attr-defined]


def train(
    config: TrainConfig,
    *,
    progress: ProgressFn | None = None,
    parent_version: str | None = None,
) -> TrainResult:
    """Train as ``config`` says, write the checkpoint to ``config.out``, return the result."""
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
    logger.info(
        "training %s (%s, %d classes) on %d images, validating on %d, device %s, autocast %s",
        config.name,
        activation,
        len(class_names),
        len(train_frames.images),
        len(val_frames.images),
        device,
        amp_dtype,
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

    transform = build_train_transform(
        config.tile_size, seed=config.seed, defect_crop_p=config.defect_crop_p
    )
    tiles = _TileDataset(train_frames, transform, mean, std)
    report_fn(
        TrainProgress(
            "start",
            start_epoch,
            config.epochs,
            elapsed_s=time.perf_counter() - t0,
            message=f"{len(train_frames.images)} train / {len(val_frames.images)} val",
        )
    )
    stopped_early = False
    if bad_epochs >= config.patience:
        stopped_early = True
    epoch = start_epoch
    while epoch < config.epochs and not stopped_early:
        torch.manual_seed(config.seed * 100_003 + epoch)
        transform.set_random_seed(config.seed * 100_003 + epoch)
        order = _epoch_order(train_frames, config, epoch)
        steps = max(1, len(order) // config.batch_size) if len(order) > config.batch_size else 1
        model.train()
        losses: list[float] = []
        for step, (x, m) in enumerate(_batches(tiles, order, config), start=1):
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
            losses.append(float(loss.detach()))
            if step % 20 == 0:
                logger.info(
                    "epoch %d step %d/%d loss %.4f (%.0f s)",
                    epoch + 1,
                    step,
                    steps,
                    float(np.mean(losses[-20:])),
                    time.perf_counter() - t0,
                )
            report_fn(
                TrainProgress(
                    "step",
                    epoch,
                    config.epochs,
                    step=step,
                    steps=steps,
                    loss=losses[-1],
                    lr=optimizer.param_groups[0]["lr"],
                    best_score=_finite(best_score),
                    elapsed_s=time.perf_counter() - t0,
                )
            )
        report, _ = evaluate_model(model, spec, val_frames, device=device, autocast_dtype=amp_dtype)
        score = report.mean_iou if report.mean_iou is not None else 0.0
        row = {
            "epoch": float(epoch),
            "loss": float(np.mean(losses)) if losses else math.nan,
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
            )
        )
        epoch += 1

    # Final: the best weights, thresholds that maximise F1 on validation, metrics with them.
    model.load_state_dict(best_state)
    model.eval()
    first, evaluator = evaluate_model(
        model, spec, val_frames, device=device, autocast_dtype=amp_dtype
    )
    if activation == "sigmoid":
        thresholds = evaluator.best_thresholds()
        spec = spec.replace(thresholds=thresholds)
        final, _ = evaluate_model(model, spec, val_frames, device=device, autocast_dtype=amp_dtype)
    else:
        final = first
    metrics: dict[str, Any] = {
        **final.flat(),
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "n_train": len(train_frames.images),
        "n_val": len(val_samples),
        "val_fraction": config.val_fraction,
        "split_seed": config.seed,
        "dataset_fingerprint": fingerprint,
        "parent_version": parent_version,
        "best_thresholds": list(first.best_thresholds),
    }
    spec = spec.replace(metrics=metrics)
    cpu_model = copy.deepcopy(model).to("cpu").float()
    cpu_model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    digest = save_checkpoint(cpu_model, spec, out)
    wall = time.perf_counter() - t0
    report_fn(
        TrainProgress(
            "done",
            max(0, epoch - 1),
            config.epochs,
            metrics=final.flat(),
            best_score=_finite(best_score),
            elapsed_s=wall,
            message=str(out),
        )
    )
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
        n_train=len(train_frames.images),
        n_val=len(val_samples),
        wall_s=wall,
        stopped_early=stopped_early,
        resumed_from_epoch=resumed_from,
        parent_version=parent_version,
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
