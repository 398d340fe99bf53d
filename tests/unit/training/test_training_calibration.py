"""Verdict calibration: the false-reject target on good parts is met with the best recall."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from defectscan.model.spec import ModelSpec
from defectscan.postprocess import PostprocessConfig, postprocess
from defectscan.training.datasets import Sample
from defectscan.training.evaluate import InspectedFrame, calibrate


def _frame(probs: np.ndarray, truth: np.ndarray) -> InspectedFrame:
    sample = Sample(Path("x.png"), None, "g")
    return InspectedFrame(sample, None, probs[None].astype(np.float32), truth)  # type: ignore[arg-type]


def _frames(seed: int = 0) -> list[InspectedFrame]:
    # 50 good frames with noise specks (a few pixels at up to 0.8) and 20 defective ones with a
    # 6x6 defect at 0.9: specks must be dropped by area (or threshold), defects kept.
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(70):
        probs = rng.uniform(0.0, 0.2, (32, 32))
        truth = np.zeros((32, 32), np.uint8)
        y, x = rng.integers(2, 24, 2)
        probs[y : y + 2, x : x + 1] = rng.uniform(0.5, 0.8)  # a 2-pixel speck
        if i >= 50:
            y, x = rng.integers(2, 24, 2)
            probs[y : y + 6, x : x + 6] = 0.9
            truth[y : y + 6, x : x + 6] = 1
        frames.append(_frame(probs, truth))
    return frames


def test_calibration_meets_the_false_reject_target_with_full_recall() -> None:
    spec = ModelSpec(
        n_channels=1, activation="sigmoid", class_names=("defect",), channel_order="GRAY"
    )
    frames = _frames()
    cal = calibrate(frames, spec, target_false_reject_rate=0.02)
    assert cal.met
    assert cal.false_reject_rate is not None
    assert cal.false_reject_rate <= 0.02
    assert cal.image_recall == 1.0
    # What calibration promises is what post-processing with the stored rule does.
    cfg = PostprocessConfig.from_spec(cal.apply(spec))
    verdicts = [postprocess(f.probs, cfg).verdict for f in frames]
    assert sum(v == "fail" for v in verdicts[:50]) / 50 == pytest.approx(cal.false_reject_rate)
    assert all(v == "fail" for v in verdicts[50:])
    # At the default rule (0.5, no minimum area) every good frame would be rejected.
    default = PostprocessConfig.from_spec(spec)
    assert all(postprocess(f.probs, default).verdict == "fail" for f in frames[:50])


def test_softmax_calibration_sets_min_confidence_and_area() -> None:
    spec = ModelSpec(
        n_channels=1, activation="softmax", class_names=("defect",), channel_order="GRAY"
    )
    frames = []
    for f in _frames(1):
        p = f.probs[0]
        frames.append(_frame(np.stack([1 - p, p]), f.truth))
    for f in frames:  # _frame added a leading axis; softmax probs are [2, H, W]
        f.probs = f.probs[0]
    cal = calibrate(frames, spec, target_false_reject_rate=0.0)
    assert cal.met
    assert cal.image_recall == 1.0
    assert cal.false_reject_rate == 0.0
    cfg = PostprocessConfig.from_spec(cal.apply(spec))
    assert all(postprocess(f.probs, cfg).verdict == "pass" for f in frames[:50])


def test_when_good_parts_look_defective_the_target_costs_recall_and_says_so() -> None:
    spec = ModelSpec(
        n_channels=1, activation="sigmoid", class_names=("defect",), channel_order="GRAY"
    )
    # Good frames carry the same blob as defective ones: no rule tells them apart, so holding
    # false rejects at 2% means passing most defective parts, and the report shows it.
    frames = []
    for f in _frames(2):
        probs = f.probs.copy()
        probs[0, 10:16, 10:16] = 0.9
        frames.append(_frame(probs[0], f.truth))
    cal = calibrate(frames, spec, target_false_reject_rate=0.02)
    assert cal.false_reject_rate is not None
    assert cal.false_reject_rate <= 0.02
    assert cal.image_recall is not None
    assert cal.image_recall < 0.5
