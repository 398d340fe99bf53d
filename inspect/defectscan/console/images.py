"""Images for the console: by validated sha256 only, thumbnails and overlays cached on disk.

An image is found in the archive by its sha256, or at its inspection's ``file://`` URI when the
file there still has the same bytes (the demo's camera folder). Nothing else is ever read: a
name that is not 64 hex characters never reaches the file system. Thumbnails (with the model's
defects drawn) are made once per (sha256, model version) under ``<var>/console/thumbs``; the
full-size picture is only sent when a page asks for it (the detail and review pages).
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import cv2
import numpy as np

from defectscan.archive import ArchiveError, ImageArchive
from defectscan.errors import DefectscanError
from defectscan.imaging import decode
from defectscan.report import class_color

__all__ = [
    "SHA256_RE",
    "ImageStore",
    "class_map_from_defects",
    "decode_rle",
    "encode_rle",
    "valid_sha256",
]

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
THUMB_PX = 240


def valid_sha256(value: str) -> bool:
    """Whether ``value`` is a lower-case hex sha256 (the only image names the console takes)."""
    return bool(SHA256_RE.fullmatch(value))


def class_map_from_defects(defects: Sequence[Any], shape: tuple[int, int]) -> np.ndarray:
    """The model's mask rebuilt from the stored defects (polygons filled with class indices)."""
    mask = np.zeros(shape, np.uint8)
    for d in defects:
        poly = np.asarray(d.polygon, dtype=np.int32).reshape(-1, 2) if d.polygon else None
        if poly is not None and len(poly) >= 3:
            cv2.fillPoly(mask, [poly], int(d.class_index))
            cv2.polylines(mask, [poly], True, int(d.class_index), 1)
        else:
            x, y, w, h = d.bbox
            mask[y : y + h, x : x + w] = d.class_index
    return mask


def encode_rle(mask: np.ndarray) -> list[int]:
    """Run-length code of a flat uint8 mask: ``[value, count, value, count, ...]``."""
    flat = mask.reshape(-1)
    if flat.size == 0:
        return []
    change = np.flatnonzero(np.diff(flat)) + 1
    starts = np.concatenate([[0], change])
    counts = np.diff(np.concatenate([starts, [flat.size]]))
    out = np.empty(2 * len(starts), dtype=np.int64)
    out[0::2] = flat[starts]
    out[1::2] = counts
    return [int(v) for v in out]


def decode_rle(rle: Sequence[int], shape: tuple[int, int], n_classes: int) -> np.ndarray:
    """The mask a run-length code describes; ValueError when it does not fit ``shape``."""
    if len(rle) % 2:
        msg = "the mask code must hold value/count pairs"
        raise ValueError(msg)
    arr = np.asarray(rle, dtype=np.int64)
    values, counts = arr[0::2], arr[1::2]
    if (values < 0).any() or (values > n_classes).any():
        msg = f"mask values must be class indices 0..{n_classes}"
        raise ValueError(msg)
    if (counts <= 0).any() or int(counts.sum()) != shape[0] * shape[1]:
        msg = f"the mask does not cover the image's {shape[1]}x{shape[0]} pixels"
        raise ValueError(msg)
    return np.repeat(values.astype(np.uint8), counts).reshape(shape)


def _to_bgr8(px: np.ndarray) -> np.ndarray:
    if px.dtype == np.uint16:
        px = (px >> 8).astype(np.uint8)
    if px.ndim == 2:
        return cv2.cvtColor(px, cv2.COLOR_GRAY2BGR)
    if px.shape[2] == 4:
        return cv2.cvtColor(px, cv2.COLOR_BGRA2BGR)
    return px


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class ImageStore:
    """The images the console shows, and its cache of thumbnails and display copies."""

    def __init__(self, archive: ImageArchive, cache_dir: Path, *, max_pixels: int) -> None:
        self.archive = archive
        self.cache_dir = Path(cache_dir)
        self.max_pixels = max_pixels

    def original(self, sha256: str, uri: str | None = None) -> bytes | None:
        """The inspected bytes (archive first, then the source file if unchanged), or None."""
        if not valid_sha256(sha256):
            return None
        try:
            if self.archive.has(sha256):
                return self.archive.get(sha256)
        except ArchiveError:
            return None
        path = _uri_path(uri) if uri else None
        if path is None or not path.is_file():
            return None
        try:
            data = path.read_bytes()
        except OSError:
            return None
        return data if hashlib.sha256(data).hexdigest() == sha256 else None

    def _pixels(self, sha256: str, uri: str | None) -> np.ndarray | None:
        data = self.original(sha256, uri)
        if data is None:
            return None
        try:
            return _to_bgr8(decode(data, max_pixels=self.max_pixels).pixels)
        except DefectscanError:
            return None

    def display(self, sha256: str, uri: str | None) -> tuple[bytes, str] | None:
        """``(bytes, media type)`` a browser can show: PNG and JPEG as they are, else a PNG."""
        data = self.original(sha256, uri)
        if data is None:
            return None
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            return data, "image/png"
        if data.startswith(b"\xff\xd8\xff"):
            return data, "image/jpeg"
        cached = self.cache_dir / "display" / sha256[:2] / f"{sha256}.png"
        if cached.is_file():
            return cached.read_bytes(), "image/png"
        px = self._pixels(sha256, uri)
        if px is None:
            return None
        ok, buf = cv2.imencode(".png", px)
        if not ok:
            return None
        _atomic_write(cached, buf.tobytes())
        return buf.tobytes(), "image/png"

    def thumbnail(
        self, sha256: str, uri: str | None, key: str, defects: Sequence[Any]
    ) -> bytes | None:
        """A small JPEG with the defects tinted and outlined, made once per (sha256, key)."""
        if not valid_sha256(sha256) or not re.fullmatch(r"[0-9A-Za-z_-]{1,32}", key):
            return None
        cached = self.cache_dir / "thumbs" / sha256[:2] / f"{sha256}.{key}.jpg"
        if cached.is_file():
            return cached.read_bytes()
        px = self._pixels(sha256, uri)
        if px is None:
            return None
        canvas = px.copy()
        if defects:
            mask = class_map_from_defects(defects, canvas.shape[:2])
            for idx in np.unique(mask):
                if idx == 0:
                    continue
                sel = mask == idx
                canvas[sel] = (canvas[sel] * 0.55 + np.array(class_color(int(idx))) * 0.45).astype(
                    np.uint8
                )
        h, w = canvas.shape[:2]
        scale = THUMB_PX / max(h, w)
        if scale < 1:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            canvas = np.asarray(cv2.resize(canvas, size, interpolation=cv2.INTER_AREA))
        ok, buf = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 80])
        if not ok:
            return None
        _atomic_write(cached, buf.tobytes())
        return buf.tobytes()


def overlay_png(class_map: np.ndarray) -> bytes:
    """A transparent PNG: each class's pixels in its colour, the rest clear (laid over the
    image in the browser, whose opacity slider fades it)."""
    h, w = class_map.shape
    rgba = np.zeros((h, w, 4), np.uint8)
    for idx in np.unique(class_map):
        if idx == 0:
            continue
        b, g, r = class_color(int(idx))
        sel = class_map == idx
        rgba[sel] = (b, g, r, 255)
    ok, buf = cv2.imencode(".png", rgba)
    if not ok:
        msg = "cannot encode the overlay"
        raise ValueError(msg)
    return buf.tobytes()


def mask_png(class_map: np.ndarray) -> bytes:
    """The class map as a single-channel PNG (pixel value = class index)."""
    ok, buf = cv2.imencode(".png", class_map)
    if not ok:
        msg = "cannot encode the mask"
        raise ValueError(msg)
    return buf.tobytes()


def read_mask_png(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """A stored class-map PNG, or None when it is missing or of another size."""
    if not path.is_file():
        return None
    m = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if m is None or m.ndim != 2 or m.shape != shape:
        return None
    return m.astype(np.uint8)


def _uri_path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(url2pathname(unquote(parsed.path)))
    return None
