"""A synthetic camera line for drift tests: parts, a lamp that flickers per minute, shifts.

One part every :data:`PERIOD_S` seconds; every minute the lamp's gain moves a little (1%), so
consecutive images are correlated the way a line's are. A *shift* (lighting, focus, noise,
compression, a smudge, a new variant) is applied to the image before it is encoded, as the
camera would deliver it. Features come from the real encoder of the golden checkpoint through
``Inspector(drift_features=True)``: the same pass that inspects.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np

from defectscan import synth
from defectscan.drift.reference import ImageRows
from defectscan.drift.tracking import inspect_rows
from defectscan.model.checkpoint import load_checkpoint
from defectscan.pipeline import Inspector
from defectscan.sources.base import ImageRecord

__all__ = ["GOLDEN", "PERIOD_S", "SHIFTS", "inspector", "line_records", "line_rows"]

GOLDEN = Path(__file__).resolve().parent / "golden" / "unet_w4_softmax.safetensors"
#: Seconds between two parts: 200 parts per 10-minute window.
PERIOD_S = 3.0
SIZE = 64
T0 = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)

Shift = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _scale(f: float) -> Shift:
    return lambda img, rng: img * f


def _contrast(f: float) -> Shift:
    return lambda img, rng: (img - img.mean()) * f + img.mean()


def _blur(sigma: float) -> Shift:
    return lambda img, rng: cv2.GaussianBlur(img, (0, 0), sigma)


def _noise(sigma: float) -> Shift:
    return lambda img, rng: img + rng.normal(0, sigma * 255, img.shape).astype(np.float32)


def _smudge(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A hazy smear on the lens: the same place in every frame, blurred and brighter there."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    a = 0.8 * np.exp(-((yy - 22) ** 2 + (xx - 40) ** 2) / (2 * 12.0**2))[:, :, None]
    return img * (1 - a) + cv2.GaussianBlur(img, (0, 0), 3.0) * a + 40.0 * a


def _texture(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A new product variant: a brushed finish (fine diagonal grooves) on the same plate."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    return img + (18.0 * np.sin(2 * np.pi * (xx + yy) / 5.0))[:, :, None]


def _mixture(share: float, inner: Shift) -> Shift:
    def f(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return inner(img, rng) if rng.random() < share else img

    return f


#: The acceptance shifts of issue 18 (``jpeg20`` is applied at encoding).
SHIFTS: dict[str, Shift | None] = {
    "brightness_0.8": _scale(0.8),
    "brightness_1.2": _scale(1.2),
    "contrast_0.7": _contrast(0.7),
    "blur_1.5": _blur(1.5),
    "blur_3": _blur(3.0),
    "noise_0.03": _noise(0.03),
    "jpeg20": None,
    "smudge": _smudge,
    "new_texture": _texture,
    "mix20_blur3": _mixture(0.2, _blur(3.0)),
}


def line_records(
    seed: int, n: int, *, start_s: float = 0.0, shift: str | None = None, camera: str = "cam1"
) -> list[ImageRecord]:
    """``n`` parts of the line from ``start_s`` seconds on, optionally shifted."""
    rng = np.random.default_rng([seed, 7])
    fn = SHIFTS[shift] if shift else None
    out = []
    gains: dict[int, float] = {}
    for i in range(n):
        t = start_s + i * PERIOD_S
        minute = int(t // 60)
        if minute not in gains:
            gains[minute] = 1.0 + 0.01 * float(np.random.default_rng([seed, minute]).normal())
        img = synth.make_sample(synth.sample_seed(seed, i), height=SIZE, width=SIZE).image
        x = img.astype(np.float32) * gains[minute]
        if fn is not None:
            x = fn(x, rng)
        img = np.clip(x, 0, 255).astype(np.uint8)
        if shift == "jpeg20":
            ok, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 20])
        else:
            ok, enc = cv2.imencode(".png", img)
        assert ok
        out.append(
            ImageRecord(
                id=f"{seed}-{i}",
                uri=f"line://{seed}/{i}",
                data=enc.tobytes(),
                camera=camera,
                line="line1",
                captured_at=T0 + timedelta(seconds=t),
            )
        )
    return out


def inspector() -> Inspector:
    """The golden checkpoint on eager fp32 torch, drift features on."""
    ckpt = load_checkpoint(GOLDEN)
    return Inspector.from_checkpoint(
        ckpt, backend="torch", device="cpu", precision="fp32", batch_size=64, drift_features=True
    )


def line_rows(
    insp: Inspector, seed: int, n: int, *, start_s: float = 0.0, shift: str | None = None
) -> ImageRows:
    """Drift inputs of ``n`` parts (see :func:`line_records`)."""
    return inspect_rows(insp, line_records(seed, n, start_s=start_s, shift=shift))
