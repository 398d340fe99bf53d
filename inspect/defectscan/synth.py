"""Reproducible synthetic defect images and masks for tests, the demo and benchmarks.

Every sample comes from ``np.random.default_rng(seed)`` alone (no global RNG, no clock), so the
same seed gives identical arrays on every machine. The surface is a textured plate (brushed metal
or a fine tile grain under a low-frequency illumination gradient); defects are scratches, cracks,
spots and stains. Each defect's mask and its pixels are drawn from the same geometry, so the mask
marks exactly what is visible, and the classes differ in what is visible: scratches are long,
smooth, bright lines; cracks dark, jagged and branched; spots small blobs; stains large ones.
Defects never overlap: a placement that would touch an earlier defect is retried, and dropped
after a few attempts (so ``len(sample.defects)`` can be smaller than ``n_defects`` on a crowded
small image, never larger).

Class index ``i + 1`` in every mask is ``CLASSES[i]``; 0 is background, as in ``ModelSpec``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from defectscan.imaging import write_image

__all__ = [
    "CLASSES",
    "SynthDefect",
    "SynthSample",
    "make_sample",
    "sample_seed",
    "write_camera_folder",
    "write_dataset",
]

CLASSES: tuple[str, ...] = ("scratch", "crack", "spot", "stain")

# Attempts to place one defect without touching earlier ones before it is dropped.
_PLACEMENT_TRIES = 12
# Free pixels kept between two defects, so that their masks never merge into one blob.
_GAP_PX = 3
# Smallest mask area a defect may have (a defect clipped away by the border is retried).
_MIN_AREA = 6


@dataclass(frozen=True)
class SynthDefect:
    """One drawn defect: its class, bounding box (x, y, w, h) and mask area in pixels."""

    kind: str
    class_index: int
    bbox: tuple[int, int, int, int]
    area: int


@dataclass(frozen=True)
class SynthSample:
    """An image (BGR, or 2-D grayscale), its class-index mask and the defects drawn on it."""

    image: np.ndarray
    mask: np.ndarray
    defects: tuple[SynthDefect, ...]

    def binary_mask(self) -> np.ndarray:
        """Defect (1) vs background (0) as uint8."""
        return (self.mask > 0).astype(np.uint8)


def sample_seed(seed: int, index: int) -> int:
    """Seed of the ``index``-th sample of a dataset made with ``seed`` (stable, independent)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint32)[0])


def make_sample(
    seed: int,
    *,
    height: int = 256,
    width: int = 256,
    channels: int = 3,
    n_defects: int | None = None,
    kinds: Sequence[str] = CLASSES,
    contrast: float = 1.0,
) -> SynthSample:
    """Draw one textured surface with ``n_defects`` defects (None: 0..3 at random)."""
    if channels not in (1, 3):
        msg = f"channels must be 1 (grayscale) or 3 (BGR), got {channels}"
        raise ValueError(msg)
    if height < 16 or width < 16:
        msg = f"synthetic images need at least 16x16 pixels, got {width}x{height}"
        raise ValueError(msg)
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in CLASSES]
    if not kinds or unknown:
        msg = f"kinds must be a non-empty subset of {CLASSES}, got {kinds!r}"
        raise ValueError(msg)
    if contrast <= 0:
        msg = f"contrast must be > 0 (1.0 = easy to see), got {contrast}"
        raise ValueError(msg)
    if n_defects is not None and n_defects < 0:
        msg = f"n_defects must be >= 0 or None, got {n_defects}"
        raise ValueError(msg)

    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 4)) if n_defects is None else n_defects
    surface = _surface(rng, height, width)
    # Per-channel tint of the plate (BGR); stains get their own tint below.
    tint = rng.uniform(0.94, 1.06, size=3).astype(np.float32)
    delta = np.zeros((height, width), np.float32)
    stain_tint = np.ones((height, width, 3), np.float32) if channels == 3 else None
    mask = np.zeros((height, width), np.uint8)
    occupied: np.ndarray = np.zeros((height, width), np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * _GAP_PX + 1, 2 * _GAP_PX + 1))
    defects: list[SynthDefect] = []
    for _ in range(n):
        kind = kinds[int(rng.integers(0, len(kinds)))]
        for _try in range(_PLACEMENT_TRIES):
            shape, amp = _draw(kind, rng, height, width)
            area = int(np.count_nonzero(shape))
            if area < _MIN_AREA or cv2.countNonZero(cv2.bitwise_and(occupied, shape)):
                continue
            where = shape > 0
            class_index = CLASSES.index(kind) + 1
            mask[where] = class_index
            delta[where] = amp[where] * contrast
            if stain_tint is not None and kind == "stain":
                # Rust-like: a stain darkens blue more than red, in colour images only.
                stain_tint[where] = np.array([0.85, 0.95, 1.08], np.float32)
            occupied = cv2.bitwise_or(occupied, cv2.dilate(shape, kernel))
            x, y, w, h = cv2.boundingRect(shape)
            defects.append(SynthDefect(kind, class_index, (x, y, w, h), area))
            break

    gray = surface + delta
    if channels == 1:
        image = np.clip(gray, 0, 255).astype(np.uint8)
    else:
        colour = gray[:, :, None] * tint[None, None, :]
        if stain_tint is not None:
            colour *= stain_tint
        image = np.clip(colour, 0, 255).astype(np.uint8)
    return SynthSample(image=image, mask=mask, defects=tuple(defects))


def _surface(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A plate: brightness level, low-frequency illumination, and brushed or tile-like grain."""
    level = rng.uniform(105.0, 150.0)
    yy = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    xx = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
    gx, gy = rng.uniform(-12.0, 12.0, size=2)
    cx, cy = rng.uniform(-0.6, 0.6, size=2)
    hot = rng.uniform(0.0, 10.0)
    # A separable hot spot (outer product) is much cheaper than exp over the whole grid.
    spot = np.exp(-((yy - cy) ** 2) / 0.8) * np.exp(-((xx - cx) ** 2) / 0.8)
    illum = gx * xx + gy * yy + np.float32(hot) * spot
    noise = rng.standard_normal((h, w), dtype=np.float32)
    if rng.random() < 0.5:
        # Brushed metal: grain smeared along one direction.
        k = int(rng.integers(7, 16)) | 1
        ksize = (k, 1) if rng.random() < 0.5 else (1, k)
        grain = cv2.blur(noise, ksize) * np.float32(np.sqrt(k)) * np.float32(rng.uniform(3.0, 5.0))
    else:
        # Tile / cast surface: isotropic fine grain.
        grain = cv2.GaussianBlur(noise, (0, 0), 0.8) * np.float32(rng.uniform(4.0, 7.0))
    # The raw draw doubles as the finest grain: one normal field is most of the cost.
    fine = noise * np.float32(1.5)
    return (level + illum + grain + fine).astype(np.float32)


def _draw(kind: str, rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """One defect's mask (uint8 0/1) and its intensity change (float32, used where mask == 1)."""
    shape = np.zeros((h, w), np.uint8)
    sign = -1.0 if rng.random() < 0.7 else 1.0
    size = min(h, w)
    if kind == "scratch":
        length = rng.uniform(0.3, 0.8) * size
        angle = rng.uniform(0, np.pi)
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        x1, y1 = x0 + length * np.cos(angle), y0 + length * np.sin(angle)
        # Slight curve: a quadratic Bezier whose control point leaves the chord a little.
        bend = rng.uniform(-0.08, 0.08) * length
        mx, my = (x0 + x1) / 2 - bend * np.sin(angle), (y0 + y1) / 2 + bend * np.cos(angle)
        t = np.linspace(0.0, 1.0, 24)[:, None]
        pts = (1 - t) ** 2 * [x0, y0] + 2 * (1 - t) * t * [mx, my] + t**2 * [x1, y1]
        thickness = int(rng.integers(1, 4))
        cv2.polylines(shape, [np.round(pts).astype(np.int32)], False, 1, thickness, cv2.LINE_8)
        # Scratches are always brighter: the groove cuts through the finish to bare metal,
        # which catches the light. (``sign`` is still drawn, so every later draw is unchanged.)
        # A dark scratch 1-2 pixels wide is, pixel for pixel, an unbranched crack (below): a
        # model cannot tell them apart and the class-wise IoU measured label noise.
        amp = np.full((h, w), rng.uniform(55, 80), np.float32)
    elif kind == "crack":
        length = rng.uniform(0.3, 0.6) * size
        start = np.array([rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h])
        main = _jagged(rng, start, rng.uniform(0, 2 * np.pi), length)
        thickness = int(rng.integers(1, 3))
        cv2.polylines(shape, [main], False, 1, thickness, cv2.LINE_8)
        for _ in range(int(rng.integers(1, 3))):
            at = main[int(rng.integers(1, len(main)))].astype(np.float64)
            branch = _jagged(rng, at, rng.uniform(0, 2 * np.pi), length * rng.uniform(0.25, 0.5))
            cv2.polylines(shape, [branch], False, 1, 1, cv2.LINE_8)
        # Cracks are always darker: an opening in the surface.
        amp = np.full((h, w), -rng.uniform(60, 85), np.float32)
    elif kind == "spot":
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        # Spots stay small and stains large (below): the classes must be told apart by what is
        # visible, or a class-wise IoU measures label noise instead of the model.
        r = int(rng.integers(3, 9))
        if rng.random() < 0.5:
            cv2.circle(shape, (cx, cy), r, 1, -1, cv2.LINE_8)
        else:
            axes = (r, max(2, int(r * rng.uniform(0.5, 1.0))))
            cv2.ellipse(shape, (cx, cy), axes, rng.uniform(0, 180), 0, 360, 1, -1, cv2.LINE_8)
        amp = np.full((h, w), sign * rng.uniform(55, 80), np.float32)
    else:  # stain
        radius = max(14.0, rng.uniform(0.06, 0.14) * size)
        fx, fy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
        # Work in a window around the stain: full-image blurs would dominate the cost.
        half = int(np.ceil(radius * 3.0)) + 4
        x0, y0 = int(fx) - half, int(fy) - half
        blob: np.ndarray = np.zeros((2 * half + 1, 2 * half + 1), np.float32)
        for _ in range(int(rng.integers(3, 7))):
            ox, oy = rng.normal(0, radius * 0.5, size=2)
            axes = (
                max(2, int(radius * rng.uniform(0.5, 1.0))),
                max(2, int(radius * rng.uniform(0.4, 0.9))),
            )
            centre = (int(fx + ox) - x0, int(fy + oy) - y0)
            cv2.ellipse(blob, centre, axes, rng.uniform(0, 180), 0, 360, 1.0, -1, cv2.LINE_8)
        blob = cv2.GaussianBlur(blob, (0, 0), max(1.0, radius * 0.25))
        local = (blob >= 0.5).astype(np.uint8)
        # Soft inside, clear edge where the mask is set: strength grows from about half at the
        # boundary to full in the middle.
        soft = cv2.GaussianBlur(local.astype(np.float32), (0, 0), max(1.0, radius * 0.2))
        local_amp = sign * rng.uniform(45, 65) * np.clip(0.5 + soft, 0.0, 1.0)
        amp = np.zeros((h, w), np.float32)
        ys, xs = (
            slice(max(0, y0), min(h, y0 + blob.shape[0])),
            slice(max(0, x0), min(w, x0 + blob.shape[1])),
        )
        win = (slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0))
        if ys.start < ys.stop and xs.start < xs.stop:
            shape[ys, xs] = local[win]
            amp[ys, xs] = local_amp[win]
        return shape, amp
    return shape, amp


def _jagged(
    rng: np.random.Generator, start: np.ndarray, heading: float, length: float
) -> np.ndarray:
    """A random-walk polyline: short segments whose heading jitters (a crack's zig-zag)."""
    pts = [start]
    travelled = 0.0
    while travelled < length:
        step = rng.uniform(3.0, 8.0)
        heading += rng.normal(0.0, 0.45)
        pts.append(pts[-1] + step * np.array([np.cos(heading), np.sin(heading)]))
        travelled += step
    return np.round(np.stack(pts)).astype(np.int32)


def write_dataset(
    root: Path,
    n: int,
    *,
    seed: int = 0,
    layout: Literal["images-masks", "class-folders"] = "images-masks",
    height: int = 256,
    width: int = 256,
    channels: int = 3,
    binary: bool = False,
    ext: str | None = None,
    contrast: float = 1.0,
    kinds: Sequence[str] = CLASSES,
) -> list[Path]:
    """Write ``n`` samples to ``root`` and return the image paths in order.

    ``images-masks``: ``root/images/<stem><ext>`` + ``root/masks/<stem>.png`` (class indices,
    or 0/255 with ``binary``) + ``root/classes.txt`` (names in index order).
    ``class-folders``: ``root/<class>/Imgs/<stem><ext>`` + a 0/255
    ``<stem>.png`` mask, one defect class per image, every ``len(kinds)+1``-th image defect-free
    in ``root/free`` (the Magnetic Tile layout). ``ext`` defaults to ``.png`` for images-masks and
    ``.jpg`` for class-folders (there the image and its ``.png`` mask share a folder and a stem).
    """
    root = Path(root)
    kinds = tuple(kinds)
    paths: list[Path] = []
    if layout == "images-masks":
        ext = ext or ".png"
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            s = make_sample(
                sample_seed(seed, i),
                height=height,
                width=width,
                channels=channels,
                kinds=kinds,
                contrast=contrast,
            )
            stem = f"synth_{i:05d}"
            img_path = root / "images" / f"{stem}{ext}"
            write_image(img_path, s.image)
            mask = s.binary_mask() * np.uint8(255) if binary else s.mask
            write_image(root / "masks" / f"{stem}.png", mask)
            paths.append(img_path)
        # Class names in index order, so a loader maps mask values to names without guessing.
        (root / "classes.txt").write_text("defect\n" if binary else "\n".join(CLASSES) + "\n")
        return paths
    if layout != "class-folders":
        msg = f"layout must be 'images-masks' or 'class-folders', got {layout!r}"
        raise ValueError(msg)
    ext = ext or ".jpg"
    if ext.lower() == ".png":
        msg = (
            "class-folders keeps image and .png mask side by side with the same stem; "
            "pick another image extension such as .jpg or .bmp"
        )
        raise ValueError(msg)
    groups = (*kinds, "free")
    for i in range(n):
        group = groups[i % len(groups)]
        rng = np.random.default_rng(sample_seed(seed, i))
        n_def = 0 if group == "free" else int(rng.integers(1, 3))
        s = make_sample(
            sample_seed(seed, i),
            height=height,
            width=width,
            channels=channels,
            n_defects=n_def,
            kinds=kinds if group == "free" else (group,),
            contrast=contrast,
        )
        folder = root / group / "Imgs"
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{group}_{i:05d}"
        img_path = folder / f"{stem}{ext}"
        write_image(img_path, s.image)
        write_image(folder / f"{stem}.png", s.binary_mask() * np.uint8(255))
        paths.append(img_path)
    return paths


def write_camera_folder(
    directory: Path,
    n: int,
    *,
    seed: int = 0,
    height: int = 512,
    width: int = 512,
    channels: int = 3,
    ext: str = ".png",
    start: int = 0,
) -> list[Path]:
    """Drop ``n`` images into ``directory`` as a camera would, atomically; return their paths.

    Each file is written to ``<name>.tmp`` and renamed, so a folder watcher never sees half a
    file. ``start`` continues the numbering (and the seeds) of an earlier call.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for i in range(start, start + n):
        s = make_sample(sample_seed(seed, i), height=height, width=width, channels=channels)
        path = directory / f"cam_{i:06d}{ext}"
        write_image(path, s.image)
        paths.append(path)
    return paths
