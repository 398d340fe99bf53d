"""Paired image + mask augmentation (albumentations 2), seeded.

Images enter as float32 ``(H, W, C)`` in [0, 1] (what :func:`defectscan.imaging.to_model_input`
gives before normalisation) and masks as uint8 class-index maps. Geometric transforms move both
with the same parameters; masks are always resampled with nearest-neighbour, so class indices
are never blended into values that do not exist. Photometric transforms touch the image only.
Frames smaller than a training tile are reflect-padded, image and mask alike, so the padded
mask still describes the padded pixels.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2

__all__ = ["build_train_transform", "build_val_transform"]


def build_train_transform(
    tile_size: int,
    *,
    seed: int = 0,
    photometric: bool = True,
    geometric: bool = True,
    defect_crop_p: float = 0.5,
    interpolation: int = cv2.INTER_LINEAR,
) -> A.Compose:
    """Random ``tile_size`` crops with flips, 90-degree turns, a small affine and photometric noise.

    ``defect_crop_p`` is the share of crops centred on a defect when the mask has one (tiny
    defects would otherwise be missing from most random crops). ``interpolation`` is the image's
    resampling for the affine step (masks always use nearest).
    """
    steps: list[Any] = [
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
