"""Cut frames into overlapping tiles and blend per-tile model outputs back into one frame.

A frame of any size is covered by square tiles of side ``tile`` whose origins advance by
``stride = tile - overlap``; the last tile on each axis is aligned to the end of the frame, so a
frame at least one tile large needs no padding. A frame smaller than a tile on an axis is
reflect-padded (``symmetric``, which also works for a 1-pixel axis) up to the tile on that axis.

Outputs are blended with a window that ramps up over the overlap band (a half Hann) and is flat
in the middle: pixels near a tile edge, where a convolutional network sees the least context,
count the least, and the transitions between tiles are smooth (no seams). The window is strictly
positive and :meth:`Stitcher.result` divides by the accumulated weight, so edges on the frame
border (which have no neighbour to blend with) are exact, not faded out.

:class:`Stitcher` holds one frame's output and one weight plane, nothing more, so very large
frames are stitched in the memory of their result.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol, runtime_checkable

import numpy as np

from defectscan.errors import ConfigError

__all__ = [
    "BandStitcher",
    "Stitcher",
    "TileBatch",
    "TileGrid",
    "TileReader",
    "batch_tiles",
    "blend_window",
    "extract_tile",
    "iter_tiles",
    "make_grid",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one ``height x width`` frame lie.

    ``ys`` and ``xs`` are tile origins in the padded frame, which is the frame itself plus
    ``pad_bottom`` rows and ``pad_right`` columns of reflection when the frame is smaller than a
    tile on that axis (zero otherwise).
    """

    height: int
    width: int
    tile: int
    overlap: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    pad_bottom: int
    pad_right: int

    @property
    def n_tiles(self) -> int:
        """Number of tiles (rows times columns)."""
        return len(self.ys) * len(self.xs)

    @property
    def padded_shape(self) -> tuple[int, int]:
        """``(height + pad_bottom, width + pad_right)``."""
        return self.height + self.pad_bottom, self.width + self.pad_right

    def positions(self) -> list[tuple[int, int]]:
        """Tile origins ``(y, x)`` in row-major order; list index = tile index."""
        return [(y, x) for y in self.ys for x in self.xs]

    def position(self, index: int) -> tuple[int, int]:
        """Origin ``(y, x)`` of tile ``index``."""
        n = self.n_tiles
        if not 0 <= index < n:
            msg = f"tile index {index} is out of range: this grid has {n} tiles (0..{n - 1})"
            raise IndexError(msg)
        row, col = divmod(index, len(self.xs))
        return self.ys[row], self.xs[col]


def _axis_origins(size: int, tile: int, stride: int) -> tuple[int, ...]:
    """Origins 0, stride, 2*stride, ... and a last one aligned to the end of the padded axis."""
    padded = max(size, tile)
    last = padded - tile
    # Every regular origin is < last and the step to ``last`` is <= stride, so neighbouring
    # tiles always share at least ``overlap`` pixels.
    return (*range(0, last, stride), last)


def make_grid(height: int, width: int, *, tile: int, overlap: int) -> TileGrid:
    """The tile grid for a ``height x width`` frame."""
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
        msg = f"tile size must be a positive integer, got {tile!r}: set tile_size to e.g. 256"
        raise ConfigError(msg)
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < tile:
        msg = (
            f"tile overlap must be an integer in [0, tile) = [0, {tile}), got {overlap!r}: "
            "use e.g. tile // 8"
        )
        raise ConfigError(msg)
    if height < 1 or width < 1:
        msg = f"cannot tile an empty frame of {height}x{width} pixels"
        raise ValueError(msg)
    stride = tile - overlap
    return TileGrid(
        height=int(height),
        width=int(width),
        tile=tile,
        overlap=overlap,
        ys=_axis_origins(int(height), tile, stride),
        xs=_axis_origins(int(width), tile, stride),
        pad_bottom=max(0, tile - int(height)),
        pad_right=max(0, tile - int(width)),
    )


@runtime_checkable
class TileReader(Protocol):
    """A frame that cuts its tiles on demand (large frames: no full-frame float tensor)."""

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of the model input the tiles come from."""
        ...

    def read_tile(self, grid: TileGrid, index: int) -> np.ndarray:
        """Tile ``index`` as float32 ``[C, tile, tile]`` (reflect-padded like extract_tile)."""
        ...


def _check_image(image: np.ndarray | TileReader, grid: TileGrid) -> None:
    if isinstance(image, TileReader):
        if tuple(image.shape[1:]) != (grid.height, grid.width):
            msg = (
                f"tile reader has shape {tuple(image.shape)}, expected "
                f"[C, {grid.height}, {grid.width}] (the size the grid was made for)"
            )
            raise ValueError(msg)
        return
    if image.ndim != 3 or image.shape[1:] != (grid.height, grid.width):
        msg = (
            f"image has shape {tuple(image.shape)}, expected [C, {grid.height}, {grid.width}] "
            "(channels first, the size the grid was made for)"
        )
        raise ValueError(msg)


def extract_tile(image: np.ndarray, grid: TileGrid, index: int) -> np.ndarray:
    """Tile ``index`` of a ``[C, H, W]`` image as ``[C, tile, tile]``.

    A view into ``image`` when the tile lies inside the frame, a reflect-padded copy otherwise.
    """
    _check_image(image, grid)
    y, x = grid.position(index)
    t = grid.tile
    crop = image[:, y : y + t, x : x + t]
    pad_y = t - crop.shape[1]
    pad_x = t - crop.shape[2]
    if pad_y or pad_x:
        # Origins are 0 on a padded axis (a single tile), so the padding is all at the end.
        crop = np.pad(crop, ((0, 0), (0, pad_y), (0, pad_x)), mode="symmetric")
    return crop


def iter_tiles(image: np.ndarray, grid: TileGrid) -> Iterator[tuple[int, np.ndarray]]:
    """``(index, tile)`` for every tile of the image, in row-major order."""
    _check_image(image, grid)
    for index in range(grid.n_tiles):
        yield index, extract_tile(image, grid, index)


@dataclass(frozen=True)
class TileBatch:
    """A batch of tiles, possibly from several frames.

    ``keys[i] = (frame, tile_index)``: ``frame`` is the position of the frame in the sequence
    given to :func:`batch_tiles`, ``tile_index`` the tile's index in that frame's grid.
    """

    keys: list[tuple[int, int]]
    tiles: np.ndarray  # float32 [B, C, tile, tile], contiguous


def _frame_tiles(
    image: np.ndarray | TileReader, grid: TileGrid
) -> Iterator[tuple[int, np.ndarray]]:
    if isinstance(image, TileReader):
        for index in range(grid.n_tiles):
            yield index, image.read_tile(grid, index)
    else:
        yield from iter_tiles(image, grid)


def batch_tiles(
    frames: Iterable[tuple[np.ndarray | TileReader, TileGrid]], batch_size: int
) -> Iterator[TileBatch]:
    """Tiles of several frames, in frame order, packed into batches of at most ``batch_size``.

    Batches span frame boundaries so that small frames still fill the accelerator; only the
    final batch can be short. All frames must share one tile size and channel count. A frame
    is a ``[C, H, W]`` float32 array or a :class:`TileReader` (tiles cut on demand).
    """
    if batch_size < 1:
        msg = f"batch_size must be >= 1, got {batch_size}"
        raise ConfigError(msg)
    keys: list[tuple[int, int]] = []
    buf: np.ndarray | None = None
    for frame, (image, grid) in enumerate(frames):
        _check_image(image, grid)
        shape = (image.shape[0], grid.tile, grid.tile)
        if buf is not None and buf.shape[1:] != shape:
            msg = (
                f"frame {frame} gives tiles of shape {shape} but earlier frames gave "
                f"{buf.shape[1:]}: batch frames with one tile size and channel count"
            )
            raise ValueError(msg)
        for index, tile in _frame_tiles(image, grid):
            if buf is None:
                buf = np.empty((batch_size, *shape), dtype=np.float32)
            buf[len(keys)] = tile
            keys.append((frame, index))
            if len(keys) == batch_size:
                yield TileBatch(keys=keys, tiles=buf)
                # A fresh buffer per batch: the consumer may still be using the last one
                # (asynchronous host-to-device copies).
                keys, buf = [], None
    if keys and buf is not None:
        yield TileBatch(keys=keys, tiles=buf[: len(keys)])


@lru_cache(maxsize=32)
def _window_1d(tile: int, overlap: int) -> np.ndarray:
    i = np.arange(tile, dtype=np.float64)
    if overlap == 0:
        return np.ones(tile, dtype=np.float64)
    # Half Hann sampled at pixel centres: strictly between 0 and 1 inside the band, never 0.
    ramp = 0.5 - 0.5 * np.cos(math.pi * np.minimum(i + 0.5, overlap) / overlap)
    # min() of both ramps also handles overlap > tile / 2, where the ramps meet.
    return np.minimum(ramp, ramp[::-1])


@lru_cache(maxsize=32)
def blend_window(tile: int, overlap: int) -> np.ndarray:
    """Blending weights ``float32 [tile, tile]``: Hann ramps over the overlap band, 1 inside.

    Strictly positive everywhere. The returned array is shared (cached): do not modify it.
    """
    if tile < 1 or not 0 <= overlap < tile:
        msg = f"need tile >= 1 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}"
        raise ConfigError(msg)
    w = _window_1d(tile, overlap)
    window = np.outer(w, w).astype(np.float32)
    window.setflags(write=False)
    return window


class Stitcher:
    """Accumulates per-tile outputs into one frame.

    ``out += w * p`` and ``wsum += w`` per tile; ``result() = out / wsum`` cropped to ``(H, W)``.
    Holds one frame's output (``[channels, Hp, Wp]``) and one weight plane, nothing more.
    """

    def __init__(self, grid: TileGrid, channels: int) -> None:
        if channels < 1:
            msg = f"channels must be >= 1, got {channels}"
            raise ValueError(msg)
        self.grid = grid
        self.channels = channels
        hp, wp = grid.padded_shape
        self._out: np.ndarray = np.zeros((channels, hp, wp), dtype=np.float32)
        self._wsum: np.ndarray = np.zeros((hp, wp), dtype=np.float32)
        self._window = blend_window(grid.tile, grid.overlap)
        self._seen = np.zeros(grid.n_tiles, dtype=bool)
        self._result: np.ndarray | None = None

    @property
    def done(self) -> bool:
        """Every tile has been added."""
        return bool(self._seen.all())

    def add(self, index: int, tile_output: np.ndarray) -> None:
        """Blend the output ``[channels, tile, tile]`` of tile ``index`` into the frame."""
        if self._result is not None:
            msg = "result() was already taken from this Stitcher: make a new one per frame"
            raise ValueError(msg)
        t = self.grid.tile
        if tuple(tile_output.shape) != (self.channels, t, t):
            msg = (
                f"tile output has shape {tuple(tile_output.shape)}, expected "
                f"[{self.channels}, {t}, {t}] (channels, tile, tile)"
            )
            raise ValueError(msg)
        y, x = self.grid.position(index)
        if self._seen[index]:
            msg = f"tile {index} was already added: every tile must be added exactly once"
            raise ValueError(msg)
        self._seen[index] = True
        self._out[:, y : y + t, x : x + t] += self._window * tile_output
        self._wsum[y : y + t, x : x + t] += self._window

    def result(self) -> np.ndarray:
        """The blended frame, ``float32 [channels, H, W]``, contiguous."""
        if self._result is not None:
            return self._result
        if not self.done:
            missing = np.flatnonzero(~self._seen)
            msg = (
                f"{missing.size} of {self.grid.n_tiles} tiles were never added "
                f"(first: {missing[:5].tolist()}): add every tile before result()"
            )
            raise ValueError(msg)
        # Divide in place: no second frame-sized buffer (only the crop copies when padded).
        np.divide(self._out, self._wsum, out=self._out)
        h, w = self.grid.height, self.grid.width
        self._result = np.ascontiguousarray(self._out[:, :h, :w])
        # Release the padded buffers (the result is a view of ``_out`` when nothing was padded).
        self._out = self._result
        self._wsum = np.zeros((0, 0), dtype=np.float32)
        return self._result


class BandStitcher:
    """Blends tiles like :class:`Stitcher` but emits the frame in bands of finished rows.

    Rows ``[ys[r], ys[r + 1])`` receive no contribution from tile rows after ``r``, so once
    every tile of rows ``0..r`` has been added they are final: ``on_band(y0, probs)`` gets them
    (float32 ``[channels, rows, W]``, cropped to the frame) and they are dropped. Memory is
    about one tile-row of the padded width (more only while later rows arrive early).
    """

    def __init__(
        self,
        grid: TileGrid,
        channels: int,
        on_band: Callable[[int, np.ndarray], None],
    ) -> None:
        if channels < 1:
            msg = f"channels must be >= 1, got {channels}"
            raise ValueError(msg)
        self.grid = grid
        self.channels = channels
        self._on_band = on_band
        _, wp = grid.padded_shape
        t = grid.tile
        self._top = 0  # first padded row not emitted yet; buffer row 0 is this row
        self._out = np.zeros((channels, t, wp), dtype=np.float32)
        self._wsum = np.zeros((t, wp), dtype=np.float32)
        self._window = blend_window(grid.tile, grid.overlap)
        self._seen = np.zeros(grid.n_tiles, dtype=bool)
        self._left = [len(grid.xs)] * len(grid.ys)  # tiles still missing per tile row
        self._next_row = 0  # next tile row to emit

    @property
    def done(self) -> bool:
        """Every tile has been added and every band emitted."""
        return self._next_row == len(self.grid.ys)

    def result(self) -> np.ndarray:
        """Not available: the bands went to ``on_band`` (use :class:`Stitcher` for that)."""
        msg = (
            "a BandStitcher hands its frame out band by band and keeps no full frame: use "
            "Stitcher for frames whose probabilities must be kept whole"
        )
        raise ValueError(msg)

    def _grow(self, rows: int) -> None:
        old = self._out.shape[1]
        if rows <= old:
            return
        out = np.zeros((self.channels, rows, self._out.shape[2]), dtype=np.float32)
        wsum = np.zeros((rows, self._out.shape[2]), dtype=np.float32)
        out[:, :old] = self._out
        wsum[:old] = self._wsum
        self._out, self._wsum = out, wsum

    def add(self, index: int, tile_output: np.ndarray) -> None:
        """Blend the output ``[channels, tile, tile]`` of tile ``index``; emit finished bands."""
        t = self.grid.tile
        if tuple(tile_output.shape) != (self.channels, t, t):
            msg = (
                f"tile output has shape {tuple(tile_output.shape)}, expected "
                f"[{self.channels}, {t}, {t}] (channels, tile, tile)"
            )
            raise ValueError(msg)
        y, x = self.grid.position(index)
        if self._seen[index]:
            msg = f"tile {index} was already added: every tile must be added exactly once"
            raise ValueError(msg)
        self._seen[index] = True
        row = y - self._top
        self._grow(row + t)
        self._out[:, row : row + t, x : x + t] += self._window * tile_output
        self._wsum[row : row + t, x : x + t] += self._window
        self._left[index // len(self.grid.xs)] -= 1
        while self._next_row < len(self.grid.ys) and self._left[self._next_row] == 0:
            self._emit(self._next_row)
            self._next_row += 1

    def _emit(self, r: int) -> None:
        ys = self.grid.ys
        hp, _ = self.grid.padded_shape
        end = ys[r + 1] if r + 1 < len(ys) else hp
        n = end - self._top
        h, w = self.grid.height, self.grid.width
        rows = min(end, h) - self._top
        if rows > 0:
            band = self._out[:, :rows, :w] / self._wsum[:rows, :w]
            self._on_band(self._top, band)
        # Shift the unfinished rows to the top of the buffer.
        keep = self._out.shape[1] - n
        self._out[:, :keep] = self._out[:, n:]
        self._out[:, keep:] = 0.0
        self._wsum[:keep] = self._wsum[n:]
        self._wsum[keep:] = 0.0
        self._top = end
