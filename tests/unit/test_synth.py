"""Synthetic data: reproducible, masks match what is drawn, both dataset layouts on disk."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from defectscan.synth import (
    CLASSES,
    make_sample,
    sample_seed,
    write_camera_folder,
    write_dataset,
)


def test_same_seed_gives_identical_arrays_and_different_seeds_differ() -> None:
    a = make_sample(123, height=96, width=128, n_defects=3)
    b = make_sample(123, height=96, width=128, n_defects=3)
    c = make_sample(124, height=96, width=128, n_defects=3)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.mask, b.mask)
    assert a.defects == b.defects
    assert not np.array_equal(a.image, c.image)


def test_shapes_and_dtypes_for_colour_and_grayscale() -> None:
    colour = make_sample(1, height=80, width=112)
    gray = make_sample(1, height=80, width=112, channels=1)
    assert colour.image.shape == (80, 112, 3)
    assert gray.image.shape == (80, 112)
    for s in (colour, gray):
        assert s.image.dtype == np.uint8
        assert s.mask.dtype == np.uint8
        assert s.mask.shape == (80, 112)
        assert set(np.unique(s.binary_mask())) <= {0, 1}


@pytest.mark.parametrize("seed", range(12))
def test_mask_area_and_boxes_match_the_recorded_defects(seed: int) -> None:
    s = make_sample(seed, height=128, width=128, n_defects=3)
    assert np.count_nonzero(s.mask) == sum(d.area for d in s.defects)
    for d in s.defects:
        assert d.class_index == CLASSES.index(d.kind) + 1
        x, y, w, h = d.bbox
        box = s.mask[y : y + h, x : x + w]
        # The class's pixels of this defect lie inside its box (defects never overlap).
        assert np.count_nonzero(box == d.class_index) >= d.area
        assert set(np.unique(s.mask)) <= {0, *(d.class_index for d in s.defects)}


@pytest.mark.parametrize("kind", CLASSES)
def test_defect_pixels_are_visible_against_the_surrounding_surface(kind: str) -> None:
    for seed in range(6):
        s = make_sample(seed, height=128, width=128, channels=1, n_defects=1, kinds=(kind,))
        assert len(s.defects) == 1
        inside = s.mask > 0
        ring = cv2.dilate(inside.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
        ring &= ~inside
        diff = abs(float(s.image[inside].mean()) - float(s.image[ring].mean()))
        assert diff > 20, f"{kind} seed {seed}: defect only {diff:.1f} grey levels off the surface"


def test_contrast_scales_how_visible_defects_are() -> None:
    easy = make_sample(5, height=96, width=96, channels=1, n_defects=1, kinds=("spot",))
    faint = make_sample(
        5, height=96, width=96, channels=1, n_defects=1, kinds=("spot",), contrast=0.2
    )
    assert np.array_equal(easy.mask, faint.mask)
    inside = easy.mask > 0
    background = ~inside
    assert np.array_equal(easy.image[background], faint.image[background])
    d_easy = np.abs(easy.image[inside].astype(int) - faint.image[inside].astype(int)).mean()
    assert d_easy > 30


def test_every_class_appears_and_some_samples_are_defect_free() -> None:
    seen: set[str] = set()
    free = 0
    for seed in range(40):
        s = make_sample(seed, height=64, width=64)
        seen.update(d.kind for d in s.defects)
        if not s.defects:
            free += 1
            assert not s.mask.any()
    assert seen == set(CLASSES)
    assert 3 <= free <= 20  # about a quarter


def test_defect_free_sample_has_an_empty_mask() -> None:
    s = make_sample(9, n_defects=0, height=64, width=64)
    assert s.defects == ()
    assert not s.mask.any()


def test_invalid_arguments_are_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="channels"):
        make_sample(0, channels=2)
    with pytest.raises(ValueError, match="kinds"):
        make_sample(0, kinds=("dent",))
    with pytest.raises(ValueError, match="contrast"):
        make_sample(0, contrast=0)


def test_images_masks_layout(tmp_path: Path) -> None:
    paths = write_dataset(tmp_path, 5, seed=3, height=64, width=80)
    assert [p.name for p in paths] == [f"synth_{i:05d}.png" for i in range(5)]
    for i, p in enumerate(paths):
        img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(tmp_path / "masks" / p.name), cv2.IMREAD_UNCHANGED)
        expected = make_sample(sample_seed(3, i), height=64, width=80)
        assert np.array_equal(img, expected.image)
        assert np.array_equal(mask, expected.mask)


def test_images_masks_layout_binary_masks_are_0_255(tmp_path: Path) -> None:
    write_dataset(tmp_path, 8, seed=1, height=64, width=64, binary=True, channels=1)
    values: set[int] = set()
    for m in sorted((tmp_path / "masks").glob("*.png")):
        values |= set(np.unique(cv2.imread(str(m), cv2.IMREAD_UNCHANGED)).tolist())
    assert values == {0, 255}


def test_class_folders_layout_like_magnetic_tile(tmp_path: Path) -> None:
    paths = write_dataset(
        tmp_path, 10, layout="class-folders", height=64, width=64, channels=1, ext=".bmp"
    )
    assert len(paths) == 10
    assert sorted(d.name for d in tmp_path.iterdir()) == sorted([*CLASSES, "free"])
    for p in paths:
        assert p.parent.name == "Imgs"
        mask = cv2.imread(str(p.with_suffix(".png")), cv2.IMREAD_UNCHANGED)
        assert set(np.unique(mask).tolist()) <= {0, 255}
        if p.parent.parent.name == "free":
            assert not mask.any()
        else:
            assert mask.any()


def test_class_folders_refuses_png_images(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.png"):
        write_dataset(tmp_path, 2, layout="class-folders", ext=".png")


def test_camera_folder_writes_whole_images_only(tmp_path: Path) -> None:
    paths = write_camera_folder(tmp_path / "cam", 3, height=64, width=64)
    more = write_camera_folder(tmp_path / "cam", 2, height=64, width=64, start=3)
    assert [p.name for p in paths + more] == [f"cam_{i:06d}.png" for i in range(5)]
    assert not list((tmp_path / "cam").glob("*.tmp"))
    for p in paths + more:
        assert cv2.imread(str(p)).shape == (64, 64, 3)
