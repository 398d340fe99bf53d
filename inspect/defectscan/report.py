"""What a person looks at: mask PNGs, overlays with contours and a legend, an HTML summary."""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from defectscan.imaging import DecodedImage, write_image
from defectscan.pipeline import InspectionResult
from defectscan.postprocess import Defect

__all__ = [
    "class_color",
    "html_report",
    "overlay",
    "write_mask",
    "write_png",
    "write_result_images",
]

# BGR, chosen to stay distinguishable on gray industrial surfaces and for common colour blindness.
_PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 255),  # red
    (0, 200, 255),  # amber
    (255, 128, 0),  # blue
    (255, 0, 255),  # magenta
    (0, 255, 0),  # green
    (255, 255, 0),  # cyan
    (128, 0, 255),  # pink
    (0, 128, 128),  # olive
)


def class_color(class_index: int) -> tuple[int, int, int]:
    """The BGR colour of class ``class_index`` (1-based) in overlays and legends."""
    return _PALETTE[(class_index - 1) % len(_PALETTE)]


def _display_bgr(image: DecodedImage | np.ndarray) -> np.ndarray:
    px = image.pixels if isinstance(image, DecodedImage) else image
    if px.dtype == np.uint16:
        px = (px >> 8).astype(np.uint8)
    if px.ndim == 2:
        return cv2.cvtColor(px, cv2.COLOR_GRAY2BGR)
    if px.shape[2] == 4:
        return cv2.cvtColor(px, cv2.COLOR_BGRA2BGR)
    return px.copy()


def overlay(
    image: DecodedImage | np.ndarray,
    class_map: np.ndarray,
    defects: Sequence[Defect],
    class_names: Sequence[str],
    *,
    alpha: float = 0.35,
) -> np.ndarray:
    """The image (8-bit BGR) with defect areas tinted, contours drawn and a legend, per class."""
    canvas = _display_bgr(image)
    h, w = canvas.shape[:2]
    if class_map.shape != (h, w):
        msg = f"class map {class_map.shape} does not match the image {(h, w)}"
        raise ValueError(msg)
    if class_map.any():
        lut = np.zeros((256, 3), np.uint8)
        for i in range(1, len(class_names) + 1):
            lut[i] = class_color(i)
        tint = lut[class_map]
        sel = class_map > 0
        canvas[sel] = (canvas[sel] * (1 - alpha) + tint[sel] * alpha).astype(np.uint8)
    thickness = max(1, round(min(h, w) / 300))
    for d in defects:
        pts = np.asarray(d.polygon, np.int32).reshape(-1, 1, 2)
        if len(pts):
            cv2.polylines(canvas, [pts], True, class_color(d.class_index), thickness, cv2.LINE_AA)
    _legend(canvas, defects, class_names)
    return canvas


def _legend(canvas: np.ndarray, defects: Sequence[Defect], class_names: Sequence[str]) -> None:
    counts = [0] * len(class_names)
    for d in defects:
        counts[d.class_index - 1] += 1
    h, w = canvas.shape[:2]
    scale = max(0.35, min(h, w) / 900)
    row = int(22 * scale / 0.5)
    lines = [f"{name}: {n}" for name, n in zip(class_names, counts, strict=True)]
    box_w = max(cv2.getTextSize(s, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] for s in lines)
    box_w += row + 12
    box_h = row * len(lines) + 8
    x0, y0 = 4, 4
    sub = canvas[y0 : y0 + box_h, x0 : x0 + box_w]
    sub[:] = (sub * 0.4).astype(np.uint8)  # darken behind the text so it stays readable
    for i, (text, idx) in enumerate(zip(lines, range(1, len(lines) + 1), strict=True)):
        y = y0 + 4 + i * row
        cv2.rectangle(canvas, (x0 + 4, y + 2), (x0 + row - 2, y + row - 4), class_color(idx), -1)
        cv2.putText(
            canvas,
            text,
            (x0 + row + 4, y + row - 6),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )


def write_png(path: str | Path, array: np.ndarray) -> Path:
    """Write a PNG atomically so a watcher never sees half a file."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        msg = f"{path.name}: masks and overlays are written as .png"
        raise ValueError(msg)
    return write_image(path, array)


def write_mask(path: str | Path, class_map: np.ndarray) -> Path:
    """The class map as a PNG: pixel value = class index, 0 = background, input size."""
    if class_map.dtype != np.uint8 or class_map.ndim != 2:
        msg = f"a class map is uint8 [H, W], got {class_map.dtype} {class_map.shape}"
        raise ValueError(msg)
    return write_png(path, class_map)


def write_result_images(
    result: InspectionResult, out: str | Path, stem: str, class_names: Sequence[str]
) -> tuple[Path, Path]:
    """``<stem>.mask.png`` and ``<stem>.overlay.png`` of an inspected (``ok``) result.

    The result must have been inspected with ``keep_images=True`` (the overlay needs pixels).
    """
    if result.class_map is None or result.image is None:
        msg = (
            f"{result.record.id}: no class map or image to draw (status {result.status}; "
            f"inspect with keep_images=True)"
        )
        raise ValueError(msg)
    out = Path(out)
    mask_path = write_mask(out / f"{stem}.mask.png", result.class_map)
    picture = overlay(result.image, result.class_map, result.defects, class_names)
    return mask_path, write_png(out / f"{stem}.overlay.png", picture)


def html_report(rows: Sequence[dict[str, object]], path: str | Path, *, title: str) -> Path:
    """A self-contained HTML page: one row per inspection with its overlay (relative links)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = []
    for r in rows:
        overlay_path = r.get("overlay")
        img = ""
        if isinstance(overlay_path, str):
            rel = os.path.relpath(overlay_path, path.parent)
            img = f'<img src="{html.escape(rel)}" width="256">'
        verdict = html.escape(str(r.get("verdict") or r.get("status")))
        defects = r.get("defects")
        summary = ", ".join(
            f"{d['class']} ({d['area']} px)"
            for d in (defects if isinstance(defects, list) else [])
            if isinstance(d, dict)
        )
        body.append(
            f"<tr><td>{html.escape(str(r.get('path')))}</td><td class='{verdict}'>{verdict}</td>"
            f"<td>{html.escape(summary)}</td><td>{img}</td></tr>"
        )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif}td{padding:4px;vertical-align:top}"
        ".fail{color:#b00;font-weight:bold}.pass{color:#070}.rejected{color:#a60}</style>"
        f"</head><body><h1>{html.escape(title)}</h1><table>"
        "<tr><th>image</th><th>verdict</th><th>defects</th><th>overlay</th></tr>"
        + "".join(body)
        + "</table></body></html>"
    )
    path.write_text(page, encoding="utf-8")
    return path
