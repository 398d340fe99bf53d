"""Cheap per-image statistics for drift monitoring, computed on a small thumbnail.

A frame is shrunk (area interpolation) to at most :data:`THUMB_SIDE` pixels on its longer side
and scaled to [0, 1]; on that thumbnail we measure what lighting, optics and the camera change
first. Each costs a few microseconds, next to the milliseconds of decoding the frame.

- ``brightness``: mean gray level.
- ``contrast``: RMS contrast (standard deviation of the gray levels).
- ``clipped``: share of pixels at or beyond the ends of the range (<= 1/255 or >= 254/255).
- ``sharpness``: log variance of the Laplacian (focus measure).
- ``rel_sharpness``: ``sharpness`` minus the log variance of the gray levels: the same focus
  measure made blind to a change of gain (a contrast or brightness change scales both variances
  alike), so that a lighting change is not taken for a lens going soft.
- ``mean_b``, ``mean_g``, ``mean_r``: channel means (all equal to brightness for gray images).
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["STAT_NAMES", "THUMB_SIDE", "image_statistics"]

#: Longer side of the thumbnail the statistics are measured on.
THUMB_SIDE = 96

#: The statistics :func:`image_statistics` returns, in order.
STAT_NAMES: tuple[str, ...] = (
    "brightness",
    "contrast",
    "clipped",
    "sharpness",
    "rel_sharpness",
    "mean_b",
    "mean_g",
    "mean_r",
)

_EPS = 1e-10


def image_statistics(pixels: np.ndarray) -> np.ndarray:
    """The :data:`STAT_NAMES` of a decoded frame (``(H, W)`` or ``(H, W, C)``, uint8/uint16)."""
    if pixels.dtype == np.uint16:
        scale = 65535.0
    elif pixels.dtype == np.uint8:
        scale = 255.0
    else:
        scale = 1.0
    h, w = int(pixels.shape[0]), int(pixels.shape[1])
    f = THUMB_SIDE / max(h, w)
    if f < 1.0:
        size = (max(1, round(w * f)), max(1, round(h * f)))
        thumb = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    else:
        thumb = pixels
    img = thumb.astype(np.float32) / np.float32(scale)
    if img.ndim == 3 and img.shape[2] >= 3:
        colour = img[:, :, :3]
        gray = cv2.cvtColor(np.ascontiguousarray(colour), cv2.COLOR_BGR2GRAY)
        means = colour.reshape(-1, 3).mean(axis=0)
    else:
        gray = img if img.ndim == 2 else img[:, :, 0]
        m = float(gray.mean())
        means = np.array([m, m, m], np.float32)
    gray = np.ascontiguousarray(gray, dtype=np.float32)
    var = float(gray.var())
    lap_var = float(cv2.Laplacian(gray, cv2.CV_32F, ksize=1).var())
    sharp = float(np.log(lap_var + _EPS))
    return np.array(
        [
            float(gray.mean()),
            float(np.sqrt(var)),
            float(np.mean((gray <= 1 / 255) | (gray >= 254 / 255))),
            sharp,
            sharp - float(np.log(var + _EPS)),
            float(means[0]),
            float(means[1]),
            float(means[2]),
        ],
        dtype=np.float64,
    )
