"""Augmentation keeps image and mask aligned pixel for pixel, and is reproducible."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from defectscan.synth import make_sample
from defectscan.training.augment import build_train_transform, build_val_transform


def _coded_pair(seed: int, h: int = 40, w: int = 56) -> tuple[np.ndarray, np.ndarray]:
    """An image whose pixel values encode its mask (value = 40 * class + 10), float in [0, 1]."""
    mask = make_sample(seed, height=h, width=w, n_defects=3).mask
    image = ((mask.astype(np.float32) * 40.0 + 10.0) / 255.0)[:, :, None]
    return image, mask


@pytest.mark.parametrize("seed", range(25))
def test_geometric_transforms_keep_mask_and_image_aligned(seed: int) -> None:
    # Nearest-neighbour for the image too, so that alignment can be checked exactly: any
    # shift, flip, turn, crop, pad or affine applied to one and not the other shows up here.
    t = build_train_transform(
        32, seed=seed, photometric=False, interpolation=cv2.INTER_NEAREST, defect_crop_p=0.5
    )
    image, mask = _coded_pair(seed)
    for _ in range(4):
        out = t(image=image, mask=mask)
        img, m = out["image"], out["mask"]
        assert img.shape[:2] == m.shape == (32, 32)
        decoded = np.rint((img[:, :, 0] * 255.0 - 10.0) / 40.0).astype(np.int64)
        assert np.array_equal(decoded, m.astype(np.int64))


def test_small_frames_are_reflect_padded_consistently() -> None:
    t = build_train_transform(64, seed=0, photometric=False, geometric=False)
    image, mask = _coded_pair(3, h=20, w=30)
    out = t(image=image, mask=mask)
    assert out["mask"].shape == (64, 64)
    decoded = np.rint((out["image"][:, :, 0] * 255.0 - 10.0) / 40.0).astype(np.int64)
    assert np.array_equal(decoded, out["mask"].astype(np.int64))


def test_photometric_changes_touch_the_image_only() -> None:
    t = build_train_transform(32, seed=1, geometric=False, defect_crop_p=0.0)
    image, mask = _coded_pair(4, h=32, w=32)
    changed = False
    for _ in range(10):
        out = t(image=image, mask=mask)
        assert np.array_equal(out["mask"], mask)  # a 32x32 crop of a 32x32 frame is the frame
        changed |= not np.allclose(out["image"], image)
    assert changed


def test_same_seed_gives_the_same_augmentations() -> None:
    image, mask = _coded_pair(5)
    a = build_train_transform(32, seed=11)
    b = build_train_transform(32, seed=11)
    for _ in range(3):
        ra, rb = a(image=image, mask=mask), b(image=image, mask=mask)
        assert np.array_equal(ra["image"], rb["image"])
        assert np.array_equal(ra["mask"], rb["mask"])


def test_validation_pads_bottom_right_to_a_multiple_of_16() -> None:
    image, mask = _coded_pair(6, h=37, w=50)
    out = build_val_transform()(image=image, mask=mask)
    assert out["image"].shape[:2] == (48, 64)
    assert np.array_equal(out["image"][:37, :50], image)
    assert np.array_equal(out["mask"][:37, :50], mask)
