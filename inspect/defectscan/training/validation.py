"""The quick per-epoch score: whole validation frames through the model, metrics on the device.

Validation frames are normalised, padded and batched once (on the training device when they
fit); predictions and metrics stay on the device and only summaries reach the host. The
decision production makes (tiling, minimum area, calibrated rule) is scored elsewhere, by
:func:`defectscan.training.evaluate.evaluate_dataset`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from defectscan.imaging import DEFAULT_MAX_PIXELS
from defectscan.model.spec import ModelSpec
from defectscan.training.frames import Frames
from defectscan.training.metrics import EvalReport, SegmentationEvaluator

__all__ = ["ValBatches", "autocast", "evaluate_model"]

# Validation batches hold about this many padded pixels (a batch of 8 frames of 256 x 256).
_VAL_BATCH_PIXELS = 8 * 256 * 256
# Validation inputs stay on the training device below this size, else they are copied per batch.
_VAL_DEVICE_BYTES = 1 << 30


class ValBatches:
    """Validation frames normalised, reflect-padded to a multiple of 16 and batched, once.

    Frames of one size share a batch; the batch's targets and original size go with it.
    """

    def __init__(
        self, frames: Frames, spec: ModelSpec, device: torch.device, *, channels_last: bool
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


def autocast(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` to ``dtype`` on ``device``, or nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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
    if isinstance(frames_or_samples, ValBatches):
        batches = frames_or_samples
    else:
        frames = frames_or_samples
        if not isinstance(frames, Frames):
            frames = Frames(
                frames_or_samples,
                n_classes=len(spec.class_names),
                binary=binary,
                channel_order=spec.channel_order,
                n_channels=spec.n_channels,
                max_pixels=max_pixels,
            )
        batches = ValBatches(frames, spec, device, channels_last=channels_last)
    evaluator = SegmentationEvaluator(
        spec.class_names, spec.activation, thresholds=thresholds or spec.thresholds
    )
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for x, target, h, w in batches:
            with autocast(device, autocast_dtype):
                logits = model(x)
            logits = logits.float()[:, :, :h, :w]
            probs = torch.sigmoid(logits) if spec.activation == "sigmoid" else logits.softmax(1)
            evaluator.update(probs, target)
    model.train(was_training)
    return evaluator.compute(), evaluator
