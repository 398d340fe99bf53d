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


def test_each_class_gets_its_own_threshold_and_minimum_area() -> None:
    # Good frames carry 10-pixel specks of "scratch" at 0.7; defects are either a 64-pixel
    # scratch at 0.95 or a 3-pixel "dent" at 0.6. One shared threshold and area cannot keep the
    # dents without failing the specks; a threshold above 0.7 for scratches and a low one with
    # a small area for dents can.
    spec = ModelSpec(
        n_channels=1,
        activation="sigmoid",
        class_names=("scratch", "dent"),
        channel_order="GRAY",
    )
    rng = np.random.default_rng(3)
    frames = []
    for i in range(90):
        probs = rng.uniform(0.0, 0.2, (2, 32, 32))
        truth = np.zeros((32, 32), np.uint8)
        y, x = rng.integers(2, 22, 2)
        probs[0, y : y + 2, x : x + 5] = 0.7  # a speck on every frame
        if i >= 60:
            y, x = rng.integers(2, 22, 2)
            if i % 2:
                probs[0, y : y + 8, x : x + 8] = 0.95
                truth[y : y + 8, x : x + 8] = 1
            else:
                probs[1, y : y + 1, x : x + 3] = 0.6
                truth[y : y + 1, x : x + 3] = 2
        sample = Sample(Path(f"{i}.png"), None, "g")
        frames.append(InspectedFrame(sample, None, probs.astype(np.float32), truth))  # type: ignore[arg-type]
    cal = calibrate(frames, spec, target_false_reject_rate=0.02)
    assert cal.met
    assert cal.false_reject_rate == 0.0
    assert cal.image_recall == 1.0
    assert cal.thresholds[0] >= 0.7 > 0.6 > cal.thresholds[1]
    assert cal.min_area[1] <= 3
    # The stored rule does what calibration promised, frame by frame.
    cfg = PostprocessConfig.from_spec(cal.apply(spec))
    verdicts = [postprocess(f.probs, cfg).verdict for f in frames]
    assert verdicts == ["pass"] * 60 + ["fail"] * 30
