"""A training run's data: the dataset scanned, split and decoded, and the model spec it implies."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from defectscan.errors import DatasetError
from defectscan.model.spec import Activation, ChannelOrder, ModelSpec
from defectscan.training.datasets import (
    DatasetIndex,
    Sample,
    dataset_fingerprint,
    load_image,
    scan_dataset,
    split_dataset,
)
from defectscan.training.frames import Frames, channel_stats
from defectscan.training.run import TrainConfig

__all__ = ["RunData", "load_run_data"]


@dataclass
class RunData:
    """The run's data: split, decoded frames, channel statistics and the model's spec."""

    fingerprint: str
    n_index_classes: int
    binary: bool
    val_samples: tuple[Sample, ...]
    train_frames: Frames
    val_frames: Frames
    mean: np.ndarray
    std: np.ndarray
    spec: ModelSpec


def load_run_data(config: TrainConfig) -> RunData:
    """Scan, split and decode the dataset; derive the model's spec from it and the config."""
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

    def frames(samples: Sequence[Sample]) -> Frames:
        return Frames(
            samples,
            n_classes=len(index.class_names),
            binary=binary,
            channel_order=channel_order,
            n_channels=n_channels,
            max_pixels=config.max_pixels,
        )

    train_frames = frames(train_samples)
    # Without a validation split, validate on the training frames (better than nothing).
    val_frames = frames(val_samples) if val_samples else train_frames
    mean, std = channel_stats(train_frames)
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
    return RunData(
        fingerprint=fingerprint,
        n_index_classes=len(index.class_names),
        binary=binary,
        val_samples=tuple(val_samples),
        train_frames=train_frames,
        val_frames=val_frames,
        mean=mean,
        std=std,
        spec=spec,
    )


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
