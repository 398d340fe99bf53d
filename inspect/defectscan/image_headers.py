"""Read an image file's header without decoding a pixel: format, size, channels, bit depth.

Only PNG, JPEG, BMP and TIFF are recognised. For each, :func:`read_layout` parses the header
and returns a layout that can check, still without decoding, that the container is complete
(JPEG reaches its EOI marker after the scan data, PNG reaches IEND with every chunk inside the
data, BMP pixel rows fit in the file, TIFF strips or tiles lie inside the file) and that the
declared channels and bit depth are ones the service takes. :func:`defectscan.imaging.decode`
runs these checks before OpenCV sees the bytes, so that the pixel limit holds before any pixel
is decoded and truncation is reported as such.

Header parsing treats every byte as hostile: every read is bounds-checked, so malformed headers
map to typed :class:`~defectscan.errors.ImageDecodeError` subclasses, never to ``IndexError``
or ``struct.error``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from defectscan.errors import (
    EmptyImageError,
    ImageDecodeError,
    NotAnImageError,
    TruncatedImageError,
    UnsupportedBitDepthError,
    UnsupportedChannelsError,
)

__all__ = [
    "ImageFormat",
    "ImageHeader",
    "ImageLayout",
    "probe",
    "read_layout",
]

ImageFormat = Literal["png", "jpeg", "bmp", "tiff"]

_SUPPORTED = "PNG, JPEG, BMP or TIFF"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"
_BMP_SIGNATURE = b"BM"
_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_SIGNATURES: tuple[tuple[bytes, ImageFormat], ...] = (
    (_PNG_SIGNATURE, "png"),
    (_JPEG_SIGNATURE, "jpeg"),
    (_BMP_SIGNATURE, "bmp"),
    *((sig, "tiff") for sig in _TIFF_SIGNATURES),
)
# Formats OpenCV could decode but we refuse, named so that the error says what the file is.
_OTHER_FORMATS: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000 codestream"),
    (b"P1", "PBM/PGM/PPM"),
    (b"P2", "PBM/PGM/PPM"),
    (b"P3", "PBM/PGM/PPM"),
    (b"P4", "PBM/PGM/PPM"),
    (b"P5", "PBM/PGM/PPM"),
    (b"P6", "PBM/PGM/PPM"),
    (b"8BPS", "Photoshop PSD"),
    (b"\x76\x2f\x31\x01", "OpenEXR"),
    (b"#?RADIANCE", "Radiance HDR"),
    (b"PK\x03\x04", "ZIP archive"),
    (b"\x1f\x8b", "gzip archive"),
)


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header declares, read without decoding any pixel.

    ``channels`` is the number of samples per pixel stored in the file and ``bit_depth`` the
    bits per sample, where the header says (``None`` for palette images, whose colours come
    from a palette). The decoded image can differ: OpenCV expands palettes to BGR(A), decodes
    PNG gray+alpha as BGRA and sub-byte depths as 8 bit.
    :class:`~defectscan.imaging.DecodedImage` is the authority.
    """

    format: ImageFormat
    width: int
    height: int
    channels: int | None
    bit_depth: int | None

    @property
    def pixels(self) -> int:
        """Width times height."""
        return self.width * self.height


class ImageLayout(Protocol):
    """A parsed header, and the checks that need only the header and the container."""

    @property
    def header(self) -> ImageHeader:
        """What the header declares."""
        ...

    def check_complete(self, data: bytes) -> None:
        """Raise an ``ImageDecodeError`` unless everything the header announces is in ``data``."""
        ...

    def check_supported(self) -> None:
        """Raise when the declared channels or bit depth are ones the service refuses."""
        ...


def probe(data: bytes) -> ImageHeader:
    """Read format, size, channels and bit depth from the header only."""
    return read_layout(data).header


def read_layout(data: bytes) -> ImageLayout:
    """Recognise the format of ``data`` and parse its header; bad headers raise typed errors."""
    fmt = _sniff(data)
    if fmt == "png":
        return _PngLayout.parse(data)
    if fmt == "jpeg":
        return _JpegLayout.parse(data)
    if fmt == "bmp":
        return _BmpLayout.parse(data)
    return _TiffLayout.parse(data)


# --------------------------------------------------------------------------------------------
# Sniffing and shared checks


def _sniff(data: bytes) -> ImageFormat:
    if len(data) == 0:
        msg = "image has no bytes (empty file or message); check that the writer finished"
        raise EmptyImageError(msg)
    head = bytes(data[:16])
    for signature, fmt in _SIGNATURES:
        if head.startswith(signature):
            return fmt
    # A strict prefix of a signature is a file cut off inside its first bytes. One byte could
    # be anything, so it takes two to call it a truncated image.
    if len(head) >= 2:
        for signature, fmt in _SIGNATURES:
            if len(head) < len(signature) and signature.startswith(head):
                msg = f"{fmt.upper()} data stops after {len(head)} bytes, inside its signature"
                raise TruncatedImageError(msg)
    for signature, name in _OTHER_FORMATS:
        if head.startswith(signature):
            msg = f"data looks like {name}, which is not supported; send {_SUPPORTED}"
            raise NotAnImageError(msg)
    msg = (
        f"data is not a {_SUPPORTED} image (first bytes {head[:8].hex(' ')}, "
        f"{len(data)} bytes in all)"
    )
    raise NotAnImageError(msg)


def _need(data: bytes, end: int, fmt: str, what: str) -> None:
    """Raise TruncatedImageError unless ``data`` holds bytes up to ``end``."""
    if end > len(data):
        msg = (
            f"{fmt} data stops at byte {len(data)} but its {what} needs {end} bytes: the file "
            "is truncated (was it copied or written completely?)"
        )
        raise TruncatedImageError(msg)


def _corrupt(fmt: str, what: str) -> ImageDecodeError:
    return ImageDecodeError(f"{fmt} header is corrupt: {what}")


def _check_size(fmt: str, width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise _corrupt(fmt, f"it declares a {width}x{height} image")


# --------------------------------------------------------------------------------------------
# PNG

# colour type -> (samples per pixel or None for palette, allowed bit depths)
_PNG_COLOUR_TYPES: dict[int, tuple[int | None, tuple[int, ...]]] = {
    0: (1, (1, 2, 4, 8, 16)),
    2: (3, (8, 16)),
    3: (None, (1, 2, 4, 8)),
    4: (2, (8, 16)),
    6: (4, (8, 16)),
}


def _probe_png(data: bytes) -> ImageHeader:
    _need(data, 33, "PNG", "IHDR chunk")
    length, ctype = struct.unpack_from(">I4s", data, 8)
    if ctype != b"IHDR" or length != 13:
        raise _corrupt("PNG", "the first chunk is not a 13-byte IHDR")
    width, height, depth, colour, _compression, _filter, interlace = struct.unpack_from(
        ">IIBBBBB", data, 16
    )
    if width > 0x7FFFFFFF or height > 0x7FFFFFFF:
        raise _corrupt("PNG", f"IHDR size {width}x{height} exceeds the PNG maximum of 2^31-1")
    _check_size("PNG", width, height)
    if colour not in _PNG_COLOUR_TYPES or depth not in _PNG_COLOUR_TYPES[colour][1]:
        raise _corrupt("PNG", f"colour type {colour} with bit depth {depth} is not valid PNG")
    if interlace > 1:
        raise _corrupt("PNG", f"unknown interlace method {interlace}")
    channels = _PNG_COLOUR_TYPES[colour][0]
    return ImageHeader("png", width, height, channels, None if channels is None else depth)


@dataclass(frozen=True)
class _PngLayout:
    header: ImageHeader

    @classmethod
    def parse(cls, data: bytes) -> _PngLayout:
        return cls(_probe_png(data))

    def check_complete(self, data: bytes) -> None:
        _check_png_complete(data)

    def check_supported(self) -> None:
        """Every valid PNG decodes to 8- or 16-bit gray, BGR or BGRA."""


def _check_png_complete(data: bytes) -> None:
    """Every chunk must lie inside the data, up to IEND, with image data before it."""
    pos = 8
    seen_idat = False
    while True:
        _need(data, pos + 8, "PNG", f"chunk header at byte {pos}")
        length, ctype = struct.unpack_from(">I4s", data, pos)
        if length > 0x7FFFFFFF:
            raise _corrupt("PNG", f"chunk at byte {pos} declares {length} bytes")
        _need(data, pos + 12 + length, "PNG", f"{ctype!r} chunk at byte {pos}")
        if ctype == b"IDAT":
            seen_idat = True
        elif ctype == b"IEND":
            break
        pos += 12 + length
    if not seen_idat:
        raise _corrupt("PNG", "it has no IDAT (image data) chunk before IEND")


# --------------------------------------------------------------------------------------------
# JPEG

_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE})
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


@dataclass(frozen=True)
class _JpegLayout:
    header: ImageHeader
    scan_start: int  # first byte of entropy-coded data after the first SOS segment

    @classmethod
    def parse(cls, data: bytes) -> _JpegLayout:
        pos = 2
        sof: tuple[int, int, int, int] | None = None
        while True:
            # Markers may be preceded by any number of 0xFF fill bytes.
            _need(data, pos + 2, "JPEG", f"marker at byte {pos}")
            if data[pos] != 0xFF:
                raise _corrupt("JPEG", f"expected a marker at byte {pos}, found 0x{data[pos]:02x}")
            marker = data[pos + 1]
            if marker == 0xFF:
                pos += 1
                continue
            if marker in _JPEG_STANDALONE:
                pos += 2
                continue
            if marker in (0xD8, 0xD9):
                raise _corrupt("JPEG", f"unexpected {'SOI' if marker == 0xD8 else 'EOI'} marker")
            _need(data, pos + 4, "JPEG", f"segment length at byte {pos}")
            (length,) = struct.unpack_from(">H", data, pos + 2)
            if length < 2:
                raise _corrupt("JPEG", f"segment at byte {pos} declares length {length}")
            end = pos + 2 + length
            _need(data, end, "JPEG", f"segment 0x{marker:02x} at byte {pos}")
            if marker in _JPEG_SOF:
                if sof is not None:
                    # libjpeg refuses a second frame header too; checking one size and
                    # decoding another would defeat the pixel limit.
                    raise _corrupt("JPEG", f"second frame header (SOF) at byte {pos}")
                if length < 8:
                    raise _corrupt("JPEG", f"frame header at byte {pos} is {length} bytes")
                sof = struct.unpack_from(">BHHB", data, pos + 4)
            elif marker == 0xDA:
                if sof is None:
                    raise _corrupt("JPEG", "scan data starts before any frame header (SOF)")
                precision, height, width, components = sof
                if height == 0:
                    # Height 0 defers the size to a DNL marker after the scan: we could not
                    # enforce the pixel limit before decoding, so refuse it.
                    raise _corrupt("JPEG", "height 0 (DNL-defined height is not supported)")
                _check_size("JPEG", width, height)
                header = ImageHeader("jpeg", width, height, components, precision)
                return cls(header=header, scan_start=end)
            pos = end

    def check_complete(self, data: bytes) -> None:
        # Entropy-coded data escapes every 0xFF byte (0xFF00), so the first FFD9 after the scan
        # header is the EOI marker; bytes after it (camera trailers) are allowed.
        if data.find(b"\xff\xd9", self.scan_start) < 0:
            msg = (
                f"JPEG data ends without its EOI marker after {len(data)} bytes: the file is "
                "truncated (was it copied or written completely?)"
            )
            raise TruncatedImageError(msg)

    def check_supported(self) -> None:
        header = self.header
        if header.channels not in (1, 3, 4):
            msg = f"JPEG has {header.channels} colour components; only 1, 3 or 4 are supported"
            raise UnsupportedChannelsError(msg)
        if header.bit_depth != 8:
            # A 12-bit JPEG would decode to uint16 holding 0..4095 and be scaled as if it
            # used the full 16-bit range: a silently dark image. Refuse instead.
            msg = (
                f"JPEG has {header.bit_depth}-bit samples; only 8-bit JPEG is supported: "
                "use 16-bit PNG or TIFF for high bit depth"
            )
            raise UnsupportedBitDepthError(msg)


# --------------------------------------------------------------------------------------------
# BMP

_BMP_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
_BMP_RGB, _BMP_RLE8, _BMP_RLE4, _BMP_BITFIELDS, _BMP_ALPHABITFIELDS = 0, 1, 2, 3, 6


@dataclass(frozen=True)
class _BmpLayout:
    header: ImageHeader
    pixel_offset: int
    bits_per_pixel: int
    compression: int
    image_size: int

    @classmethod
    def parse(cls, data: bytes) -> _BmpLayout:
        _need(data, 18, "BMP", "file header")
        (pixel_offset, dib_size) = struct.unpack_from("<II", data, 10)
        if dib_size not in _BMP_HEADER_SIZES:
            raise _corrupt("BMP", f"unknown info header size {dib_size}")
        _need(data, 14 + dib_size, "BMP", "info header")
        compression = _BMP_RGB
        image_size = 0
        if dib_size == 12:
            width, height, planes, bpp = struct.unpack_from("<HHHH", data, 18)
        else:
            width, height, planes, bpp = struct.unpack_from("<iiHH", data, 18)
            if dib_size >= 40:
                compression, image_size = struct.unpack_from("<II", data, 30)
        if planes != 1:
            raise _corrupt("BMP", f"{planes} colour planes (must be 1)")
        if bpp not in (1, 4, 8, 16, 24, 32):
            raise _corrupt("BMP", f"{bpp} bits per pixel")
        # Negative height means rows are stored top-down; the size is the magnitude.
        height = abs(height)
        _check_size("BMP", width, height)
        channels = {24: 3, 32: 4}.get(bpp)
        header = ImageHeader("bmp", width, height, channels, 8 if channels else None)
        return cls(header, pixel_offset, bpp, compression, image_size)

    def check_complete(self, data: bytes) -> None:
        header = self.header
        if self.compression in (_BMP_RGB, _BMP_BITFIELDS, _BMP_ALPHABITFIELDS):
            stride = (header.width * self.bits_per_pixel + 31) // 32 * 4
            needed = self.pixel_offset + stride * header.height
        elif self.compression in (_BMP_RLE8, _BMP_RLE4):
            needed = self.pixel_offset + max(self.image_size, 1)
        else:
            msg = (
                f"BMP compression {self.compression} is not supported (only uncompressed, "
                "bit fields and RLE); re-save the image as uncompressed BMP or PNG"
            )
            raise ImageDecodeError(msg)
        _need(data, needed, "BMP", "pixel data")

    def check_supported(self) -> None:
        """Every valid BMP depth decodes to 8-bit gray, BGR or BGRA."""


# --------------------------------------------------------------------------------------------
# TIFF

# type -> (struct code, size); other types are skipped like libtiff does.
_TIFF_TYPES: dict[int, tuple[str, int]] = {
    1: ("B", 1),  # BYTE
    2: ("B", 1),  # ASCII
    3: ("H", 2),  # SHORT
    4: ("I", 4),  # LONG
    5: ("Q", 8),  # RATIONAL (read as one 8-byte unit; only its size matters here)
    6: ("b", 1),  # SBYTE
    7: ("B", 1),  # UNDEFINED
    8: ("h", 2),  # SSHORT
    9: ("i", 4),  # SLONG
    10: ("Q", 8),  # SRATIONAL
    11: ("f", 4),  # FLOAT
    12: ("d", 8),  # DOUBLE
    13: ("I", 4),  # IFD
    16: ("Q", 8),  # LONG8 (BigTIFF)
    17: ("q", 8),  # SLONG8
    18: ("Q", 8),  # IFD8
}
_TIFF_INTEGER = frozenset({1, 3, 4, 6, 8, 9, 13, 16, 17, 18})
# Baseline and extension tags that the size, layout and support checks read.
_T_WIDTH, _T_HEIGHT, _T_BITS, _T_PHOTOMETRIC = 256, 257, 258, 262
_T_STRIP_OFFSETS, _T_SAMPLES, _T_ROWS_PER_STRIP, _T_STRIP_COUNTS = 273, 277, 278, 279
_T_PLANAR, _T_TILE_WIDTH, _T_TILE_LENGTH = 284, 322, 323
_T_TILE_OFFSETS, _T_TILE_COUNTS, _T_SAMPLE_FORMAT = 324, 325, 339
_TIFF_WANTED = frozenset({256, 257, 258, 262, 273, 277, 278, 279, 284, 322, 323, 324, 325, 339})
_TIFF_PALETTE = 3


@dataclass(frozen=True)
class _TiffLayout:
    header: ImageHeader
    tags: dict[int, tuple[int, ...]]
    bits: tuple[int, ...]
    sample_format: int

    @classmethod
    def parse(cls, data: bytes) -> _TiffLayout:
        _need(data, 8, "TIFF", "file header")
        order = "<" if data[:2] == b"II" else ">"
        (version,) = struct.unpack_from(order + "H", data, 2)
        big = version == 43
        if big:
            _need(data, 16, "TIFF", "BigTIFF header")
            offset_size, _zero, ifd = struct.unpack_from(order + "HHQ", data, 4)
            if offset_size != 8:
                raise _corrupt("TIFF", f"BigTIFF offset size {offset_size} (must be 8)")
        else:
            (ifd,) = struct.unpack_from(order + "I", data, 4)
        tags = _read_tiff_ifd(data, ifd, order, big)

        width = _tiff_one(tags, _T_WIDTH, None)
        height = _tiff_one(tags, _T_HEIGHT, None)
        _check_size("TIFF", width, height)
        samples = _tiff_one(tags, _T_SAMPLES, 1)
        bits = tags.get(_T_BITS, (1,))
        if not bits or samples < 1:
            raise _corrupt("TIFF", f"{samples} samples per pixel, bits per sample {bits}")
        sample_format = _tiff_one(tags, _T_SAMPLE_FORMAT, 1)
        palette = _tiff_one(tags, _T_PHOTOMETRIC, 1) == _TIFF_PALETTE
        header = ImageHeader(
            "tiff",
            width,
            height,
            None if palette else samples,
            None if palette else max(bits),
        )
        return cls(header, tags, tuple(bits), sample_format)

    def check_complete(self, data: bytes) -> None:
        tags = self.tags
        tiled = _T_TILE_OFFSETS in tags
        offsets = tags.get(_T_TILE_OFFSETS if tiled else _T_STRIP_OFFSETS)
        counts = tags.get(_T_TILE_COUNTS if tiled else _T_STRIP_COUNTS)
        if not offsets:
            raise _corrupt("TIFF", "it has no strip or tile offsets")
        header = self.header
        planes = _tiff_one(tags, _T_SAMPLES, 1) if _tiff_one(tags, _T_PLANAR, 1) == 2 else 1
        if tiled:
            tile_w = _tiff_one(tags, _T_TILE_WIDTH, 0)
            tile_h = _tiff_one(tags, _T_TILE_LENGTH, 0)
            if tile_w <= 0 or tile_h <= 0:
                raise _corrupt("TIFF", f"tile size {tile_w}x{tile_h}")
            expected = -(-header.width // tile_w) * -(-header.height // tile_h) * planes
        else:
            rows = min(_tiff_one(tags, _T_ROWS_PER_STRIP, header.height), header.height)
            if rows <= 0:
                raise _corrupt("TIFF", f"{rows} rows per strip")
            expected = -(-header.height // rows) * planes
        what = "tiles" if tiled else "strips"
        if len(offsets) < expected:
            raise _corrupt("TIFF", f"{len(offsets)} {what} for an image that needs {expected}")
        if counts is None:
            # Without byte counts (allowed for uncompressed data) each block must at least start
            # inside the file.
            end = max(offsets[:expected]) + 1
        else:
            if len(counts) < expected:
                raise _corrupt("TIFF", f"{len(counts)} byte counts for {expected} {what}")
            end = max(o + c for o, c in zip(offsets[:expected], counts[:expected], strict=True))
        _need(data, end, "TIFF", what)

    def check_supported(self) -> None:
        # OpenCV silently drops the second sample of a 2-sample TIFF (gray + alpha) and fails
        # on more than 4, so refuse both from the header.
        header = self.header
        if header.channels is not None and header.channels not in (1, 3, 4):
            msg = (
                f"TIFF has {header.channels} samples per pixel; only gray, BGR and BGRA "
                "(1, 3 or 4 samples) are supported"
            )
            raise UnsupportedChannelsError(msg)
        if self.sample_format != 1 or any(b not in (1, 2, 4, 8, 16) for b in self.bits):
            kind = {1: "unsigned", 2: "signed integer", 3: "floating point"}.get(
                self.sample_format, f"sample format {self.sample_format}"
            )
            msg = (
                f"TIFF has {kind} samples of {'/'.join(map(str, set(self.bits)))} bits; only "
                "8- and 16-bit unsigned images are supported: convert the image"
            )
            raise UnsupportedBitDepthError(msg)


def _read_tiff_ifd(data: bytes, ifd: int, order: str, big: bool) -> dict[int, tuple[int, ...]]:
    """The wanted integer tags of the IFD at ``ifd``; out-of-file reads are truncation."""
    count_fmt, count_size = ("Q", 8) if big else ("H", 2)
    entry_size, inline = (20, 8) if big else (12, 4)
    if ifd < 8:
        raise _corrupt("TIFF", f"first IFD offset {ifd} points into the file header")
    _need(data, ifd + count_size, "TIFF", f"IFD at byte {ifd}")
    (n_entries,) = struct.unpack_from(order + count_fmt, data, ifd)
    _need(data, ifd + count_size + n_entries * entry_size, "TIFF", f"IFD at byte {ifd}")
    entry_fmt = order + ("HHQ" if big else "HHI")
    tags: dict[int, tuple[int, ...]] = {}
    for i in range(n_entries):
        pos = ifd + count_size + i * entry_size
        tag, typ, count = struct.unpack_from(entry_fmt, data, pos)
        # The first of duplicated tags wins, as in libtiff: a later small ImageWidth must not
        # hide the one the decoder will use.
        if tag not in _TIFF_WANTED or typ not in _TIFF_TYPES or tag in tags:
            continue
        if typ not in _TIFF_INTEGER:
            raise _corrupt("TIFF", f"tag {tag} has non-integer type {typ}")
        code, size = _TIFF_TYPES[typ]
        value_pos = pos + entry_size - inline
        if count * size > inline:
            (value_pos,) = struct.unpack_from(order + ("Q" if big else "I"), data, value_pos)
        _need(data, value_pos + count * size, "TIFF", f"values of tag {tag}")
        dtype = np.dtype(order + code)
        values = np.frombuffer(data, dtype=dtype, count=count, offset=value_pos)
        tags[tag] = tuple(int(v) for v in values)
    return tags


def _tiff_one(tags: dict[int, tuple[int, ...]], tag: int, default: int | None) -> int:
    values = tags.get(tag)
    if not values:
        if default is None:
            raise _corrupt("TIFF", f"required tag {tag} is missing")
        return default
    return values[0]
