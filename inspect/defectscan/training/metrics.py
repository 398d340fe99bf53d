"""Segmentation metrics as the line sees them: defect classes only, pooled and per image.

- Per-class IoU and Dice **pooled** over the set (sum of intersections over sum of unions, the
  figure that is not inflated by easy images) and **per image** (mean over the images where
  the class is in the target or the prediction).
- Pixel AUROC of the defect score (sigmoid: the highest class probability; softmax: one minus
  the background probability) against defect vs background, from binned score histograms.
- Image level: recall (defective images flagged) and false-reject rate (good images flagged),
  where an image is flagged when it has a predicted defect pixel (or as the caller says: the
  inspection verdict), and the image AUROC of the image score (the highest defect score).
- The per-class threshold that maximises pixel F1 (= pooled Dice) on the set, from binned
  score histograms.

Everything is accumulated on the device the predictions are on (confusion counts by
``bincount``, score histograms, per-image counts): one batch costs a few vectorised kernels and
nothing is copied to the host until :meth:`SegmentationEvaluator.compute`.

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

from defectscan.errors import TargetShapeError
from defectscan.model.spec import Activation

__all__ = [
    "EvalReport",
    "SegmentationEvaluator",
    "auroc_from_histograms",
    "best_f1_threshold",
    "pooled_iou_dice",
    "rank_auroc",
]


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


def auroc_from_histograms(pos_hist: np.ndarray, neg_hist: np.ndarray) -> float | None:
    """ROC AUC of binned scores (ties within a bin count one half); None without both kinds."""
    pos = np.asarray(pos_hist, np.float64)
    neg = np.asarray(neg_hist, np.float64)
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return None
    neg_below = np.cumsum(neg) - neg  # negatives in lower bins
    return float((pos * (neg_below + 0.5 * neg)).sum() / (n_pos * n_neg))


def rank_auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Exact ROC AUC (Mann-Whitney, ties count one half); None without both classes."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels, bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(len(s), np.float64)
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[i : j + 1] = (i + j) / 2 + 1
        i = j + 1
    r = np.empty_like(ranks)
    r[order] = ranks
    return float((r[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


RECALL_AT_FRR = 0.05


def recall_at_false_reject_rate(
    scores: np.ndarray, defective: np.ndarray, frr: float = RECALL_AT_FRR
) -> float | None:
    """Share of defective images scoring above the lowest threshold that flags at most ``frr``
    of the good ones (strictly above: a tie with a good image's score is not a catch).

    None without both kinds of image.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    defective = np.asarray(defective, dtype=bool).reshape(-1)
    good, bad = scores[~defective], scores[defective]
    if good.size == 0 or bad.size == 0:
        return None
    allowed = int(np.floor(frr * good.size + 1e-9))  # good images that may score above it
    threshold = np.sort(good)[::-1][allowed] if allowed < good.size else -np.inf
    return float((bad > threshold).mean())


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
    pooled_iou: float | None = None
    pooled_dice: float | None = None
    image_auroc: float | None = None
    # Image recall on the peak defect score at the threshold that rejects at most
    # RECALL_AT_FRR of the good images: the learning curve's verdict figure, comparable
    # across epochs and recipes (the calibrated verdict also filters by area).
    recall_at_frr: float | None = None

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
            "pooled_iou": self.pooled_iou,
            "pooled_dice": self.pooled_dice,
            "pixel_auroc": self.pixel_auroc,
            "image_auroc": self.image_auroc,
            "recall_at_frr": self.recall_at_frr,
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
            ("pooled_iou", self.pooled_iou),
            ("pooled_dice", self.pooled_dice),
            ("pixel_auroc", self.pixel_auroc),
            ("image_auroc", self.image_auroc),
            ("recall_at_frr", self.recall_at_frr),
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


def _clean(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


class SegmentationEvaluator:
    """Accumulates batches of predictions and class-index targets; :meth:`compute` reports.

    State lives on the device of the first batch; only :meth:`compute` (and
    :meth:`best_thresholds`) copy the summaries to the host.
    """

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
        self._device: torch.device | None = None
        self._state: dict[str, torch.Tensor] = {}
        self._image_scores: list[torch.Tensor] = []
        self._image_defective: list[torch.Tensor] = []

    def _init_state(self, device: torch.device) -> None:
        k, bins = len(self.class_names), self.bins
        z = torch.zeros
        self._device = device
        self._state = {
            "confusion": z((k + 1, k + 1), dtype=torch.int64, device=device),  # [target, pred]
            "img_iou_sum": z(k, dtype=torch.float64, device=device),
            "img_dice_sum": z(k, dtype=torch.float64, device=device),
            "img_count": z(k, dtype=torch.int64, device=device),
            "hist": z((k, 2, bins), dtype=torch.int64, device=device),  # [class, neg/pos, bin]
            "defect_hist": z((2, bins), dtype=torch.int64, device=device),
            "images": z(4, dtype=torch.int64, device=device),  # n, defective, detected, false rej
        }

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

    def _check(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        k = len(self.class_names)
        expected_c = k if self.activation == "sigmoid" else k + 1
        if (
            probs.ndim != 4
            or probs.shape[1] != expected_c
            or tuple(target.shape) != (probs.shape[0], *probs.shape[2:])
        ):
            msg = (
                f"metrics need probs [B, {expected_c}, H, W] and class indices [B, H, W]; got "
                f"{tuple(probs.shape)} and {tuple(target.shape)}"
            )
            raise TargetShapeError(msg)

    @torch.no_grad()
    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        """Add ``probs`` [B, C, H, W] (after sigmoid/softmax) and class indices [B, H, W]."""
        self._check(probs, target)
        probs = probs.detach().float()
        target = target.detach().to(probs.device).long()
        self.update_predictions(self.predict(probs), target, probs=probs)

    @torch.no_grad()
    def update_predictions(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        *,
        probs: torch.Tensor | None = None,
        flagged: torch.Tensor | None = None,
    ) -> None:
        """Add decided class maps ``pred`` [B, H, W] (e.g. an inspection's) and targets.

        ``probs`` (optional) feeds the score histograms, AUROCs and best thresholds;
        ``flagged`` [B] bool overrides "the image has a predicted defect pixel" (a verdict).
        """
        k = len(self.class_names)
        if pred.shape != target.shape or pred.ndim != 3:
            msg = (
                f"metrics need class maps [B, H, W] like the target; got {tuple(pred.shape)} "
                f"and {tuple(target.shape)}"
            )
            raise TargetShapeError(msg)
        if self._device is None:
            self._init_state(pred.device)
        dev = self._device
        assert dev is not None
        pred = pred.to(dev).long()
        target = target.to(dev).long()
        st = self._state
        b = pred.shape[0]
        n = k + 1
        # Per-image confusion [B, target, pred] by one bincount.
        flat = (target * n + pred).reshape(b, -1)
        flat = flat + torch.arange(b, device=dev).view(-1, 1) * (n * n)
        conf = torch.bincount(flat.reshape(-1), minlength=b * n * n).view(b, n, n)
        st["confusion"] += conf.sum(0)
        diag = torch.diagonal(conf, dim1=1, dim2=2)[:, 1:]  # [B, K]
        fp = conf.sum(1)[:, 1:] - diag
        fn = conf.sum(2)[:, 1:] - diag
        union = diag + fp + fn
        present = union > 0
        iou = diag.double() / union.clamp(min=1).double()
        dice = 2 * diag.double() / (2 * diag + fp + fn).clamp(min=1).double()
        st["img_iou_sum"] += torch.where(present, iou, torch.zeros_like(iou)).sum(0)
        st["img_dice_sum"] += torch.where(present, dice, torch.zeros_like(dice)).sum(0)
        st["img_count"] += present.sum(0)
        defective = (target > 0).reshape(b, -1).any(1)
        if flagged is None:
            flagged = (pred > 0).reshape(b, -1).any(1)
        flagged = flagged.to(dev).bool()
        st["images"] += torch.stack(
            [
                torch.tensor(b, device=dev),
                defective.sum(),
                (defective & flagged).sum(),
                (~defective & flagged).sum(),
            ]
        )
        if probs is None:
            return
        probs = probs.to(dev).float()
        offset = 0 if self.activation == "sigmoid" else 1
        scores = probs[:, offset:]  # [B, K, H, W]: the score of each defect class
        idx = (scores * self.bins).long().clamp_(0, self.bins - 1)
        is_pos = (
            target.unsqueeze(1) == torch.arange(1, k + 1, device=dev).view(1, -1, 1, 1)
        ).long()
        cls = torch.arange(k, device=dev).view(1, -1, 1, 1)
        code = (cls * 2 + is_pos) * self.bins + idx
        st["hist"] += torch.bincount(code.reshape(-1), minlength=k * 2 * self.bins).view(
            k, 2, self.bins
        )
        defect_score = scores.amax(dim=1) if self.activation == "sigmoid" else 1 - probs[:, 0]
        didx = (defect_score * self.bins).long().clamp_(0, self.bins - 1)
        dcode = (target > 0).long() * self.bins + didx
        st["defect_hist"] += torch.bincount(dcode.reshape(-1), minlength=2 * self.bins).view(
            2, self.bins
        )
        self._image_scores.append(defect_score.reshape(b, -1).amax(1))
        self._image_defective.append(defective)

    def add_image_summaries(self, scores: torch.Tensor, defective: torch.Tensor) -> None:
        """Image scores (highest defect score) for the image AUROC, when probs are not passed."""
        self._image_scores.append(scores.detach().float().reshape(-1))
        self._image_defective.append(defective.detach().bool().reshape(-1))

    def _hist(self) -> np.ndarray:
        if not self._state:
            return np.zeros((len(self.class_names), 2, self.bins), np.int64)
        return self._state["hist"].cpu().numpy()

    def best_thresholds(self) -> tuple[float, ...]:
        """Per-class threshold maximising pixel F1 (0.5 for a class with no positive pixel)."""
        hist = self._hist()
        out = []
        for c in range(len(self.class_names)):
            pos, neg = hist[c, 1], hist[c, 0]
            out.append(best_f1_threshold(pos, neg)[0] if pos.sum() else 0.5)
        return tuple(out)

    def compute(self) -> EvalReport:
        """The report for everything added so far (the one host copy of the summaries)."""
        if not self._state:
            self._init_state(torch.device("cpu"))
        host = {name: t.cpu().numpy() for name, t in self._state.items()}
        conf = host["confusion"]
        hist = host["hist"]
        per_class: dict[str, dict[str, float | None]] = {}
        best = self.best_thresholds()
        tps = np.diagonal(conf)[1:].astype(np.float64)
        fps = conf.sum(0)[1:] - tps
        fns = conf.sum(1)[1:] - tps
        for c, name in enumerate(self.class_names):
            iou, dice = pooled_iou_dice(float(tps[c]), float(fps[c]), float(fns[c]))
            pos, neg = hist[c, 1], hist[c, 0]
            f1 = best_f1_threshold(pos, neg)[1] if pos.sum() else math.nan
            count = int(host["img_count"][c])
            per_class[name] = {
                "iou": _clean(iou),
                "dice": _clean(dice),
                "iou_per_image": float(host["img_iou_sum"][c]) / count if count else None,
                "dice_per_image": float(host["img_dice_sum"][c]) / count if count else None,
                "best_threshold": best[c],
                "best_f1": _clean(f1),
                "target_pixels": float(tps[c] + fns[c]),
            }
        ious = [v["iou"] for v in per_class.values() if v["iou"] is not None]
        dices = [v["dice"] for v in per_class.values() if v["dice"] is not None]
        # Pooled over the defect classes: any defect class vs background, as one class.
        tp_all = float(conf[1:, 1:].sum())
        fp_all = float(conf[0, 1:].sum())
        fn_all = float(conf[1:, 0].sum())
        pooled_iou, pooled_dice = pooled_iou_dice(tp_all, fp_all, fn_all)
        n_img, n_def, detected, false_rej = (int(v) for v in host["images"])
        n_good = n_img - n_def
        image_auroc = recall_frr = None
        if self._image_scores:
            scores = torch.cat([s.float().cpu() for s in self._image_scores]).numpy()
            labels = torch.cat([d.cpu() for d in self._image_defective]).numpy()
            image_auroc = rank_auroc(scores, labels)
            recall_frr = recall_at_false_reject_rate(scores, labels, RECALL_AT_FRR)
        return EvalReport(
            class_names=self.class_names,
            activation=self.activation,
            per_class=per_class,
            mean_iou=float(np.mean(ious)) if ious else None,
            mean_dice=float(np.mean(dices)) if dices else None,
            pixel_auroc=auroc_from_histograms(host["defect_hist"][1], host["defect_hist"][0]),
            image_recall=detected / n_def if n_def else None,
            false_reject_rate=false_rej / n_good if n_good else None,
            n_images=n_img,
            n_defective_images=n_def,
            thresholds=self.thresholds,
            best_thresholds=best,
            pooled_iou=_clean(pooled_iou),
            pooled_dice=_clean(pooled_dice),
            image_auroc=image_auroc,
            recall_at_frr=recall_frr,
        )
