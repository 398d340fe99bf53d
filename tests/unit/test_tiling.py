"""Tiling and stitching: every pixel covered, exact blending, no seams, UNet tiled == full frame."""

from __future__ import annotations

import math
import tracemalloc

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from defectscan.errors import ConfigError
from defectscan.model.unet import UNet
from defectscan.tiling import (
    Stitcher,
    TileGrid,
    batch_tiles,
    blend_window,
    extract_tile,
    iter_tiles,
    make_grid,
)


@st.composite
def _grids(draw: st.DrawFn, max_size: int = 700) -> TileGrid:
    tile = draw(st.integers(1, 128))
    overlap = draw(st.integers(0, tile - 1))
    # Up to ~25 tiles per axis keeps each example fast (tile 1 on a 700 px frame would be
    # half a million tiles) while still reaching large frames for sensible tile settings.
    limit = min(max_size, tile + 25 * (tile - overlap))
    # Sizes around the interesting boundaries (1, tile - 1, tile, tile + 1) and odd ones.
    near_tile = st.sampled_from(sorted({1, max(1, tile - 1), tile, tile + 1, 2 * tile + 1}))
    size = st.one_of(near_tile, st.integers(1, limit))
    return make_grid(draw(size), draw(size), tile=tile, overlap=overlap)


def _stitch(grid: TileGrid, outputs: list[np.ndarray]) -> np.ndarray:
    s = Stitcher(grid, outputs[0].shape[0])
    for i, out in enumerate(outputs):
        s.add(i, out)
    assert s.done
    return s.result()


# --- grid -------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(_grids())
def test_grid_covers_every_pixel_with_at_least_the_overlap(grid: TileGrid) -> None:
    t, stride = grid.tile, grid.tile - grid.overlap
    hp, wp = grid.padded_shape
    assert (hp, wp) == (max(grid.height, t), max(grid.width, t))
    assert grid.pad_bottom == hp - grid.height
    assert grid.pad_right == wp - grid.width
    for origins, padded in ((grid.ys, hp), (grid.xs, wp)):
        assert origins[0] == 0
        assert origins[-1] == padded - t  # last tile aligned to the end: nothing sticks out
        steps = np.diff(origins)
        assert (steps > 0).all()  # no duplicate tiles
        assert (steps <= stride).all()  # neighbours share >= overlap pixels
        # Minimal: the regular stride until the end, plus one end-aligned tile.
        assert len(origins) == (1 if padded == t else math.ceil((padded - t) / stride) + 1)
    covered = np.zeros((hp, wp), dtype=np.int32)
    for y, x in grid.positions():
        covered[y : y + t, x : x + t] += 1
    assert covered.min() >= 1
    assert grid.n_tiles == len(grid.positions()) == len(grid.ys) * len(grid.xs)


def test_grid_examples() -> None:
    g = make_grid(200, 300, tile=96, overlap=32)
    assert g.ys == (0, 64, 104)
    assert g.xs == (0, 64, 128, 192, 204)
    assert (g.pad_bottom, g.pad_right) == (0, 0)
    assert g.positions()[:2] == [(0, 0), (0, 64)]  # row-major
    small = make_grid(1, 1, tile=64, overlap=16)
    assert (small.ys, small.xs, small.pad_bottom, small.pad_right) == ((0,), (0,), 63, 63)
    exact = make_grid(64, 65, tile=64, overlap=0)
    assert (exact.ys, exact.xs) == ((0,), (0, 1))


@pytest.mark.parametrize(
    ("tile", "overlap"), [(0, 0), (-4, 0), (64, 64), (64, -1), (64, 100), (True, 0)]
)
def test_grid_rejects_bad_tile_settings(tile: int, overlap: int) -> None:
    with pytest.raises(ConfigError, match="tile"):
        make_grid(100, 100, tile=tile, overlap=overlap)


def test_grid_rejects_empty_frame() -> None:
    with pytest.raises(ValueError, match="empty frame"):
        make_grid(0, 10, tile=8, overlap=2)


# --- tiles ------------------------------------------------------------------------------


def test_tiles_inside_the_frame_are_views_of_the_right_pixels() -> None:
    img = np.arange(3 * 50 * 70, dtype=np.float32).reshape(3, 50, 70)
    g = make_grid(50, 70, tile=32, overlap=8)
    for i, tile in iter_tiles(img, g):
        y, x = g.position(i)
        assert tile.shape == (3, 32, 32)
        assert np.shares_memory(tile, img)
        np.testing.assert_array_equal(tile, img[:, y : y + 32, x : x + 32])


@pytest.mark.parametrize(("h", "w"), [(1, 1), (5, 3), (1, 40), (17, 9)])
def test_small_frames_are_reflect_padded(h: int, w: int) -> None:
    img = np.random.default_rng(0).random((2, h, w), dtype=np.float32)
    g = make_grid(h, w, tile=16, overlap=4)
    tile = extract_tile(img, g, 0)
    assert tile.shape == (2, 16, 16)
    hc, wc = min(h, 16), min(w, 16)
    np.testing.assert_array_equal(tile[:, :hc, :wc], img[:, :hc, :wc])
    if h < 16:
        # Mirror image of the frame across its bottom edge, edge pixel repeated (symmetric).
        k = min(h, 16 - h)
        np.testing.assert_array_equal(tile[:, h : h + k, :], tile[:, h - k : h, :][:, ::-1, :])
    if w < 16:
        k = min(w, 16 - w)
        np.testing.assert_array_equal(tile[:, :, w : w + k], tile[:, :, w - k : w][:, :, ::-1])
    if h == 1 and w == 1:
        # A 1-pixel frame (where BORDER_REFLECT_101 would fail) becomes a constant tile.
        np.testing.assert_array_equal(tile, np.broadcast_to(img, tile.shape))


def test_extract_tile_checks_the_image_against_the_grid() -> None:
    g = make_grid(40, 40, tile=16, overlap=4)
    with pytest.raises(ValueError, match=r"expected \[C, 40, 40\]"):
        extract_tile(np.zeros((3, 40, 41), np.float32), g, 0)
    with pytest.raises(IndexError, match="out of range"):
        extract_tile(np.zeros((3, 40, 40), np.float32), g, g.n_tiles)


def test_batches_span_frames_and_keep_every_tile_once() -> None:
    rng = np.random.default_rng(1)
    frames = [rng.random((3, h, w), dtype=np.float32) for h, w in ((40, 50), (7, 7), (33, 64))]
    grids = [make_grid(*f.shape[1:], tile=16, overlap=4) for f in frames]
    batches = list(batch_tiles(zip(frames, grids, strict=True), batch_size=5))
    keys = [k for b in batches for k in b.keys]
    expected = [(f, i) for f, g in enumerate(grids) for i in range(g.n_tiles)]
    assert keys == expected
    assert all(b.tiles.shape == (5, 3, 16, 16) for b in batches[:-1])
    assert batches[-1].tiles.shape[0] == len(batches[-1].keys) == (len(expected) % 5 or 5)
    for b in batches:
        assert b.tiles.dtype == np.float32
        assert b.tiles.flags.c_contiguous
        for (f, i), tile in zip(b.keys, b.tiles, strict=True):
            np.testing.assert_array_equal(tile, extract_tile(frames[f], grids[f], i))


# --- window and stitching ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("tile", "overlap"), [(1, 0), (8, 0), (64, 16), (96, 32), (64, 50), (7, 6)]
)
def test_blend_window_is_positive_flat_inside_and_symmetric(tile: int, overlap: int) -> None:
    w = blend_window(tile, overlap)
    assert w.shape == (tile, tile)
    assert w.dtype == np.float32
    assert (w > 0).all()
    assert w.max() <= 1.0
    np.testing.assert_array_equal(w, w.T)
    np.testing.assert_array_equal(w, w[::-1, ::-1])
    if 2 * overlap < tile:
        np.testing.assert_array_equal(
            w[overlap : -overlap or None, overlap : -overlap or None], 1.0
        )
    assert blend_window(tile, overlap) is w  # cached: built once per configuration
    assert not w.flags.writeable  # shared, so nobody may change it


@settings(max_examples=60, deadline=None)
@given(_grids(max_size=300), st.floats(-5.0, 5.0, allow_nan=False, width=32))
def test_constant_tiles_stitch_to_exactly_that_constant(grid: TileGrid, value: float) -> None:
    # Proves the normalisation: no fading at frame borders, no seams, for every grid.
    # float32 weighted sums over up to (tile / stride)^2 overlapping tiles: a few ulp per term.
    outputs = [np.full((2, grid.tile, grid.tile), value, np.float32)] * grid.n_tiles
    out = _stitch(grid, outputs)
    assert out.shape == (2, grid.height, grid.width)
    assert out.flags.c_contiguous
    np.testing.assert_allclose(out, value, rtol=2e-5, atol=2e-5)


def _smooth(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.sin(y / 17.0) * np.cos(x / 23.0) + 0.01 * y - 0.003 * x


@settings(max_examples=60, deadline=None)
@given(_grids(max_size=300))
def test_a_smooth_function_is_reconstructed_exactly(grid: TileGrid) -> None:
    t = grid.tile
    yy, xx = np.mgrid[0:t, 0:t].astype(np.float64)
    outputs = [_smooth(yy + y, xx + x).astype(np.float32)[None] for y, x in grid.positions()]
    out = _stitch(grid, outputs)
    h, w = grid.height, grid.width
    expected = _smooth(*np.mgrid[0:h, 0:w].astype(np.float64)).astype(np.float32)
    # Exact up to float32 rounding of the weighted sums (many tiles overlap when stride is 1).
    np.testing.assert_allclose(out[0], expected, rtol=1e-5, atol=1e-5)


def test_tiles_that_disagree_blend_smoothly_without_steps() -> None:
    # Each tile outputs its own constant (the worst case of disagreeing neighbours). A hard cut
    # would jump by the full difference at the tile edge; the Hann ramp spreads it over the
    # overlap band, so no step between neighbouring pixels exceeds the ramp's slope.
    grid = make_grid(150, 170, tile=48, overlap=16)
    values = np.random.default_rng(3).uniform(0.0, 1.0, grid.n_tiles).astype(np.float32)
    outputs = [np.full((1, 48, 48), v, np.float32) for v in values]
    out = _stitch(grid, outputs)[0]
    assert values.min() - 1e-6 <= out.min()  # a convex combination: no over- or undershoot
    assert out.max() <= values.max() + 1e-6
    max_step = max(np.abs(np.diff(out, axis=0)).max(), np.abs(np.diff(out, axis=1)).max())
    spread = float(values.max() - values.min())
    # Half-Hann slope is at most pi / (2 * overlap) per pixel; x2 for irregular last tiles.
    assert max_step <= 2 * spread * math.pi / (2 * grid.overlap)
    assert max_step < 0.25 * spread
    # Where only one tile reaches, the output is exactly that tile's.
    assert out[0, 0] == pytest.approx(values[0], abs=1e-6)
    assert out[-1, -1] == pytest.approx(values[-1], abs=1e-6)


def test_stitcher_refuses_misuse() -> None:
    grid = make_grid(40, 40, tile=16, overlap=4)
    s = Stitcher(grid, 2)
    tile = np.zeros((2, 16, 16), np.float32)
    s.add(0, tile)
    with pytest.raises(ValueError, match="already added"):
        s.add(0, tile)
    with pytest.raises(ValueError, match="expected"):
        s.add(1, np.zeros((1, 16, 16), np.float32))
    with pytest.raises(IndexError):
        s.add(grid.n_tiles, tile)
    assert not s.done
    with pytest.raises(ValueError, match="never added"):
        s.result()
    for i in range(1, grid.n_tiles):
        s.add(i, tile)
    assert s.done
    first = s.result()
    assert s.result() is first  # idempotent: not divided twice
    with pytest.raises(ValueError, match="already taken"):
        s.add(1, tile)


def test_stitcher_holds_one_frame_and_no_more() -> None:
    h, w, c = 600, 900, 2
    grid = make_grid(h, w, tile=128, overlap=32)
    tile = np.ones((c, 128, 128), np.float32)
    frame_bytes = (c + 1) * h * w * 4  # output planes + weight plane
    tracemalloc.start()
    try:
        s = Stitcher(grid, c)
        for i in range(grid.n_tiles):
            s.add(i, tile)
        out = s.result()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == (c, h, w)
    # Slack for per-tile temporaries only: no second frame-sized buffer in add() or result().
    assert peak < frame_bytes + 2 * c * 128 * 128 * 4 + 1_000_000


# --- model-level acceptance: tiled UNet == full-frame UNet ------------------------------


def _seam_lines(grid: TileGrid) -> tuple[list[int], list[int]]:
    """Rows and columns where a tile edge lies inside the frame (index of the first pixel after)."""
    t = grid.tile
    rows = sorted({y for y in grid.ys if y > 0} | {y + t for y in grid.ys if y + t < grid.height})
    cols = sorted({x for x in grid.xs if x > 0} | {x + t for x in grid.xs if x + t < grid.width})
    return rows, cols


def _max_jump(err: np.ndarray, rows: list[int], cols: list[int]) -> tuple[float, float]:
    """Largest change of ``err`` between neighbours across seam lines, and everywhere else."""
    dy = np.abs(np.diff(err, axis=0))  # dy[r - 1] is the step from row r - 1 to row r
    dx = np.abs(np.diff(err, axis=1))
    seam_y = np.zeros(dy.shape[0], bool)
    seam_y[[r - 1 for r in rows]] = True
    seam_x = np.zeros(dx.shape[1], bool)
    seam_x[[c - 1 for c in cols]] = True
    at = max(dy[seam_y].max(), dx[:, seam_x].max())
    elsewhere = max(dy[~seam_y].max(), dx[:, ~seam_x].max())
    return float(at), float(elsewhere)


def test_tiled_unet_matches_the_full_frame_without_seams() -> None:
    torch.manual_seed(0)
    model = UNet(3, 1, base_width=4).eval()
    h, w, tile, overlap = 200, 300, 96, 32
    rng = np.random.default_rng(0)
    # Blurred noise: structure at several scales, like a textured part.
    img = rng.standard_normal((3, h, w)).astype(np.float32)
    img = np.stack([cv2.GaussianBlur(ch, (0, 0), 2.0) for ch in img])
    img /= img.std()
    x = torch.from_numpy(img)[None]
    with torch.inference_mode():
        # A random-init UNet's logits barely vary (probabilities ~0.39..0.40), which would make
        # any tolerance meaningless. Rescale its last 1x1 conv so the logits have std 2, as a
        # trained model's do (probabilities spread over 0..1). This amplifies tiling errors too.
        logits = model(x)
        mu, sd = float(logits.mean()), float(logits.std())
        model.outc.conv.weight.mul_(2.0 / sd)
        model.outc.conv.bias.sub_(mu).mul_(2.0 / sd)
        full = torch.sigmoid(model(x))[0, 0].numpy()
        grid = make_grid(h, w, tile=tile, overlap=overlap)
        tiles = np.stack([t for _, t in iter_tiles(img, grid)])
        out = torch.sigmoid(model(torch.from_numpy(tiles))).numpy()
    assert full.std() > 0.2  # the probabilities really span the range

    stitched = _stitch(grid, list(out))[0]
    naive = np.zeros_like(full)  # hard cut: each tile overwrites its predecessors
    for (y, x0), o in zip(grid.positions(), out, strict=True):
        naive[y : y + tile, x0 : x0 + tile] = o[0, : h - y, : w - x0]
    err = np.abs(stitched - full)
    naive_err = np.abs(naive - full)

    # Error profile measured (torch 2.13 CPU, this seed; other seeds alike): single tiles
    # differ from the full frame by up to ~1.0 within 3 px of an inner tile edge (the
    # zero-padded convolutions see different context there), ~0.02 at 4-6 px and ~0.003-0.005
    # deeper inside (the bottleneck's receptive field spans the whole tile, so some context
    # always differs). The window gives those edge pixels weights of 6e-4..3e-2, so the
    # stitched error is max ~0.03, mean ~4e-4, while the hard cut reaches ~0.99 at the seams.
    # Tolerances: 0.05 max (a 0.5 threshold can only flip pixels already within 0.05 of it),
    # 2e-3 mean.
    assert err.max() < 0.05
    assert err.mean() < 2e-3
    assert naive_err.max() > 0.5  # the check can fail: a hard cut does

    # No seams: the stitched output does not step across a tile edge any more than the full
    # frame does, i.e. the error does not jump between neighbouring pixels on a seam line
    # more than it varies anywhere else (measured 0.008 at seams vs 0.02+ elsewhere), and
    # the error on and beside seam lines is no larger than away from them.
    rows, cols = _seam_lines(grid)
    jump_at, jump_elsewhere = _max_jump(stitched - full, rows, cols)
    assert jump_at <= jump_elsewhere
    assert jump_at < 0.02
    naive_at, _ = _max_jump(naive - full, rows, cols)
    assert naive_at > 0.5  # a seam is what this check detects
    assert naive_at > 2 * jump_elsewhere
    near = np.zeros((h, w), bool)
    for r in rows:
        near[max(0, r - 2) : r + 2] = True
    for c in cols:
        near[:, max(0, c - 2) : c + 2] = True
    assert err[near].max() <= 1.5 * err[~near].max()
