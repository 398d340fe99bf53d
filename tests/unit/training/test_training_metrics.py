"""Metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from defectscan.errors import TargetShapeError
from defectscan.training.metrics import (
    SegmentationEvaluator,
    best_f1_threshold,
    recall_at_false_reject_rate,
)


def _softmax_probs(pred: torch.Tensor, k: int) -> torch.Tensor:
    """One-hot "probabilities" [B, k+1, H, W] that argmax back to ``pred``."""
    return torch.nn.functional.one_hot(pred, k + 1).permute(0, 3, 1, 2).float()


def test_softmax_pooled_and_per_image_iou_dice_image_recall_false_rejects() -> None:
    # Image 1: class 1 target 4 px, predicted 2 of them + 2 wrong px -> tp 2, fp 2, fn 2.
    # Image 2: class 2 target 2 px, predicted exactly.  Image 3: good, predicted clean.
    # Image 4: good, 1 px predicted as class 2 (a false reject).
    t = torch.zeros(4, 4, 4, dtype=torch.long)
    p = torch.zeros(4, 4, 4, dtype=torch.long)
    t[0, 0, 0:4] = 1
    p[0, 0, 0:2] = 1
    p[0, 1, 0:2] = 1
    t[1, 2, 2:4] = 2
    p[1, 2, 2:4] = 2
    p[3, 3, 3] = 2
    ev = SegmentationEvaluator(("a", "b"), "softmax")
    ev.update(_softmax_probs(p, 2), t)
    r = ev.compute()
    a, b = r.per_class["a"], r.per_class["b"]
    assert a["iou"] == pytest.approx(2 / 6)
    assert a["dice"] == pytest.approx(4 / 8)
    # class b pooled: tp 2, fp 1 (image 4), fn 0
    assert b["iou"] == pytest.approx(2 / 3)
    assert b["dice"] == pytest.approx(4 / 5)
    # per image: b is defined on images 2 (iou 1) and 4 (iou 0)
    assert b["iou_per_image"] == pytest.approx(0.5)
    assert a["iou_per_image"] == pytest.approx(2 / 6)
    assert r.mean_iou == pytest.approx((2 / 6 + 2 / 3) / 2)
    assert r.image_recall == 1.0
    assert r.false_reject_rate == pytest.approx(0.5)
    assert (r.n_images, r.n_defective_images) == (4, 2)
    assert r.pixel_auroc is not None
    assert 0.5 < r.pixel_auroc <= 1.0
    d = r.to_dict()
    assert d["iou"] == {"a": a["iou"], "b": b["iou"]}


def test_sigmoid_uses_per_class_thresholds_like_inference() -> None:
    probs = torch.tensor([[[[0.2, 0.4, 0.6, 0.9]]]])  # [1, 1, 1, 4]
    target = torch.tensor([[[0, 1, 1, 1]]])
    at_half = SegmentationEvaluator(("d",), "sigmoid", thresholds=(0.5,))
    at_half.update(probs, target)
    assert at_half.compute().per_class["d"]["iou"] == pytest.approx(2 / 3)
    at_03 = SegmentationEvaluator(("d",), "sigmoid", thresholds=(0.3,))
    at_03.update(probs, target)
    assert at_03.compute().per_class["d"]["iou"] == pytest.approx(1.0)
    # The F1-best threshold separates 0.2 from 0.4.
    thr = at_half.best_thresholds()[0]
    assert 0.2 < thr <= 0.4


def test_best_f1_threshold_from_histograms() -> None:
    pos = np.array([0, 0, 1, 3])  # positives mostly in the top bins
    neg = np.array([5, 3, 1, 0])
    thr, f1 = best_f1_threshold(pos, neg)
    # bins >= 2: tp 4, fp 1, fn 0 -> F1 8/9; bins >= 3: tp 3, fp 0, fn 1 -> 6/7
    assert thr == pytest.approx(0.5)
    assert f1 == pytest.approx(8 / 9)


def test_absent_class_is_left_out_of_the_mean_not_counted_as_perfect() -> None:
    t = torch.zeros(1, 4, 4, dtype=torch.long)
    t[0, 0, 0] = 1
    ev = SegmentationEvaluator(("a", "b"), "softmax")
    ev.update(_softmax_probs(t.clone(), 2), t)
    r = ev.compute()
    assert r.per_class["b"]["iou"] is None
    assert r.mean_iou == pytest.approx(1.0)
    assert r.false_reject_rate is None  # no good image in the set
    assert not math.isnan(r.per_class["a"]["iou"] or math.nan)


def test_wrong_shapes_are_refused() -> None:
    ev = SegmentationEvaluator(("a",), "softmax")
    with pytest.raises(TargetShapeError):
        ev.update(torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))


def test_recall_at_false_reject_rate_counts_only_defects_above_the_allowed_good_scores() -> None:
    # 20 good images: at 5% one of them may score above the threshold (0.9 here).
    good = np.array([0.1] * 18 + [0.9, 0.95])
    bad = np.array([0.2, 0.5, 0.91, 0.99])
    scores = np.concatenate([good, bad])
    defective = np.array([False] * 20 + [True] * 4)
    assert recall_at_false_reject_rate(scores, defective, 0.05) == pytest.approx(0.5)
    # No good image may score above it: only the defect above 0.95 counts.
    assert recall_at_false_reject_rate(scores, defective, 0.0) == pytest.approx(0.25)
    # A tie with a good image is not a catch.
    assert recall_at_false_reject_rate(np.array([0.3, 0.3]), np.array([False, True]), 0.0) == 0.0
    assert recall_at_false_reject_rate(good, np.zeros(20, bool), 0.05) is None


def test_the_report_carries_recall_at_five_percent_false_rejects() -> None:
    ev = SegmentationEvaluator(["defect"], "sigmoid")
    probs = torch.zeros(4, 1, 8, 8)
    probs[2, 0, 1, 1] = 0.9  # defective image, found
    probs[1, 0, 0, 0] = 0.95  # a good image scoring higher than every defect
    target = torch.zeros(4, 8, 8, dtype=torch.long)
    target[2, 1, 1] = 1
    target[3, 5, 5] = 1  # defective image, missed
    ev.update(probs, target)
    report = ev.compute()
    assert report.recall_at_frr == 0.0  # 2 good images: 5% allows none above the threshold
    assert report.flat()["recall_at_frr"] == 0.0
