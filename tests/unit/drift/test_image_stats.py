"""Cheap image statistics: they move with lighting and focus, and only the right ones move."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from defectscan import synth
from defectscan.image_stats import STAT_NAMES, image_statistics


def _stats(img: np.ndarray) -> dict[str, float]:
    return dict(zip(STAT_NAMES, image_statistics(img), strict=True))


@pytest.fixture(scope="module")
def part() -> np.ndarray:
    return synth.make_sample(3, height=240, width=320).image


def test_brightness_and_contrast_move_brightness_not_gain_blind_sharpness(part: np.ndarray) -> None:
    base = _stats(part)
    dim = _stats(np.clip(part * 0.8, 0, 255).astype(np.uint8))
    assert dim["brightness"] < base["brightness"] * 0.85
    assert dim["mean_r"] < base["mean_r"]
    assert abs(dim["rel_sharpness"] - base["rel_sharpness"]) < 0.1
    mean = part.mean()
    flat = _stats(np.clip((part - mean) * 0.7 + mean, 0, 255).astype(np.uint8))
    assert flat["contrast"] < base["contrast"] * 0.8
    assert abs(flat["rel_sharpness"] - base["rel_sharpness"]) < 0.15


def test_blur_lowers_sharpness(part: np.ndarray) -> None:
    base = _stats(part)
    blurred = _stats(cv2.GaussianBlur(part, (0, 0), 3.0))
    assert blurred["sharpness"] < base["sharpness"] - 0.5
    assert blurred["rel_sharpness"] < base["rel_sharpness"] - 0.5


def test_clipping_gray_and_16_bit_frames() -> None:
    white = np.full((50, 60), 255, np.uint8)
    s = _stats(white)
    assert s["clipped"] == 1.0
    assert s["brightness"] == pytest.approx(1.0)
    assert s["mean_b"] == s["mean_g"] == s["mean_r"] == pytest.approx(1.0)
    ramp = (np.arange(200 * 300).reshape(200, 300) % 65536).astype(np.uint16)
    s16 = image_statistics(ramp)
    assert s16.shape == (len(STAT_NAMES),)
    assert np.all(np.isfinite(s16))
    assert 0.0 < s16[0] < 1.0
