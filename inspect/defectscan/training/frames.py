"""Training data in memory: decoded frames, augmented crops, each epoch's crop keys, the loader.

Frames are decoded once and kept in memory; crops are cut in O(1) (a random window, or one
holding a random defect pixel) and augmented in DataLoader workers (persistent, pinned memory on
CUDA). Every crop has its own seed derived from ``(seed, epoch, position)``, so the crops do not
depend on the number of workers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from defectscan.imaging import to_model_input
from defectscan.model.spec import Activation, ChannelOrder
from defectscan.training.augment import random_crop
from defectscan.training.datasets import Sample, load_image
from defectscan.training.evaluate import truth_mask

__all__ = [
    "EpochSampler",
    "Frames",
    "TileDataset",
    "channel_stats",
    "default_workers",
    "epoch_keys",
    "make_loader",
    "to_target",
]

_MAX_DEFECT_PIXELS = 65_536  # per frame and class, for defect-centred crops (a subsample beyond)


class Frames:
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
        """Indices of the frames with at least one defect pixel."""
        return [i for i, m in enumerate(self.masks) if m.any()]

    def negatives(self) -> list[int]:
        """Indices of the defect-free frames."""
        return [i for i, m in enumerate(self.masks) if not m.any()]


class TileDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Augmented ``tile_size`` crops: ``(image [C, T, T] normalised, mask [T, T] long)``.

    Indexed by ``(frame, seed)`` pairs from :class:`EpochSampler`: each crop's randomness comes
    from its own seed, wherever (whichever worker) it is computed.
    """

    def __init__(
        self,
        frames: Frames,
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
        # Per frame, the flat indices of each present class's pixels: a defect-centred crop
        # picks the class first (see random_crop), so small classes are not crowded out.
        self.defects: list[list[np.ndarray]] = []
        rng = np.random.default_rng(0)
        for image, mask in zip(frames.images, frames.masks, strict=True):
            h, w = mask.shape
            ph, pw = max(0, tile_size - h), max(0, tile_size - w)
            if ph or pw:  # reflect-pad small frames once, image and mask alike
                image = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="reflect")
                mask = np.pad(mask, ((0, ph), (0, pw)), mode="reflect")
            flat = mask.ravel()
            where = np.flatnonzero(flat)
            by_class = []
            for c in np.unique(flat[where]):
                pixels = where[flat[where] == c]
                if len(pixels) > _MAX_DEFECT_PIXELS:
                    pixels = np.sort(rng.choice(pixels, _MAX_DEFECT_PIXELS, replace=False))
                by_class.append(pixels)
            self.images.append(image)
            self.masks.append(mask)
            self.defects.append(by_class)

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


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(frame, seed)`` keys; the main process sets the next epoch's keys."""

    def __init__(self) -> None:
        self.keys: list[tuple[int, int]] = []

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(list(self.keys))

    def __len__(self) -> int:
        return len(self.keys)


def epoch_keys(
    frames: Frames,
    *,
    seed: int,
    epoch: int,
    neg_per_pos: float | None,
    samples_per_epoch: int | None,
) -> list[tuple[int, int]]:
    """This epoch's ``(frame, crop seed)`` keys: a function of ``(seed, epoch)`` only."""
    rng = np.random.default_rng([seed, epoch])
    pos, neg = frames.positives(), frames.negatives()
    if neg_per_pos is not None and pos:
        n_neg = min(len(neg), round(neg_per_pos * len(pos)))
        neg = sorted(rng.choice(neg, size=n_neg, replace=False).tolist()) if n_neg else []
    chosen = np.array(pos + neg, dtype=np.int64)
    order = rng.permutation(chosen)
    if samples_per_epoch is not None:
        order = np.resize(order, samples_per_epoch)
    seeds = np.random.default_rng([seed, epoch, 1]).integers(0, 2**62, size=len(order))
    return [(int(i), int(s)) for i, s in zip(order, seeds, strict=True)]


def to_target(mask: torch.Tensor, activation: Activation, n_classes: int) -> torch.Tensor:
    """Class-index masks -> the loss's target: indices (softmax) or one-hot float (sigmoid)."""
    if activation == "softmax":
        return mask
    classes = torch.arange(1, n_classes + 1, device=mask.device).view(1, -1, 1, 1)
    return (mask.unsqueeze(1) == classes).float()


def channel_stats(frames: Frames, limit: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (at least 1e-3) of up to ``limit`` evenly spaced frames."""
    picks = frames.images[:: max(1, len(frames.images) // limit)][:limit]
    flat = np.concatenate([im.reshape(-1, im.shape[2]) for im in picks])
    mean = flat.mean(axis=0).astype(np.float32)
    std = np.maximum(flat.std(axis=0), 1e-3).astype(np.float32)
    return mean, std


def default_workers(device: torch.device) -> int:
    """DataLoader workers from the cores: CUDA keeps them busy; on a small CPU they compete."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    if device.type == "cuda":
        return max(0, min(8, cores - 2))
    return 0 if cores <= 4 else min(4, cores // 4)


def make_loader(
    dataset: TileDataset,
    sampler: EpochSampler,
    *,
    batch_size: int,
    device: torch.device,
    workers: int,
    n_keys: int,
) -> DataLoader[tuple[torch.Tensor, torch.Tensor]]:
    """The crop loader: batches of ``batch_size``, the last partial one dropped when possible."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=n_keys > batch_size,
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
