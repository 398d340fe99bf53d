"""Dataset layouts, mask validation with clear errors, a deterministic split, fingerprints."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from defectscan.errors import DatasetError
from defectscan.synth import CLASSES, make_sample, write_dataset
from defectscan.training.datasets import (
    MASK_THRESHOLD,
    dataset_fingerprint,
    load_mask,
    scan_dataset,
    split_dataset,
)


def _write_pair(folder: Path, stem: str, image: np.ndarray, mask: np.ndarray, ext: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / f"{stem}{ext}"), image)
    cv2.imwrite(str(folder / f"{stem}.png"), mask)


def _mt_like(root: Path) -> None:
    """A small Magnetic-Tile-like tree: MT_<Class>/Imgs with jpg + anti-aliased png masks."""
    for cls, n in (("MT_Blowhole", 3), ("MT_Crack", 3), ("MT_Free", 4)):
        for i in range(n):
            s = make_sample(
                i + 10 * len(cls),
                height=48,
                width=40,
                channels=1,
                n_defects=0 if "Free" in cls else 1,
            )
            mask = s.binary_mask() * np.uint8(255)
            if "Free" not in cls:
                # Anti-aliased edge: a ring of in-between values around the defect.
                ring = cv2.dilate(mask, np.ones((3, 3), np.uint8)) & ~mask
                mask = np.where(ring > 0, np.uint8(60), mask)
            _write_pair(root / cls / "Imgs", f"exp_{i}", s.image, mask, ".jpg")


def test_images_masks_layout_reads_class_names_and_pairs(tmp_path: Path) -> None:
    write_dataset(tmp_path, 6, height=32, width=32)
    index = scan_dataset(tmp_path)
    assert index.layout == "images-masks"
    assert index.class_names == CLASSES
    assert len(index) == 6
    assert all(s.mask is not None and s.mask.stem == s.image.stem for s in index.samples)


def test_binary_images_masks_without_classes_file_is_one_defect_class(tmp_path: Path) -> None:
    write_dataset(tmp_path, 6, height=32, width=32, binary=True)
    (tmp_path / "classes.txt").unlink()
    assert scan_dataset(tmp_path).class_names == ("defect",)


def test_class_folders_strip_mt_prefix_and_free_is_negatives(tmp_path: Path) -> None:
    _mt_like(tmp_path)
    index = scan_dataset(tmp_path, layout="class-folders")
    assert index.class_names == ("blowhole", "crack")
    assert index.negative_groups == ("MT_Free",)
    free = [s for s in index.samples if s.group == "MT_Free"]
    assert len(free) == 4
    assert all(s.mask is None and s.class_index is None for s in free)
    crack = [s for s in index.samples if s.group == "MT_Crack"]
    assert {s.class_index for s in crack} == {2}


def test_anti_aliased_class_folder_masks_are_binarised_at_128(tmp_path: Path) -> None:
    _mt_like(tmp_path)
    index = scan_dataset(tmp_path)
    s = next(x for x in index.samples if x.group == "MT_Crack")
    assert s.mask is not None
    raw = cv2.imread(str(s.mask), cv2.IMREAD_UNCHANGED)
    assert set(np.unique(raw).tolist()) == {0, 60, 255}
    mask = load_mask(s.mask, shape=raw.shape, n_classes=2, class_index=s.class_index)
    assert set(np.unique(mask).tolist()) == {0, 2}
    # The 60-valued edge is below the documented threshold, so it is background.
    assert np.array_equal(mask > 0, raw >= MASK_THRESHOLD)


def test_zero_one_and_zero_255_binary_masks_mean_the_same(tmp_path: Path) -> None:
    m01 = (make_sample(3, height=32, width=32, n_defects=2).mask > 0).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), m01)
    cv2.imwrite(str(tmp_path / "b.png"), m01 * 255)
    a = load_mask(tmp_path / "a.png", shape=(32, 32), n_classes=1)
    b = load_mask(tmp_path / "b.png", shape=(32, 32), n_classes=1)
    assert np.array_equal(a, b)
    assert np.array_equal(a, m01)


def test_mask_size_mismatch_names_both_sizes(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "m.png"), np.zeros((30, 20), np.uint8))
    with pytest.raises(DatasetError, match=r"20x30 \(WxH\) but its image is 32x32"):
        load_mask(tmp_path / "m.png", shape=(32, 32), n_classes=1)


def test_multiclass_mask_with_255_is_refused_with_a_fix(tmp_path: Path) -> None:
    m = np.zeros((16, 16), np.uint8)
    m[2:5, 2:5] = 255
    m[8:10, 8:10] = 2
    cv2.imwrite(str(tmp_path / "m.png"), m)
    with pytest.raises(DatasetError, match=r"values \[255\].*4 classes.*class indices"):
        load_mask(tmp_path / "m.png", shape=(16, 16), n_classes=4)


def test_colour_mask_with_different_channels_is_refused(tmp_path: Path) -> None:
    m = np.zeros((16, 16, 3), np.uint8)
    m[:4, :4, 2] = 255
    cv2.imwrite(str(tmp_path / "m.png"), m)
    with pytest.raises(DatasetError, match="single-channel"):
        load_mask(tmp_path / "m.png", shape=(16, 16), n_classes=1)


def test_image_without_mask_is_reported(tmp_path: Path) -> None:
    write_dataset(tmp_path, 3, height=32, width=32)
    (tmp_path / "masks" / "synth_00001.png").unlink()
    with pytest.raises(DatasetError, match=r"1 image\(s\).*no mask.*synth_00001"):
        scan_dataset(tmp_path)


def test_unknown_layout_is_explained(tmp_path: Path) -> None:
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DatasetError, match="neither an images/ folder"):
        scan_dataset(tmp_path)


def test_split_is_deterministic_stratified_and_stable_when_files_are_added(tmp_path: Path) -> None:
    write_dataset(tmp_path, 25, layout="class-folders", height=32, width=32, ext=".bmp")
    index = scan_dataset(tmp_path)
    train1, val1 = split_dataset(index, val_fraction=0.2, seed=7)
    train2, val2 = split_dataset(index, val_fraction=0.2, seed=7)
    assert (train1, val1) == (train2, val2)
    assert not {s.key for s in train1} & {s.key for s in val1}
    assert len(train1) + len(val1) == 25
    # Every folder (class) is represented in validation.
    assert {s.group for s in val1} == {s.group for s in index.samples}
    _, val_other = split_dataset(index, val_fraction=0.2, seed=8)
    assert {s.key for s in val_other} != {s.key for s in val1}
    # Reversed listing order: same split.
    rev = type(index)(index.root, index.layout, index.class_names, index.samples[::-1])
    assert split_dataset(rev, val_fraction=0.2, seed=7)[1] == val1


def test_fingerprint_changes_when_a_mask_changes(tmp_path: Path) -> None:
    write_dataset(tmp_path, 4, height=32, width=32)
    before = dataset_fingerprint(scan_dataset(tmp_path))
    assert before == dataset_fingerprint(scan_dataset(tmp_path))
    m = tmp_path / "masks" / "synth_00002.png"
    arr = cv2.imread(str(m), cv2.IMREAD_UNCHANGED)
    arr[0, 0] = 1 if arr[0, 0] == 0 else 0
    cv2.imwrite(str(m), arr)
    assert dataset_fingerprint(scan_dataset(tmp_path)) != before
