"""Image decoding, validation and model-input conversion (``defectscan.imaging``).

Inputs are made in the test with ``cv2.imencode`` or, for what OpenCV cannot write (2- and
5-sample TIFF, signed TIFF, BigTIFF, tiled TIFF, hostile headers), with small hand-written
encoders below. Nothing is mocked: every decode goes through the real OpenCV.
"""

from __future__ import annotations

import contextlib
import hashlib
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from defectscan.errors import (
    ConfigError,
    EmptyImageError,
    ImageDecodeError,
    ImageTooLargeError,
    NotAnImageError,
    TruncatedImageError,
    UnsupportedBitDepthError,
    UnsupportedChannelsError,
)
from defectscan.imaging import (
    DecodedImage,
    ImageHeader,
    decode,
    probe,
    read_image,
    sha256_bytes,
    to_model_input,
)

RNG = np.random.default_rng(20240601)
H, W = 13, 17  # odd sizes catch row-padding and width/height mix-ups


def _image(dtype: type[np.integer[Any]], channels: int, h: int = H, w: int = W) -> np.ndarray:
    shape: tuple[int, ...] = (h, w) if channels == 1 else (h, w, channels)
    return RNG.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True, dtype=dtype)


def _encode(ext: str, pixels: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, pixels)
    assert ok
    return buf.tobytes()


# --- hand-written encoders ------------------------------------------------------------------


def _png_chunk(ctype: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(ctype + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", crc)


def _png(
    width: int, height: int, depth: int, colour: int, idat: bytes, extra: bytes = b""
) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + extra
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _tiff(
    pixels: np.ndarray,
    *,
    byte_order: str = "<",
    big: bool = False,
    sample_format: int = 1,
    photometric: int | None = None,
    tile: tuple[int, int] | None = None,
    ifd_first: bool = False,
    overrides: dict[int, list[int]] | None = None,
) -> bytes:
    """An uncompressed TIFF (classic or BigTIFF, either byte order, strips or tiles)."""
    height, width = pixels.shape[:2]
    spp = 1 if pixels.ndim == 2 else pixels.shape[2]
    swapped = pixels.astype(pixels.dtype.newbyteorder(byte_order))
    if tile is None:
        blocks = [swapped.tobytes()]
        layout = {273: [0], 278: [height], 279: [len(blocks[0])]}
    else:
        tw, th = tile
        blocks = []
        for y in range(0, height, th):
            for x in range(0, width, tw):
                block = np.zeros((th, tw, *pixels.shape[2:]), swapped.dtype)
                part = swapped[y : y + th, x : x + tw]
                block[: part.shape[0], : part.shape[1]] = part
                blocks.append(block.tobytes())
        layout = {322: [tw], 323: [th], 324: [0] * len(blocks), 325: [len(b) for b in blocks]}
    tags = {
        256: [width],
        257: [height],
        258: [pixels.dtype.itemsize * 8] * spp,
        259: [1],
        262: [photometric if photometric is not None else (1 if spp < 3 else 2)],
        277: [spp],
        339: [sample_format] * spp,
        **layout,
        **(overrides or {}),
    }
    off_code, count_code, entry_size, inline = ("Q", "Q", 20, 8) if big else ("I", "H", 12, 4)
    head_size = 16 if big else 8
    ifd_size = struct.calcsize(count_code) + len(tags) * entry_size + struct.calcsize(off_code)
    data = b"".join(blocks)

    def ifd_bytes(ifd_pos: int, data_pos: int) -> bytes:
        offsets, pos = [], data_pos
        for block in blocks:
            offsets.append(pos)
            pos += len(block)
        values = dict(tags)
        for key in (273, 324):
            if key in values and key not in (overrides or {}):
                values[key] = offsets
        extra, entries = b"", b""
        for tag in sorted(values):
            code, typ = ("H", 3) if tag in (258, 259, 262, 277, 339) else ("I", 4)
            raw = struct.pack(byte_order + code * len(values[tag]), *values[tag])
            if len(raw) <= inline:
                value = raw.ljust(inline, b"\0")
            else:
                value = struct.pack(byte_order + off_code, ifd_pos + ifd_size + len(extra))
                extra += raw
            entries += struct.pack(byte_order + "HH" + off_code, tag, typ, len(values[tag]))
            entries += value
        count = struct.pack(byte_order + count_code, len(values))
        return count + entries + struct.pack(byte_order + off_code, 0) + extra

    def header(ifd_pos: int) -> bytes:
        magic = b"II" if byte_order == "<" else b"MM"
        if big:
            return magic + struct.pack(byte_order + "HHHQ", 43, 8, 0, ifd_pos)
        return magic + struct.pack(byte_order + "HI", 42, ifd_pos)

    if ifd_first:
        meta_len = len(ifd_bytes(head_size, 0))
        return header(head_size) + ifd_bytes(head_size, head_size + meta_len) + data
    ifd_pos = head_size + len(data)
    return header(ifd_pos) + data + ifd_bytes(ifd_pos, head_size)


def _jpeg_with_size(width: int, height: int) -> bytes:
    """A real JPEG whose frame header (SOF0) is rewritten to claim another size."""
    data = bytearray(_encode(".jpg", _image(np.uint8, 3, 8, 8)))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def _bgr(pixels: np.ndarray) -> np.ndarray:
    """What OpenCV returns for ``pixels`` written by a non-OpenCV encoder in RGB(A) order."""
    if pixels.ndim == 2:
        return pixels
    order = [2, 1, 0, 3][: pixels.shape[2]]
    return pixels[:, :, order]


# --- round trips ----------------------------------------------------------------------------

ROUND_TRIPS = [
    *((".png", dt, c) for dt in (np.uint8, np.uint16) for c in (1, 3, 4)),
    *((".jpg", np.uint8, c) for c in (1, 3)),
    *((".bmp", np.uint8, c) for c in (1, 3, 4)),
    *((".tiff", dt, c) for dt in (np.uint8, np.uint16) for c in (1, 3, 4)),
]
FORMAT_OF = {".png": "png", ".jpg": "jpeg", ".bmp": "bmp", ".tiff": "tiff"}


@pytest.mark.parametrize(("ext", "dtype", "channels"), ROUND_TRIPS)
def test_round_trip_every_supported_format_depth_and_channel_count(
    ext: str, dtype: type[np.integer[Any]], channels: int
) -> None:
    pixels = _image(dtype, channels)
    if ext == ".jpg":
        # Smooth gradients so that lossy compression stays close to the original.
        ramp = (np.add.outer(np.arange(H) * 4, np.arange(W) * 3) + 40).astype(np.uint8)
        pixels = ramp if channels == 1 else np.dstack([ramp, ramp[::-1], ramp[:, ::-1]])
    data = _encode(ext, pixels)

    header = probe(data)
    image = decode(data)

    assert (header.format, header.width, header.height) == (FORMAT_OF[ext], W, H)
    assert image.format == FORMAT_OF[ext]
    assert (image.height, image.width, image.channels) == (H, W, channels)
    assert image.bit_depth == np.iinfo(dtype).bits
    assert image.pixels.dtype == dtype
    assert image.pixels.shape == pixels.shape
    if ext == ".jpg":
        diff = np.abs(image.pixels.astype(np.int16) - pixels.astype(np.int16))
        assert diff.mean() < 2
    else:
        np.testing.assert_array_equal(image.pixels, pixels)


@pytest.mark.parametrize(
    "variant",
    [
        {"byte_order": ">"},
        {"big": True},
        {"big": True, "byte_order": ">"},
        {"tile": (16, 16)},
        {"tile": (16, 16), "big": True, "byte_order": ">", "ifd_first": True},
        {"ifd_first": True},
    ],
    ids=["MM", "BigTIFF-II", "BigTIFF-MM", "tiled", "BigTIFF-MM-tiled-ifd-first", "ifd-first"],
)
def test_tiff_byte_orders_bigtiff_and_tiles_decode_exactly(variant: dict[str, Any]) -> None:
    rgb = _image(np.uint16, 3)

    data = _tiff(rgb, **variant)

    assert probe(data) == ImageHeader("tiff", W, H, 3, 16)
    np.testing.assert_array_equal(decode(data).pixels, _bgr(rgb))


def test_png_gray_alpha_decodes_as_bgra_with_gray_replicated() -> None:
    gray_alpha = _image(np.uint8, 2, 3, 4)
    rows = b"".join(b"\x00" + row.tobytes() for row in gray_alpha)
    data = _png(4, 3, 8, 4, zlib.compress(rows))

    image = decode(data)

    assert probe(data).channels == 2  # the file stores gray + alpha
    assert image.channels == 4
    for c in range(3):
        np.testing.assert_array_equal(image.pixels[:, :, c], gray_alpha[:, :, 0])
    np.testing.assert_array_equal(image.pixels[:, :, 3], gray_alpha[:, :, 1])


def test_palette_png_decodes_to_bgr_colours() -> None:
    palette = _png_chunk(b"PLTE", bytes([255, 0, 0, 0, 0, 255]))  # index 0 red, 1 blue
    data = _png(2, 1, 8, 3, zlib.compress(b"\x00\x00\x01"), extra=palette)

    image = decode(data)

    assert probe(data).channels is None
    assert image.channels == 3
    assert image.pixels.tolist() == [[[0, 0, 255], [255, 0, 0]]]


def test_read_image_reads_a_file(tmp_path: Path) -> None:
    pixels = _image(np.uint16, 1)
    path = tmp_path / "frame.png"
    path.write_bytes(_encode(".png", pixels))

    image = read_image(path, max_pixels=H * W)

    np.testing.assert_array_equal(image.pixels, pixels)


def test_sha256_bytes_is_the_standard_digest() -> None:
    assert sha256_bytes(b"abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    data = _encode(".png", _image(np.uint8, 3))
    assert sha256_bytes(data) == hashlib.sha256(data).hexdigest()


# --- bad input: every class gets its typed error ----------------------------------------------


def _raises(data: bytes, error: type[ImageDecodeError], kind: str, **kwargs: Any) -> str:
    with pytest.raises(error) as info:
        decode(data, **kwargs)
    assert info.value.kind == kind
    return str(info.value)


def test_empty_input_is_an_empty_image_error() -> None:
    message = _raises(b"", EmptyImageError, "empty")
    assert "no bytes" in message
    with pytest.raises(EmptyImageError):
        probe(b"")


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b"hello, this is a text file\n", "first bytes"),
        (bytes(range(256)), "first bytes"),
        (b"GIF89a\x01\x00\x01\x00", "GIF"),
        (b"%PDF-1.7\n", "PDF"),
        (b"\x00", "first bytes"),
    ],
    ids=["text", "binary", "gif", "pdf", "one-byte"],
)
def test_non_image_bytes_are_not_an_image_error(data: bytes, named: str) -> None:
    message = _raises(data, NotAnImageError, "not_an_image")
    assert named in message
    assert "PNG, JPEG, BMP or TIFF" in message


def _truncations() -> list[tuple[str, bytes]]:
    cases: list[tuple[str, bytes]] = []
    for ext in (".png", ".jpg", ".bmp", ".tiff"):
        data = _encode(ext, _image(np.uint8, 3, 32, 32))
        for label, end in (("signature", 3), ("header", 20), ("half", len(data) // 2)):
            cases.append((f"{ext[1:]}-{label}", data[:end]))
        cases.append((f"{ext[1:]}-last-byte", data[:-1]))
    strips_last = _tiff(_image(np.uint8, 3, 32, 32), ifd_first=True)
    cases.append(("tiff-strip-data", strips_last[: len(strips_last) - 100]))
    big = _tiff(_image(np.uint8, 1), big=True)
    cases.append(("bigtiff-ifd", big[:-10]))
    return cases


_TRUNCATED = _truncations()


@pytest.mark.parametrize("data", [c[1] for c in _TRUNCATED], ids=[c[0] for c in _TRUNCATED])
def test_truncated_files_are_truncated_image_errors(data: bytes) -> None:
    message = _raises(data, TruncatedImageError, "truncated")
    assert "truncated" in message or "stops" in message


def test_jpeg_missing_only_its_end_marker_is_truncated() -> None:
    # A JPEG cut anywhere in its scan data still has a complete header; only the missing EOI
    # marker tells, so the check must not rely on OpenCV's reaction to the missing bytes.
    data = _encode(".jpg", _image(np.uint8, 3, 32, 32))
    assert data.endswith(b"\xff\xd9")
    _raises(data[:-2], TruncatedImageError, "truncated")
    # Bytes after the end marker (some cameras append metadata) are fine.
    assert decode(data + b"camera trailer").channels == 3


def test_bmp_pixel_rows_must_fit_in_the_file() -> None:
    data = _encode(".bmp", _image(np.uint8, 3, 32, 32))
    message = _raises(data[:-3], TruncatedImageError, "truncated")
    assert "pixel data" in message


@pytest.mark.parametrize(
    ("pixels", "kwargs", "count"),
    [
        (_image(np.uint8, 2), {}, 2),
        (_image(np.uint16, 2), {"big": True}, 2),
        (_image(np.uint8, 5), {"photometric": 2}, 5),
    ],
    ids=["gray-alpha-8", "gray-alpha-16-bigtiff", "five-samples"],
)
def test_tiff_with_unsupported_samples_per_pixel_is_a_channels_error(
    pixels: np.ndarray, kwargs: dict[str, Any], count: int
) -> None:
    # OpenCV silently drops the second sample of a 2-sample TIFF; we refuse from the header.
    message = _raises(_tiff(pixels, **kwargs), UnsupportedChannelsError, "channels")
    assert f"{count} samples per pixel" in message


@pytest.mark.parametrize(
    "data",
    [
        _encode(".tiff", RNG.random((H, W), dtype=np.float32)),
        _tiff(RNG.random((H, W, 3), dtype=np.float32), sample_format=3),
        _tiff(np.full((H, W), -7, np.int16), sample_format=2),
        _tiff(np.full((H, W), 70_000, np.uint32)),
        _tiff(np.full((H, W), 1.5, np.float64), sample_format=3, byte_order=">"),
    ],
    ids=["float32-opencv", "float32-rgb", "int16", "uint32", "float64-MM"],
)
def test_unsupported_bit_depths_are_bit_depth_errors(data: bytes) -> None:
    message = _raises(data, UnsupportedBitDepthError, "bit_depth")
    assert "8- and 16-bit unsigned" in message


def test_twelve_bit_jpeg_is_refused_from_its_header() -> None:
    data = bytearray(_encode(".jpg", _image(np.uint8, 1)))
    sof = data.index(b"\xff\xc0")
    data[sof + 4] = 12  # sample precision

    message = _raises(bytes(data), UnsupportedBitDepthError, "bit_depth")

    assert "12-bit" in message


@pytest.mark.parametrize(
    ("data", "size"),
    [
        # 100000 x 100000 pixels announced by a file of about 100 bytes.
        (_png(100_000, 100_000, 8, 0, zlib.compress(b"\x00" * 64)), "100000x100000"),
        (_jpeg_with_size(65_000, 65_000), "65000x65000"),
        (_tiff(_image(np.uint8, 1), overrides={256: [50_000], 257: [50_000]}), "50000x50000"),
    ],
    ids=["png", "jpeg", "tiff"],
)
def test_decompression_bombs_are_refused_from_the_header(data: bytes, size: str) -> None:
    assert len(data) < 1_000
    start = time.perf_counter()
    message = _raises(data, ImageTooLargeError, "too_large")
    elapsed = time.perf_counter() - start

    assert elapsed < 0.5  # refused from the header: decoding 1e10 pixels would take minutes
    assert size in message
    assert "over the limit of 8e7 (DEFECTSCAN_MAX_PIXELS)" in message


def test_bmp_header_size_is_checked_against_the_limit() -> None:
    data = bytearray(_encode(".bmp", _image(np.uint8, 3)))
    struct.pack_into("<ii", data, 18, 40_000, -30_000)  # top-down rows: negative height

    message = _raises(bytes(data), ImageTooLargeError, "too_large")

    assert "40000x30000 = 1.2e9 pixels" in message


def test_tiff_duplicate_size_tag_cannot_hide_the_real_size() -> None:
    # Tag 65000 sorts last; renamed to ImageWidth it becomes a second, small width after the
    # first, large one. libtiff uses the first, so the limit must apply to the first.
    data = _tiff(_image(np.uint8, 1), overrides={256: [50_000], 65000: [W]})
    data = data.replace(struct.pack("<HHI", 65000, 4, 1), struct.pack("<HHI", 256, 4, 1))

    message = _raises(data, ImageTooLargeError, "too_large", max_pixels=10 * H * W)

    assert f"50000x{H}" in message


def test_jpeg_with_two_frame_headers_is_refused() -> None:
    data = _encode(".jpg", _image(np.uint8, 3))
    sof = data.index(b"\xff\xc0")
    (length,) = struct.unpack_from(">H", data, sof + 2)
    twice = data[: sof + 2 + length] + data[sof : sof + 2 + length] + data[sof + 2 + length :]

    message = _raises(twice, ImageDecodeError, "decode")

    assert "second frame header" in message


def test_pixel_limit_is_configurable_and_inclusive() -> None:
    data = _encode(".png", _image(np.uint8, 3))

    assert decode(data, max_pixels=H * W).width == W
    message = _raises(data, ImageTooLargeError, "too_large", max_pixels=H * W - 1)
    assert f"{W}x{H} = {H * W} pixels" in message


@pytest.mark.parametrize(
    "data",
    [
        _png(4, 4, 8, 5, zlib.compress(b"\x00" * 20)),  # colour type 5 does not exist
        _png(0, 4, 8, 0, zlib.compress(b"\x00" * 20)),  # zero width
        _png(4, 4, 8, 0, b"not zlib data at all"),  # valid container, garbage pixel data
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", b"\x00" * 13)[:-4] + b"\x00" * 8,
        _tiff(_image(np.uint8, 1), overrides={278: [7]}),  # one strip where two are needed
    ],
    ids=["png-colour-type", "png-zero-width", "png-bad-idat", "png-bad-ihdr", "tiff-strips"],
)
def test_corrupt_files_are_decode_errors(data: bytes) -> None:
    _raises(data, ImageDecodeError, "decode")


def test_probe_reads_only_the_header() -> None:
    bomb = _png(100_000, 100_000, 16, 6, zlib.compress(b"\x00"))
    assert probe(bomb) == ImageHeader("png", 100_000, 100_000, 4, 16)
    assert probe(_jpeg_with_size(640, 480)) == ImageHeader("jpeg", 640, 480, 3, 8)
    assert probe(_tiff(_image(np.uint8, 1), byte_order=">")) == ImageHeader("tiff", W, H, 1, 8)


# --- hostile bytes: only typed errors, never a crash ------------------------------------------

_VALID = [
    _encode(".png", _image(np.uint16, 4, 6, 5)),
    _encode(".jpg", _image(np.uint8, 3, 6, 5)),
    _encode(".bmp", _image(np.uint8, 1, 6, 5)),
    _encode(".bmp", _image(np.uint8, 4, 6, 5)),
    _encode(".tiff", _image(np.uint8, 3, 6, 5)),
    _tiff(_image(np.uint16, 1, 6, 5), big=True, byte_order=">", tile=(16, 16), ifd_first=True),
]
_FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _decode_or_typed_error(data: bytes) -> None:
    # A small limit keeps a mutated header from making OpenCV allocate gigabytes.
    try:
        image = decode(data, max_pixels=1 << 16)
    except ImageDecodeError:
        return
    assert isinstance(image, DecodedImage)
    assert image.pixels.dtype in (np.uint8, np.uint16)
    assert image.channels in (1, 3, 4)


@_FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_typed_errors(data: bytes) -> None:
    _decode_or_typed_error(data)


@_FUZZ
@given(
    prefix=st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00+"]),
    rest=st.binary(max_size=200),
)
def test_random_bytes_behind_a_real_signature_only_raise_typed_errors(
    prefix: bytes, rest: bytes
) -> None:
    _decode_or_typed_error(prefix + rest)
    with contextlib.suppress(ImageDecodeError):
        probe(prefix + rest)


@_FUZZ
@given(
    index=st.integers(0, len(_VALID) - 1),
    cut=st.floats(0.0, 1.0),
    edits=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=6),
)
def test_truncated_and_mutated_images_only_raise_typed_errors(
    index: int, cut: float, edits: list[tuple[float, int]]
) -> None:
    data = bytearray(_VALID[index])
    for where, value in edits:
        data[min(int(where * len(data)), len(data) - 1)] = value
    _decode_or_typed_error(bytes(data[: max(1, int(cut * len(data)))]))
    _decode_or_typed_error(bytes(data))


# --- model input ------------------------------------------------------------------------------

MEAN3, STD3 = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _decoded(pixels: np.ndarray) -> DecodedImage:
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    return DecodedImage(pixels, "png", np.iinfo(pixels.dtype).bits, channels)


def _expected(planes: list[np.ndarray], max_value: float, mean: Any, std: Any) -> np.ndarray:
    stack = np.stack([p.astype(np.float64) for p in planes])
    m = np.asarray(mean, np.float64)[:, None, None]
    s = np.asarray(std, np.float64)[:, None, None]
    return (stack / max_value - m) / s


def _check_output(out: np.ndarray, n_channels: int) -> None:
    assert out.dtype == np.float32
    assert out.shape == (n_channels, H, W)
    assert out.flags.c_contiguous


def test_bgr_image_to_rgb_model_swaps_blue_and_red_and_normalises() -> None:
    bgr = _image(np.uint8, 3)

    out = to_model_input(_decoded(bgr), n_channels=3, channel_order="RGB", mean=MEAN3, std=STD3)

    _check_output(out, 3)
    b, g, r = (bgr[:, :, i] for i in range(3))
    np.testing.assert_allclose(out, _expected([r, g, b], 255, MEAN3, STD3), rtol=0, atol=1e-5)
    # One pixel by hand: pure red in BGR is (0, 0, 255) and lands in channel 0 of an RGB model.
    red = np.zeros((1, 1, 3), np.uint8)
    red[0, 0, 2] = 255
    one = to_model_input(_decoded(red), n_channels=3, channel_order="RGB", mean=MEAN3, std=STD3)
    np.testing.assert_allclose(
        one[:, 0, 0], [(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225], rtol=1e-6
    )


def test_bgr_image_to_bgr_model_keeps_order() -> None:
    bgr = _image(np.uint8, 3)

    out = to_model_input(_decoded(bgr), n_channels=3, channel_order="BGR", mean=MEAN3, std=STD3)

    _check_output(out, 3)
    planes = [bgr[:, :, i] for i in range(3)]
    np.testing.assert_allclose(out, _expected(planes, 255, MEAN3, STD3), rtol=0, atol=1e-5)


def test_sixteen_bit_images_scale_by_65535() -> None:
    gray = np.zeros((H, W), np.uint16)
    gray[0, 0], gray[0, 1] = 65535, 32768

    out = to_model_input(_decoded(gray), n_channels=1, channel_order="GRAY", mean=[0], std=[1])

    _check_output(out, 1)
    assert out[0, 0, 0] == pytest.approx(1.0)
    assert out[0, 0, 1] == pytest.approx(32768 / 65535)
    assert out[0, 1, 1] == 0.0


def test_gray_image_to_three_channel_model_replicates_with_per_channel_normalisation() -> None:
    gray = _image(np.uint16, 1)

    out = to_model_input(_decoded(gray), n_channels=3, channel_order="RGB", mean=MEAN3, std=STD3)

    _check_output(out, 3)
    np.testing.assert_allclose(out, _expected([gray] * 3, 65535, MEAN3, STD3), atol=1e-5)


@pytest.mark.parametrize("channels", [3, 4])
def test_colour_image_to_gray_model_uses_luma(channels: int) -> None:
    colour = _image(np.uint8, channels)
    colour[0, 0, :3] = (255, 0, 0)  # pure blue: luma weight 0.114

    out = to_model_input(
        _decoded(colour), n_channels=1, channel_order="GRAY", mean=[0.5], std=[0.25]
    )

    _check_output(out, 1)
    code = cv2.COLOR_BGR2GRAY if channels == 3 else cv2.COLOR_BGRA2GRAY
    luma = cv2.cvtColor(colour, code)
    np.testing.assert_allclose(out, _expected([luma], 255, [0.5], [0.25]), atol=1e-5)
    assert out[0, 0, 0] == pytest.approx((29 / 255 - 0.5) / 0.25, abs=1e-5)


def test_bgra_image_to_three_channel_model_drops_alpha() -> None:
    bgra = _image(np.uint8, 4)

    out = to_model_input(_decoded(bgra), n_channels=3, channel_order="RGB", mean=MEAN3, std=STD3)

    _check_output(out, 3)
    planes = [bgra[:, :, 2], bgra[:, :, 1], bgra[:, :, 0]]
    np.testing.assert_allclose(out, _expected(planes, 255, MEAN3, STD3), atol=1e-5)


@pytest.mark.parametrize(("order", "index"), [("RGB", (2, 1, 0, 3)), ("BGR", (0, 1, 2, 3))])
def test_bgra_image_to_four_channel_model_keeps_alpha_last(
    order: str, index: tuple[int, ...]
) -> None:
    bgra = _image(np.uint16, 4)
    mean, std = (0.1, 0.2, 0.3, 0.4), (0.5, 0.6, 0.7, 0.8)

    out = to_model_input(_decoded(bgra), n_channels=4, channel_order=order, mean=mean, std=std)  # type: ignore[arg-type]

    _check_output(out, 4)
    planes = [bgra[:, :, i] for i in index]
    np.testing.assert_allclose(out, _expected(planes, 65535, mean, std), atol=1e-5)


@pytest.mark.parametrize(("channels", "n_channels"), [(1, 4), (3, 4)])
def test_unconvertible_channel_combinations_name_both_counts(
    channels: int, n_channels: int
) -> None:
    image = _decoded(_image(np.uint8, channels))
    with pytest.raises(UnsupportedChannelsError) as info:
        to_model_input(image, n_channels=n_channels, channel_order="RGB", mean=[0] * 4, std=[1] * 4)
    assert info.value.kind == "channels"
    assert f"{channels}-channel image" in str(info.value)
    assert f"model's {n_channels}" in str(info.value)


@pytest.mark.parametrize(
    ("n_channels", "order", "mean", "std"),
    [
        (3, "GRAY", [0, 0, 0], [1, 1, 1]),
        (1, "RGB", [0], [1]),
        (3, "RGB", [0, 0], [1, 1, 1]),
        (3, "RGB", [0, 0, 0], [1, 0, 1]),
    ],
    ids=["gray-3", "rgb-1", "short-mean", "zero-std"],
)
def test_inconsistent_model_preprocessing_is_a_config_error(
    n_channels: int, order: str, mean: list[float], std: list[float]
) -> None:
    with pytest.raises(ConfigError):
        to_model_input(
            _decoded(_image(np.uint8, 3)),
            n_channels=n_channels,
            channel_order=order,  # type: ignore[arg-type]
            mean=mean,
            std=std,
        )
