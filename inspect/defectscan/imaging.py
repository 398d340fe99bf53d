"""Decode and validate image bytes, and turn images into model input.

Everything that comes off a camera folder or a queue passes through :func:`decode` before it
reaches the model. The contract is that bad input never crashes the caller: every way bytes can
be wrong (empty, truncated, not an image, too many pixels, a channel count or bit depth the model
cannot take) ends in a typed :class:`~defectscan.errors.ImageDecodeError` subclass whose message
says what is wrong and what to do.

Only PNG, JPEG, BMP and TIFF are accepted, because for these we read the header ourselves
(:mod:`defectscan.image_headers`) before OpenCV sees the bytes. That gives two guarantees
OpenCV alone does not:

* the pixel limit is enforced *before* any pixel is decoded (a 100 kB PNG can announce
  100000x100000 pixels: a decompression bomb);
* truncation is detected structurally and reported as such. Depending on the build and the
  codec, ``cv2.imdecode`` either returns a partly grey image for data cut short (logging only a
  warning) or returns ``None`` without saying why (OpenCV 5.0 does the latter for all four
  formats). So we check that the container is complete: JPEG reaches its EOI marker after the
  scan data, PNG reaches IEND with every chunk inside the data, BMP pixel rows fit in the
  file, TIFF strips or tiles lie inside the file.

:class:`ImageHeader`, :data:`ImageFormat` and :func:`probe` live in
:mod:`defectscan.image_headers` and are re-exported here.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from defectscan.errors import (
    ConfigError,
    ImageDecodeError,
    ImageTooLargeError,
    UnsupportedBitDepthError,
    UnsupportedChannelsError,
)
from defectscan.image_headers import ImageFormat, ImageHeader, probe, read_layout

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DecodedImage",
    "ImageFormat",
    "ImageHeader",
    "decode",
    "probe",
    "read_image",
    "sha256_bytes",
    "to_model_input",
    "write_image",
]

logger = logging.getLogger(__name__)

# Same values as defectscan.model.spec.ChannelOrder; importing it would pull in torch.
ChannelOrder = Literal["RGB", "BGR", "GRAY"]

#: Same default as ``Settings.max_pixels`` (``DEFECTSCAN_MAX_PIXELS``).
DEFAULT_MAX_PIXELS = 80_000_000


@dataclass(frozen=True)
class DecodedImage:
    """Pixels as OpenCV decodes them with ``IMREAD_UNCHANGED``.

    ``pixels`` is ``(H, W)`` for gray or ``(H, W, C)`` for BGR / BGRA, dtype uint8 or uint16.
    """

    pixels: np.ndarray
    format: ImageFormat
    bit_depth: int
    channels: int

    @property
    def height(self) -> int:
        """Rows of pixels."""
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        """Columns of pixels."""
        return int(self.pixels.shape[1])


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data`` (the identity of an image in the results store)."""
    return hashlib.sha256(data).hexdigest()


def decode(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Validate ``data`` and decode it; every bad input raises an ``ImageDecodeError`` subclass.

    The pixel limit is checked against the header before any pixel is decoded.
    """
    if max_pixels < 1:
        msg = f"max_pixels must be at least 1, got {max_pixels}; set DEFECTSCAN_MAX_PIXELS"
        raise ConfigError(msg)
    layout = read_layout(data)
    header = layout.header
    fmt = header.format

    if header.pixels > max_pixels:
        msg = (
            f"image header says {header.width}x{header.height} = {_approx(header.pixels)} "
            f"pixels, over the limit of {_approx(max_pixels)} (DEFECTSCAN_MAX_PIXELS); "
            "raise the limit if the camera really produces such images"
        )
        raise ImageTooLargeError(msg)

    # Structural completeness before decoding: a cut-off file must be reported as truncated,
    # never inspected as a partly grey image nor lumped in with corrupt data.
    layout.check_complete(data)
    layout.check_supported()

    pixels = _imdecode(data, fmt)
    return _validate_decoded(pixels, fmt)


def read_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Read a file and :func:`decode` it; ``OSError`` from reading the file propagates."""
    data = Path(path).read_bytes()
    return decode(data, max_pixels=max_pixels)


def write_image(path: str | Path, image: np.ndarray) -> Path:
    """Encode ``image`` by the path's extension and write it atomically (``.tmp``, rename).

    A folder watcher (or a camera-folder source) never sees half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix, image)
    if not ok:
        msg = f"OpenCV cannot encode {path.name}; use .png, .jpg, .bmp or .tif"
        raise ValueError(msg)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.tobytes())
    os.replace(tmp, path)
    return path


def to_model_input(
    image: DecodedImage,
    *,
    n_channels: int,
    channel_order: ChannelOrder,
    mean: Sequence[float],
    std: Sequence[float],
) -> np.ndarray:
    """Float32 ``[C, H, W]`` (C-contiguous) in the model's channels, scaled and normalised.

    Conversions: gray -> 3 channels by replication; BGR(A) -> gray by ``cv2.cvtColor``; BGRA ->
    3 channels drops alpha; 4-channel models need a 4-channel image. ``RGB`` order swaps B and
    R (alpha stays last). Then ``(x / max_value - mean) / std`` per channel, with ``max_value``
    255 or 65535 by bit depth.
    """
    _check_model_args(n_channels, channel_order, mean, std)
    pixels = image.pixels
    src_channels = 1 if pixels.ndim == 2 else int(pixels.shape[2])
    if src_channels != image.channels:
        msg = (
            f"image says it has {image.channels} channels but its pixel array has "
            f"{src_channels}; build DecodedImage through decode()"
        )
        raise UnsupportedChannelsError(msg)

    if pixels.dtype == np.uint8:
        max_value = 255.0
    elif pixels.dtype == np.uint16:
        max_value = 65535.0
    else:
        msg = f"image pixels are {pixels.dtype}; only uint8 and uint16 images can be scaled"
        raise UnsupportedBitDepthError(msg)
    planes = _source_planes(pixels, src_channels, n_channels, channel_order)
    height, width = pixels.shape[:2]
    out = np.empty((n_channels, height, width), dtype=np.float32)
    for c, plane in enumerate(planes):
        # (x / max - mean) / std == x * scale + offset: one multiply that also casts to float32
        # straight into the output plane, then one in-place add. Strided reads from the
        # interleaved HWC array are cheaper than materialising a transposed copy first.
        scale = np.float32(1.0 / (max_value * float(std[c])))
        offset = np.float32(-float(mean[c]) / float(std[c]))
        np.multiply(plane, scale, out=out[c], casting="unsafe")
        if offset != 0.0:
            out[c] += offset
    return out


# --------------------------------------------------------------------------------------------
# Model input helpers


def _check_model_args(
    n_channels: int, channel_order: str, mean: Sequence[float], std: Sequence[float]
) -> None:
    if channel_order not in ("RGB", "BGR", "GRAY"):
        msg = f"channel_order must be 'RGB', 'BGR' or 'GRAY', got {channel_order!r}"
        raise ConfigError(msg)
    if (channel_order == "GRAY") != (n_channels == 1):
        msg = (
            f"channel_order {channel_order} does not fit a {n_channels}-channel model: GRAY "
            "is for 1-channel models, RGB/BGR for 3- or 4-channel models"
        )
        raise ConfigError(msg)
    if len(mean) != n_channels or len(std) != n_channels:
        msg = (
            f"mean and std need one value per model channel ({n_channels}), got "
            f"{len(mean)} and {len(std)}; fix the model spec"
        )
        raise ConfigError(msg)
    if any(not float(s) > 0.0 for s in std):
        msg = f"std values must all be positive, got {list(std)}; fix the model spec"
        raise ConfigError(msg)


def _source_planes(
    pixels: np.ndarray, src_channels: int, n_channels: int, channel_order: str
) -> list[np.ndarray]:
    """One 2-D view (or converted array) per model channel, in model order."""
    if n_channels == 1:
        if src_channels == 1:
            return [pixels]
        if src_channels == 3:
            return [cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)]
        if src_channels == 4:
            return [cv2.cvtColor(pixels, cv2.COLOR_BGRA2GRAY)]
    elif n_channels == 3:
        if src_channels == 1:
            return [pixels, pixels, pixels]
        if src_channels in (3, 4):
            order: tuple[int, ...] = (2, 1, 0) if channel_order == "RGB" else (0, 1, 2)
            return [pixels[:, :, i] for i in order]
    elif n_channels == 4 and src_channels == 4:
        order = (2, 1, 0, 3) if channel_order == "RGB" else (0, 1, 2, 3)
        return [pixels[:, :, i] for i in order]
    msg = (
        f"cannot convert a {src_channels}-channel image to the model's {n_channels} "
        f"{channel_order} channels; 4-channel models need BGRA input, and only 1-, 3- and "
        "4-channel images are supported"
    )
    raise UnsupportedChannelsError(msg)


# --------------------------------------------------------------------------------------------
# Decoding


def _imdecode(data: bytes, fmt: ImageFormat) -> np.ndarray:
    buffer = np.frombuffer(data, dtype=np.uint8)
    try:
        pixels = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        # OpenCV raises for some inputs (e.g. its own size limit) instead of returning None.
        msg = f"OpenCV failed to decode the {fmt.upper()} pixel data: {str(exc).strip()[-200:]}"
        raise ImageDecodeError(msg) from exc
    if pixels is None:
        msg = (
            f"OpenCV could not decode the {fmt.upper()} pixel data although the header is "
            "valid: the data is corrupt or uses an encoding OpenCV does not support"
        )
        raise ImageDecodeError(msg)
    return np.asarray(pixels)


def _validate_decoded(pixels: np.ndarray, fmt: ImageFormat) -> DecodedImage:
    if pixels.dtype == np.uint8:
        bit_depth = 8
    elif pixels.dtype == np.uint16:
        bit_depth = 16
    else:
        msg = (
            f"{fmt.upper()} decodes to {pixels.dtype} pixels; only 8- and 16-bit unsigned "
            "images are supported: convert the image (e.g. scale float data to uint16)"
        )
        raise UnsupportedBitDepthError(msg)
    if pixels.ndim == 2:
        channels = 1
    elif pixels.ndim == 3 and pixels.shape[2] in (1, 3, 4):
        channels = int(pixels.shape[2])
        if channels == 1:
            pixels = pixels[:, :, 0]
    else:
        shape = "x".join(str(s) for s in pixels.shape)
        msg = (
            f"{fmt.upper()} decodes to a {shape} array; only gray, BGR and BGRA images "
            "(1, 3 or 4 channels) are supported"
        )
        raise UnsupportedChannelsError(msg)
    return DecodedImage(pixels=pixels, format=fmt, bit_depth=bit_depth, channels=channels)


def _approx(n: int) -> str:
    """A pixel count short enough to read: ``80000000`` -> ``8e7``, ``2500000000`` -> ``2.5e9``."""
    if n < 1_000_000:
        return str(n)
    mantissa, exponent = f"{n:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
