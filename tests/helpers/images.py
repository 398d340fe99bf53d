"""Synthetic test frames with exactly known defect geometry (for the oracle models)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["Frame", "encode", "gray_frame"]

BACKGROUND = 180  # 0.71: neither dark (< 0.35) nor bright (> 0.85) for the oracle models
DARK = 20
BRIGHT = 250


@dataclass(frozen=True)
class Frame:
    """A gray image and its true class map (1 = dark, 2 = bright)."""

    image: np.ndarray
    truth: np.ndarray


def gray_frame(
    height: int = 200,
    width: int = 300,
    *,
    rects: tuple[tuple[int, int, int, int], ...] = ((30, 40, 40, 20),),
    discs: tuple[tuple[int, int, int], ...] = ((220, 130, 12),),
    bright_rects: tuple[tuple[int, int, int, int], ...] = (),
    seed: int = 0,
) -> Frame:
    """Background with mild texture; dark rectangles (x, y, w, h) and discs (x, y, r)."""
    rng = np.random.default_rng(seed)
    # texture stays within +-10 grey levels: never crosses an oracle threshold
    image = (BACKGROUND + rng.integers(-10, 11, (height, width))).astype(np.uint8)
    truth = np.zeros((height, width), np.uint8)
    for x, y, w, h in rects:
        image[y : y + h, x : x + w] = DARK
        truth[y : y + h, x : x + w] = 1
    for x, y, r in discs:
        cv2.circle(image, (x, y), r, DARK, -1)
        cv2.circle(truth, (x, y), r, 1, -1)
    for x, y, w, h in bright_rects:
        image[y : y + h, x : x + w] = BRIGHT
        truth[y : y + h, x : x + w] = 2
    return Frame(image, truth)


def encode(image: np.ndarray, ext: str = ".png") -> bytes:
    """Encode with OpenCV, as a camera or a file on disk would hold it."""
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()
