"""Segmentation metrics as the line sees them: defect classes only, pooled and per image.

- Per-class IoU and Dice **pooled** over the set (sum of intersections over sum of unions, the
  figure that is not inflated by easy images) and **per image** (mean over the images where
  the class is in the target or the prediction).
- Pixel AUROC of the defect score (sigmoid: the highest class probability; softmax: one minus
  the background probability) against defect vs background, via torchmetrics (binned).
- Image level: recall (defective images with at least one predicted defect pixel) and
  false-reject rate (good images with at least one).
- The per-class threshold that maximises pixel F1 (= pooled Dice) on the set, from binned
  score histograms; training stores it in the checkpoint so inference uses it.

Predictions follow inference: sigmoid - class ``k`` where ``p_k > threshold_k``; softmax -
argmax, channel 0 = background. Background is never part of a mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torchmetrics.classification import BinaryAUROC

from defectscan.errors import TargetShapeError
from defectscan.model.spec import Activation

__all__ = ["EvalReport", "SegmentationEvaluator", "best_f1_threshold", "pooled_iou_dice"]


def pooled_iou_dice(tp: float, fp: float, fn: float) -> tuple[float, float]:
    """IoU and Dice from pixel counts; NaN when the class is absent from target and prediction."""
    union = tp + fp + fn
    if union == 0:
        return math.nan, math.nan
    return tp / union, 2 * tp / (2 * tp + fp + fn)


def best_f1_threshold(pos_hist: np.ndarray, neg_hist: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising F1 when pixels with score in bin ``>= j`` are positive.

    ``pos_hist``/``neg_hist`` count positive/negative pixels per score bin over [0, 1]; the
    threshold is the lower edge ``j / bins`` of the first positive bin (never 0).
    """
    bins = len(pos_hist)
    tp = np.cumsum(pos_hist[::-1])[::-1].astype(np.float64)  # pixels in bins >= j
    fp = np.cumsum(neg_hist[::-1])[::-1].astype(np.float64)
    fn = float(pos_hist.sum()) - tp
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    f1[0] = -1.0  # threshold 0 marks every pixel; never pick it
    j = int(np.argmax(f1))
    return j / bins, max(0.0, float(f1[j]))


@dataclass(frozen=True)
class EvalReport:
    """Validation / evaluation results; ``to_dict`` is the ``eval --json`` object."""

    class_names: tuple[str, ...]
    activation: Activation
    per_class: dict[str, dict[str, float | None]]
    mean_iou: float | None
    mean_dice: float | None
    pixel_auroc: float | None
    image_recall: float | None
    false_reject_rate: float | None
    n_images: int
    n_defective_images: int
    thresholds: tuple[float, ...]
    best_thresholds: tuple[float, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (NaN becomes None)."""
        return {
            "activation": self.activation,
            "classes": list(self.class_names),
            "iou": {k: v["iou"] for k, v in self.per_class.items()},
            "dice": {k: v["dice"] for k, v in self.per_class.items()},
            "per_class": self.per_class,
            "mean_iou": self.mean_iou,
            "mean_dice": self.mean_dice,
            "pixel_auroc": self.pixel_auroc,
            "image_recall": self.image_recall,
            "false_reject_rate": self.false_reject_rate,
            "n_images": self.n_images,
            "n_defective_images": self.n_defective_images,
            "thresholds": list(self.thresholds),
            "best_thresholds": list(self.best_thresholds),
            **self.extra,
        }

    def flat(self) -> dict[str, float]:
        """Numbers only, keyed like ``iou/<class>``: the form stored in history and the registry."""
        out: dict[str, float] = {}
        for k, v in (
            ("mean_iou", self.mean_iou),
            ("mean_dice", self.mean_dice),
            ("pixel_auroc", self.pixel_auroc),
            ("image_recall", self.image_recall),
            ("false_reject_rate", self.false_reject_rate),
        ):
            if v is not None:
                out[k] = float(v)
        for name, d in self.per_class.items():
            for key in ("iou", "dice"):
                val = d.get(key)
                if val is not None:
                    out[f"{key}/{name}"] = float(val)
        return out


def _clean(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


class SegmentationEvaluator:
    """Accumulates batches of probabilities and class-index targets; :meth:`compute` reports."""

    def __init__(
        self,
        class_names: Sequence[str],
        activation: Activation,
        *,
        thresholds: Sequence[float] | None = None,
        bins: int = 200,
    ) -> None:
        self.class_names = tuple(class_names)
        self.activation: Activation = activation
        k = len(self.class_names)
        self.thresholds = tuple(float(t) for t in thresholds) if thresholds else (0.5,) * k
        if len(self.thresholds) != k:
            msg = f"{len(self.thresholds)} thresholds for {k} classes"
            raise ValueError(msg)
        self.bins = bins
        self._tp = np.zeros(k, np.int64)
        self._fp = np.zeros(k, np.int64)
        self._fn = np.zeros(k, np.int64)
        self._img_iou: list[list[float]] = [[] for _ in range(k)]
        self._img_dice: list[list[float]] = [[] for _ in range(k)]
        self._pos_hist = torch.zeros(k, bins, dtype=torch.int64)
        self._neg_hist = torch.zeros(k, bins, dtype=torch.int64)
        self._auroc = BinaryAUROC(thresholds=bins)
        self._n_images = 0
        self._n_defective = 0
        self._detected = 0
        self._false_rejects = 0

    def predict(self, probs: torch.Tensor) -> torch.Tensor:
        """Class-index map ``[B, H, W]`` from probabilities, as inference decides."""
        if self.activation == "softmax":
            return probs.argmax(dim=1)
        thr = torch.tensor(self.thresholds, dtype=probs.dtype, device=probs.device)
        above = probs > thr.view(1, -1, 1, 1)
        # Where several classes pass, the most probable one wins (one class per pixel).
        masked = torch.where(above, probs, torch.full_like(probs, -1.0))
        best = masked.argmax(dim=1) + 1
        return torch.where(above.any(dim=1), best, torch.zeros_like(best))

    @torch.no_grad()
    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        """Add ``probs`` [B, C, H, W] (after sigmoid/softmax) and class indices [B, H, W]."""
        k = len(self.class_names)
        expected_c = k if self.activation == "sigmoid" else k + 1
        if (
            probs.ndim != 4
            or probs.shape[1] != expected_c
            or target.shape
            != (
                probs.shape[0],
                *probs.shape[2:],
            )
        ):
            msg = (
                f"metrics need probs [B, {expected_c}, H, W] and class indices [B, H, W]; got "
                f"{tuple(probs.shape)} and {tuple(target.shape)}"
            )
            raise TargetShapeError(msg)
        probs = probs.detach().float().cpu()
        target = target.detach().long().cpu()
        pred = self.predict(probs)
        for b in range(probs.shape[0]):
            p, t = pred[b], target[b]
            self._n_images += 1
            defective = bool((t > 0).any())
            flagged = bool((p > 0).any())
            self._n_defective += defective
            self._detected += defective and flagged
            self._false_rejects += (not defective) and flagged
            for c in range(k):
                pc, tc = p == c + 1, t == c + 1
                tp = int((pc & tc).sum())
                fp = int((pc & ~tc).sum())
                fn = int((~pc & tc).sum())
                self._tp[c] += tp
                self._fp[c] += fp
                self._fn[c] += fn
                iou, dice = pooled_iou_dice(tp, fp, fn)
                if not math.isnan(iou):
                    self._img_iou[c].append(iou)
                    self._img_dice[c].append(dice)
        offset = 0 if self.activation == "sigmoid" else 1
        for c in range(k):
            score = probs[:, c + offset]
            idx = (score * self.bins).long().clamp_(0, self.bins - 1)
            pos = target == c + 1
            self._pos_hist[c] += torch.bincount(idx[pos], minlength=self.bins)
            self._neg_hist[c] += torch.bincount(idx[~pos], minlength=self.bins)
        defect_score = probs.max(dim=1).values if self.activation == "sigmoid" else 1 - probs[:, 0]
        self._auroc.update(defect_score.reshape(-1), (target > 0).reshape(-1).int())

    def best_thresholds(self) -> tuple[float, ...]:
        """Per-class threshold maximising pixel F1 (0.5 for a class with no positive pixel)."""
        out = []
        for c in range(len(self.class_names)):
            pos, neg = self._pos_hist[c].numpy(), self._neg_hist[c].numpy()
            out.append(best_f1_threshold(pos, neg)[0] if pos.sum() else 0.5)
        return tuple(out)

    def compute(self) -> EvalReport:
        """The report for everything added so far."""
        per_class: dict[str, dict[str, float | None]] = {}
        best = self.best_thresholds()
        for c, name in enumerate(self.class_names):
            iou, dice = pooled_iou_dice(float(self._tp[c]), float(self._fp[c]), float(self._fn[c]))
            pos, neg = self._pos_hist[c].numpy(), self._neg_hist[c].numpy()
            f1 = best_f1_threshold(pos, neg)[1] if pos.sum() else math.nan
            per_class[name] = {
                "iou": _clean(iou),
                "dice": _clean(dice),
                "iou_per_image": _clean(float(np.mean(self._img_iou[c])))
                if self._img_iou[c]
                else None,
                "dice_per_image": _clean(float(np.mean(self._img_dice[c])))
                if self._img_dice[c]
                else None,
                "best_threshold": best[c],
                "best_f1": _clean(f1),
                "target_pixels": float(self._tp[c] + self._fn[c]),
            }
        ious = [v["iou"] for v in per_class.values() if v["iou"] is not None]
        dices = [v["dice"] for v in per_class.values() if v["dice"] is not None]
        auroc: float | None = None
        n_pos = int(self._pos_hist.sum())
        if n_pos and int(self._neg_hist.sum()):
            auroc = _clean(float(self._auroc.compute()))
        n_good = self._n_images - self._n_defective
        return EvalReport(
            class_names=self.class_names,
            activation=self.activation,
            per_class=per_class,
            mean_iou=float(np.mean(ious)) if ious else None,
            mean_dice=float(np.mean(dices)) if dices else None,
            pixel_auroc=auroc,
            image_recall=self._detected / self._n_defective if self._n_defective else None,
            false_reject_rate=self._false_rejects / n_good if n_good else None,
            n_images=self._n_images,
            n_defective_images=self._n_defective,
            thresholds=self.thresholds,
            best_thresholds=best,
        )
