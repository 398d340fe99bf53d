"""Segmentation losses that refuse targets shaped for the other activation.

The seed's rule: sigmoid (binary / multi-label) takes a float target of the logits' shape
``[B, C, H, W]`` and BCEWithLogits; softmax (multi-class) takes integer class indices ``[B, H, W]``
and CrossEntropy. Feeding a ``[B, 1, H, W]`` mask to a softmax loss (or indices to a sigmoid loss)
can still produce a number through broadcasting or implicit casts, a "fake loss" that trains
nothing useful. :func:`check_target` makes every such mix-up a :class:`TargetShapeError`.

Both losses add a soft Dice term over the defect classes (background excluded), pooled over the
batch, so that tiny defects count, by default as ``-ln Dice`` so that a class the model does not
predict yet still gets a strong gradient; class weights or a focal term help further.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from defectscan.errors import TargetShapeError
from defectscan.model.spec import Activation

__all__ = ["SegmentationLoss", "check_target", "dice_loss"]

_FAKE_LOSS = (
    'the seed warns that a mis-shaped target gives a "fake loss" that trains nothing: sigmoid '
    "needs a float target shaped like the logits [B, C, H, W]; softmax needs integer class "
    "indices [B, H, W] with values < C"
)


def check_target(logits: torch.Tensor, target: torch.Tensor, activation: Activation) -> None:
    """Raise :class:`TargetShapeError` unless ``target`` fits ``logits`` for ``activation``."""
    shapes = (
        f"logits {tuple(logits.shape)} ({logits.dtype}), "
        f"target {tuple(target.shape)} ({target.dtype})"
    )
    if logits.ndim != 4:
        msg = f"{activation} loss: logits must be [B, C, H, W]; got {shapes}. {_FAKE_LOSS}"
        raise TargetShapeError(msg)
    if activation == "sigmoid":
        if tuple(target.shape) != tuple(logits.shape):
            msg = f"sigmoid loss: target must have the logits' shape; got {shapes}. {_FAKE_LOSS}"
            raise TargetShapeError(msg)
        if not target.is_floating_point():
            msg = (
                f"sigmoid loss: target must be float 0/1 per class (did you pass class "
                f"indices meant for softmax?); got {shapes}. {_FAKE_LOSS}"
            )
            raise TargetShapeError(msg)
        return
    if activation == "softmax":
        b, c, h, w = logits.shape
        if tuple(target.shape) != (b, h, w):
            hint = (
                " (a [B, 1, H, W] mask: squeeze the channel and pass class indices)"
                if target.ndim == 4
                else ""
            )
            msg = (
                f"softmax loss: target must be [B, H, W] = {(b, h, w)}{hint}; got {shapes}. "
                f"{_FAKE_LOSS}"
            )
            raise TargetShapeError(msg)
        if target.is_floating_point() or target.dtype == torch.bool:
            msg = (
                f"softmax loss: target must hold integer class indices (torch.long); got "
                f"{shapes}. {_FAKE_LOSS}"
            )
            raise TargetShapeError(msg)
        if c < 2:
            msg = (
                f"softmax loss: logits need >= 2 channels (background + classes); got "
                f"{shapes}. {_FAKE_LOSS}"
            )
            raise TargetShapeError(msg)
        if target.numel():
            lo, hi = int(target.min()), int(target.max())
            if lo < 0 or hi >= c:
                msg = (
                    f"softmax loss: class indices must lie in [0, {c - 1}], found {lo}..{hi}; "
                    f"{shapes}. {_FAKE_LOSS}"
                )
                raise TargetShapeError(msg)
        return
    msg = f"unknown activation {activation!r}: use 'sigmoid' or 'softmax'"
    raise TargetShapeError(msg)


def dice_loss(
    probs: torch.Tensor, onehot: torch.Tensor, *, smooth: float = 1.0, log: bool = False
) -> torch.Tensor:
    """1 - soft Dice (or ``-ln`` Dice) per channel, pooled over batch and pixels, averaged over
    present channels.

    Channels absent from the batch's target are left out of the mean when any channel is
    present: with many classes most are absent from a batch of crops, and their Dice term
    (which only says "predict nothing") would otherwise swamp the classes that are there.

    ``log``: ``-ln Dice`` instead of ``1 - Dice``. Its gradient is the soft Dice's divided by
    Dice, so a class the model does not predict yet (Dice near 0, its probability squashed by
    the softmax or sigmoid) is pulled up hard instead of hardly at all; with ``1 - Dice`` such a
    class could stay at IoU 0 for a whole short run while the others were learned.
    """
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2.0 * inter + smooth) / (denom + smooth)
    per_channel = -torch.log(dice) if log else 1.0 - dice
    present = onehot.sum(dims) > 0
    if bool(present.any()):
        return per_channel[present].mean()
    return per_channel.mean()


class SegmentationLoss(nn.Module):
    """BCEWithLogits + Dice (sigmoid) or CrossEntropy + Dice (softmax), with shape checks.

    ``class_weights``: sigmoid - positive weight per class (``pos_weight``); softmax - weight
    per output channel including background. ``focal_gamma``: replace BCE / CE by its focal
    form, which down-weights easy pixels (the mass of background around a tiny defect).
    ``dice_log``: the Dice term as ``-ln Dice`` (see :func:`dice_loss`), so that rare, thin
    classes are not left behind; ``False`` is the plain ``1 - Dice``.
    """

    def __init__(
        self,
        activation: Activation,
        n_classes: int,
        *,
        dice_weight: float = 1.0,
        class_weights: Sequence[float] | None = None,
        focal_gamma: float | None = None,
        dice_log: bool = True,
    ) -> None:
        super().__init__()
        if activation not in ("sigmoid", "softmax"):
            msg = f"unknown activation {activation!r}: use 'sigmoid' or 'softmax'"
            raise TargetShapeError(msg)
        self.activation: Activation = activation
        self.n_classes = n_classes
        self.dice_weight = dice_weight
        self.focal_gamma = focal_gamma
        self.dice_log = dice_log
        weights = None
        if class_weights is not None:
            if len(class_weights) != n_classes:
                msg = (
                    f"class_weights has {len(class_weights)} values for {n_classes} output channels"
                )
                raise ValueError(msg)
            weights = torch.tensor([float(w) for w in class_weights], dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss (float32, whatever the autocast dtype of ``logits``)."""
        check_target(logits, target, self.activation)
        if logits.shape[1] != self.n_classes:
            msg = f"logits have {logits.shape[1]} channels, the loss was built for {self.n_classes}"
            raise TargetShapeError(msg)
        logits = logits.float()
        weights = self.class_weights if isinstance(self.class_weights, torch.Tensor) else None
        if self.activation == "sigmoid":
            pos_weight = None if weights is None else weights.view(1, -1, 1, 1)
            bce = F.binary_cross_entropy_with_logits(
                logits, target, pos_weight=pos_weight, reduction="none"
            )
            if self.focal_gamma:
                p_t = torch.exp(
                    -F.binary_cross_entropy_with_logits(logits, target, reduction="none")
                )
                bce = bce * (1.0 - p_t) ** self.focal_gamma
            base = bce.mean()
            probs = torch.sigmoid(logits)
            onehot = target
        else:
            ce = F.cross_entropy(logits, target, weight=weights, reduction="none")
            if self.focal_gamma:
                p_t = torch.exp(-F.cross_entropy(logits, target, reduction="none"))
                ce = ce * (1.0 - p_t) ** self.focal_gamma
            base = ce.mean()
            # Dice over defect channels only: background Dice is ~1 and would hide tiny defects.
            probs = torch.softmax(logits, dim=1)[:, 1:]
            onehot = F.one_hot(target, self.n_classes).permute(0, 3, 1, 2).float()[:, 1:]
        if self.dice_weight:
            return base + self.dice_weight * dice_loss(probs, onehot, log=self.dice_log)
        return base
