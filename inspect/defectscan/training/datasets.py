"""Training data on disk: folder layouts, mask validation, a deterministic split, a fingerprint.

Two layouts are read:

``images-masks``
    ``root/images/<stem>.<ext>`` and ``root/masks/<stem>.png`` with the same stems. Masks hold
    class indices (0 = background, ``i + 1`` = ``class_names[i]``), or a binary mask as 0/1 or
    0/255. Class names come from ``root/classes.txt`` (one per line, in index order) when it
    exists, else from the caller, else ``("defect",)`` for binary masks and ``class_1..class_K``.
``class-folders``
    ``root/<Class>/Imgs/<stem>.<ext>`` + ``<stem>.png`` (the Magnetic Tile layout). The mask marks
    defect vs background and the folder names the class (an ``MT_`` prefix is stripped and the
    name lower-cased). A folder whose masks are all empty (``MT_Free``) holds defect-free
    negatives, not a class.

Binary masks are binarised at ``>= 128`` (:data:`MASK_THRESHOLD`) when they carry anti-aliased
edges (values between 0 and 255): the Magnetic Tile masks do, and thresholding at ``> 0`` instead
changes the positive area by about half. Images are decoded with :func:`defectscan.imaging.
read_image`, exactly as inference decodes them.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from defectscan.errors import DatasetError, ImageDecodeError
from defectscan.imaging import DEFAULT_MAX_PIXELS, DecodedImage, read_image

__all__ = [
    "IMAGE_SUFFIXES",
    "MASK_THRESHOLD",
    "DatasetIndex",
    "Layout",
    "Sample",
    "class_name_from_folder",
    "dataset_fingerprint",
    "detect_layout",
    "load_image",
    "load_mask",
    "scan_dataset",
    "split_dataset",
]

logger = logging.getLogger(__name__)

Layout = Literal["images-masks", "class-folders"]
#: 0..255 masks are binarised at ``value >= MASK_THRESHOLD``.
MASK_THRESHOLD = 128
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Sample:
    """One image with its mask (``None``: defect-free) and, for class folders, its class."""

    image: Path
    mask: Path | None
    group: str
    class_index: int | None = None

    @property
    def key(self) -> str:
        """Stable identity inside the dataset: ``group/stem``."""
        return f"{self.group}/{self.image.stem}"


@dataclass(frozen=True)
class DatasetIndex:
    """The samples of a dataset folder and the classes its masks refer to."""

    root: Path
    layout: Layout
    class_names: tuple[str, ...]
    samples: tuple[Sample, ...]
    negative_groups: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.samples)


def class_name_from_folder(name: str) -> str:
    """``MT_Blowhole`` -> ``blowhole``: the class a folder names."""
    base = name[3:] if name.upper().startswith("MT_") else name
    return base.strip().lower()


def detect_layout(root: Path) -> Layout:
    """``images-masks`` when ``root/images`` exists, ``class-folders`` when ``*/Imgs`` does."""
    root = Path(root)
    if (root / "images").is_dir():
        return "images-masks"
    if any((d / "Imgs").is_dir() for d in root.iterdir() if d.is_dir()):
        return "class-folders"
    msg = (
        f"{root} has neither an images/ folder (images-masks layout) nor <Class>/Imgs/ folders "
        f"(class-folders layout, as in the Magnetic Tile dataset)"
    )
    raise DatasetError(msg)


def scan_dataset(
    root: Path,
    *,
    layout: Layout | Literal["auto"] = "auto",
    class_names: Sequence[str] | None = None,
) -> DatasetIndex:
    """List the samples of ``root`` and settle the class names (no pixel is decoded here)."""
    root = Path(root)
    if not root.is_dir():
        msg = f"dataset folder {root} does not exist"
        raise DatasetError(msg)
    resolved: Layout = detect_layout(root) if layout == "auto" else layout
    if resolved == "images-masks":
        return _scan_images_masks(root, class_names)
    if resolved == "class-folders":
        return _scan_class_folders(root, class_names)
    msg = f"unknown layout {layout!r}: use images-masks, class-folders or auto"
    raise DatasetError(msg)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _scan_images_masks(root: Path, class_names: Sequence[str] | None) -> DatasetIndex:
    images_dir, masks_dir = root / "images", root / "masks"
    if not masks_dir.is_dir():
        msg = f"{root} has images/ but no masks/ folder; put <stem>.png masks in {masks_dir}"
        raise DatasetError(msg)
    masks = {p.stem: p for p in _images_in(masks_dir)}
    images = _images_in(images_dir)
    if not images:
        msg = f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images_dir}"
        raise DatasetError(msg)
    stems = [p.stem for p in images]
    if len(set(stems)) != len(stems):
        dup = sorted({s for s in stems if stems.count(s) > 1})[:5]
        msg = f"several images share a stem in {images_dir}: {dup}; stems must be unique"
        raise DatasetError(msg)
    missing = [p.name for p in images if p.stem not in masks]
    if missing:
        msg = (
            f"{len(missing)} image(s) in {images_dir} have no mask with the same stem in "
            f"{masks_dir}, e.g. {missing[:3]}; add the masks (an all-zero mask for a good part)"
        )
        raise DatasetError(msg)
    names = _class_names_file(root) or (tuple(class_names) if class_names else None)
    if names is None:
        names = _infer_class_names([masks[p.stem] for p in images])
    samples = tuple(Sample(p, masks[p.stem], "images") for p in images)
    return DatasetIndex(root, "images-masks", names, samples)


def _class_names_file(root: Path) -> tuple[str, ...] | None:
    path = root / "classes.txt"
    if not path.is_file():
        return None
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not names:
        msg = f"{path} is empty: list one class name per line, in class-index order (1, 2, ...)"
        raise DatasetError(msg)
    return names


def _infer_class_names(masks: list[Path]) -> tuple[str, ...]:
    """0/1, 0/255 or anti-aliased 0..255 masks -> one class; small integers 0..K -> K classes."""
    top = 0
    for path in masks:
        m = _read_mask_pixels(path)
        top = max(top, int(m.max()) if m.size else 0)
        if top >= MASK_THRESHOLD:
            return ("defect",)
    if top <= 1:
        return ("defect",)
    return tuple(f"class_{i + 1}" for i in range(top))


def _scan_class_folders(root: Path, class_names: Sequence[str] | None) -> DatasetIndex:
    groups = sorted(d for d in root.iterdir() if d.is_dir() and (d / "Imgs").is_dir())
    if not groups:
        msg = f"no <Class>/Imgs/ folders in {root}"
        raise DatasetError(msg)
    pairs: dict[str, list[tuple[Path, Path]]] = {}
    for g in groups:
        files = _images_in(g / "Imgs")
        pngs = {p.stem: p for p in files if p.suffix.lower() == ".png"}
        images = [p for p in files if p.suffix.lower() != ".png"]
        if not images:
            msg = (
                f"{g / 'Imgs'} has no images: the class-folders layout keeps <stem>.jpg (or "
                f".bmp/.tif) images beside <stem>.png masks"
            )
            raise DatasetError(msg)
        missing = [p.name for p in images if p.stem not in pngs]
        if missing:
            msg = f"{len(missing)} image(s) in {g / 'Imgs'} have no <stem>.png mask: {missing[:3]}"
            raise DatasetError(msg)
        pairs[g.name] = [(p, pngs[p.stem]) for p in images]
    # A folder whose masks are all empty is a set of negatives ("Free"), not a class.
    negatives = tuple(g for g, ps in pairs.items() if not any(_mask_nonempty(m) for _, m in ps))
    found = tuple(class_name_from_folder(g) for g in pairs if g not in negatives)
    if not found:
        msg = f"every mask under {root} is empty: there is no defect class to learn"
        raise DatasetError(msg)
    names = tuple(class_names) if class_names else found
    unknown = sorted(set(found) - set(names))
    if unknown:
        msg = f"folders name classes {unknown} that are not in class_names {names}"
        raise DatasetError(msg)
    samples: list[Sample] = []
    for group, ps in pairs.items():
        idx = None if group in negatives else names.index(class_name_from_folder(group)) + 1
        samples.extend(Sample(img, None if idx is None else m, group, idx) for img, m in ps)
    return DatasetIndex(root, "class-folders", names, tuple(samples), negatives)


def _mask_nonempty(path: Path) -> bool:
    return bool(np.any(_read_mask_pixels(path) >= MASK_THRESHOLD))


def _read_mask_pixels(path: Path) -> np.ndarray:
    m = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if m is None:
        msg = f"cannot read mask {path}: not a PNG/BMP/TIFF image OpenCV can decode"
        raise DatasetError(msg)
    if m.ndim == 3:
        if m.shape[2] == 4:
            m = m[:, :, :3]
        if not (np.array_equal(m[:, :, 0], m[:, :, 1]) and np.array_equal(m[:, :, 0], m[:, :, 2])):
            msg = (
                f"mask {path} is a colour image with different channels; masks must be "
                f"single-channel (class indices, 0/1 or 0/255)"
            )
            raise DatasetError(msg)
        m = m[:, :, 0]
    if m.dtype not in (np.uint8, np.uint16):
        msg = f"mask {path} has dtype {m.dtype}; use 8-bit PNG masks"
        raise DatasetError(msg)
    return m


def load_mask(
    path: Path | None,
    *,
    shape: tuple[int, int],
    n_classes: int,
    class_index: int | None = None,
) -> np.ndarray:
    """The class-index map (uint8, 0 = background) of one sample, validated.

    ``class_index`` (class folders) means the mask is binary and its positives are that class.
    Otherwise values must be class indices ``0..n_classes`` or a binary 0/1 / 0/255 mask (which
    needs ``n_classes == 1``). Values strictly between 0 and 255 in a binary mask are anti-aliased
    edges and are binarised at ``>= MASK_THRESHOLD``.
    """
    if path is None:
        return np.zeros(shape, np.uint8)
    m = _read_mask_pixels(path)
    if m.shape[:2] != shape:
        msg = (
            f"mask {path} is {m.shape[1]}x{m.shape[0]} (WxH) but its image is "
            f"{shape[1]}x{shape[0]}; masks must have the image's size"
        )
        raise DatasetError(msg)
    values = np.unique(m)
    top = int(values.max()) if values.size else 0
    if class_index is not None:
        if top <= 1:
            return (m > 0).astype(np.uint8) * np.uint8(class_index)
        return (m >= MASK_THRESHOLD).astype(np.uint8) * np.uint8(class_index)
    if top <= n_classes:
        return m.astype(np.uint8)
    if n_classes == 1:
        if top > 255:
            msg = f"mask {path} has values up to {top}; binary masks are 0/1 or 0/255"
            raise DatasetError(msg)
        return (m >= MASK_THRESHOLD).astype(np.uint8)
    bad = [int(v) for v in values if v > n_classes][:8]
    msg = (
        f"mask {path} has values {bad} but the dataset has {n_classes} classes (indices "
        f"0..{n_classes}); multi-class masks hold class indices, not 0/255 (for a binary "
        f"0/255 mask, train a single 'defect' class)"
    )
    raise DatasetError(msg)


def load_image(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode ``path`` as inference does; errors name the file."""
    try:
        return read_image(path, max_pixels=max_pixels)
    except (ImageDecodeError, OSError) as exc:
        msg = f"cannot use training image {path}: {exc}"
        raise DatasetError(msg) from exc


def split_dataset(
    index: DatasetIndex, *, val_fraction: float = 0.2, seed: int = 0
) -> tuple[tuple[Sample, ...], tuple[Sample, ...]]:
    """Deterministic train/validation split, stratified by folder (class).

    Within each group samples are ordered by a hash of ``seed`` and their key, and the first
    ``round(val_fraction * n)`` go to validation (at least one when the group has two or more
    samples). The split does not depend on listing order, and adding files moves no other file.
    """
    if not 0.0 <= val_fraction < 1.0:
        msg = f"val_fraction must be in [0, 1), got {val_fraction}"
        raise DatasetError(msg)
    by_group: dict[str, list[Sample]] = {}
    for s in index.samples:
        by_group.setdefault(s.group, []).append(s)
    train: list[Sample] = []
    val: list[Sample] = []
    for group in sorted(by_group):
        items = sorted(by_group[group], key=lambda s: _hash_key(seed, s.key))
        n_val = round(val_fraction * len(items))
        if val_fraction > 0 and n_val == 0 and len(items) >= 2:
            n_val = 1
        val.extend(items[:n_val])
        train.extend(items[n_val:])
    return tuple(sorted(train, key=lambda s: s.key)), tuple(sorted(val, key=lambda s: s.key))


def _hash_key(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def dataset_fingerprint(index: DatasetIndex) -> str:
    """sha256 over the layout, class names and every file's relative path and bytes."""
    h = hashlib.sha256()
    h.update(f"{index.layout}|{','.join(index.class_names)}|".encode())
    for s in sorted(index.samples, key=lambda s: s.key):
        for p in (s.image, s.mask):
            if p is None:
                h.update(b"-|")
                continue
            h.update(p.relative_to(index.root).as_posix().encode() + b"|")
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()
