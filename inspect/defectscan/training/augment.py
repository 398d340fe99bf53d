"""Paired image + mask augmentation (albumentations 2), seeded.

Images enter as float32 ``(H, W, C)`` in [0, 1] (what :func:`defectscan.imaging.to_model_input`
gives before normalisation) and masks as uint8 class-index maps. Geometric transforms move both
with the same parameters; masks are always resampled with nearest-neighbour, so class indices
are never blended into values that do not exist. Photometric transforms touch the image only.
Frames smaller than a training tile are reflect-padded, image and mask alike, so the padded
mask still describes the padded pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np

__all__ = ["build_train_transform", "build_val_transform", "random_crop"]


def random_crop(
    image: np.ndarray,
    mask: np.ndarray,
    tile_size: int,
    rng: np.random.Generator,
    *,
    defect_pixels: np.ndarray | Sequence[np.ndarray] | None = None,
    defect_crop_p: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """A ``tile_size`` window of a frame at least that large (views, no copy).

    With probability ``defect_crop_p`` (when ``defect_pixels``, flat indices of defect pixels,
    is not empty) the window contains a randomly chosen defect pixel at a random position;
    otherwise it is uniform. ``defect_pixels`` may also be one array per class: then the class
    is drawn first, uniformly among the classes present, so that a frame's thin scratch is
    centred as often as its large stain (a pixel drawn from all of them would land on the stain
    almost every time). Costs O(1) per crop, whatever the frame size.
    """
    h, w = mask.shape[:2]
    if h < tile_size or w < tile_size:
        msg = f"frame {w}x{h} is smaller than the {tile_size} crop: pad it first"
        raise ValueError(msg)
    pixels = _pick_class(defect_pixels, rng)
    if pixels is not None and len(pixels) and rng.random() < defect_crop_p:
        y, x = divmod(int(pixels[rng.integers(len(pixels))]), w)
        y0 = int(np.clip(y - rng.integers(tile_size), 0, h - tile_size))
        x0 = int(np.clip(x - rng.integers(tile_size), 0, w - tile_size))
    else:
        y0 = int(rng.integers(h - tile_size + 1))
        x0 = int(rng.integers(w - tile_size + 1))
    return (
        image[y0 : y0 + tile_size, x0 : x0 + tile_size],
        mask[y0 : y0 + tile_size, x0 : x0 + tile_size],
    )


def _pick_class(
    defect_pixels: np.ndarray | Sequence[np.ndarray] | None, rng: np.random.Generator
) -> np.ndarray | None:
    """The defect pixels to centre on: all of them, or one class's (uniform over classes)."""
    if defect_pixels is None or isinstance(defect_pixels, np.ndarray):
        return defect_pixels
    present = [p for p in defect_pixels if len(p)]
    if len(present) <= 1:
        return present[0] if present else None
    return present[int(rng.integers(len(present)))]


def build_train_transform(
    tile_size: int,
    *,
    seed: int = 0,
    photometric: bool = True,
    geometric: bool = True,
    defect_crop_p: float = 0.5,
    interpolation: int = cv2.INTER_LINEAR,
    crop: bool = True,
    affine: bool = True,
) -> A.Compose:
    """Random ``tile_size`` crops with flips, 90-degree turns, a small affine and photometric noise.

    ``defect_crop_p`` is the share of crops centred on a defect when the mask has one (tiny
    defects would otherwise be missing from most random crops). ``interpolation`` is the image's
    resampling for the affine step (masks always use nearest). ``crop=False`` leaves out the
    padding and cropping (the training loop crops with :func:`random_crop`, which is O(1) per
    crop where albumentations' defect-aware crop scans the whole mask); ``affine=False`` keeps
    only flips and 90-degree turns of the geometric steps.
    """
    steps: list[Any] = []
    if crop:
        steps += [
            A.PadIfNeeded(
                min_height=tile_size,
                min_width=tile_size,
                border_mode=cv2.BORDER_REFLECT_101,
                position="top_left",
            ),
            A.OneOf(
                [
                    A.RandomCrop(tile_size, tile_size, p=1.0 - defect_crop_p),
                    A.CropNonEmptyMaskIfExists(tile_size, tile_size, p=defect_crop_p),
                ],
                p=1.0,
            ),
        ]
    if geometric:
        steps += [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.RandomRotate90(p=0.5),
        ]
    if geometric and affine:
        steps += [
            A.Affine(
                scale=(0.9, 1.1),
                translate_percent=(-0.05, 0.05),
                rotate=(-15, 15),
                interpolation=interpolation,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_REFLECT_101,
                p=0.3,
            ),
        ]
    if photometric:
        steps += [
            A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
            A.GaussNoise(std_range=(0.01, 0.04), p=0.2),
            A.GaussianBlur(blur_limit=(3, 5), sigma_limit=(0.3, 1.0), p=0.1),
        ]
    return A.Compose(steps, seed=seed, mask_interpolation=cv2.INTER_NEAREST)


def build_val_transform(*, pad_divisor: int = 16) -> A.Compose:
    """No augmentation: reflect-pad the bottom/right edge to a multiple of ``pad_divisor``.

    The padding is at the bottom right so the original frame is ``[:H, :W]`` of the output.
    """
    return A.Compose(
        [
            A.PadIfNeeded(
                min_height=None,
                min_width=None,
                pad_height_divisor=pad_divisor,
                pad_width_divisor=pad_divisor,
                position="top_left",
                border_mode=cv2.BORDER_REFLECT_101,
            )
        ]
    )
