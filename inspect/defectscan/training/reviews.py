"""Operator reviews become training data for the next retrain.

A review says whether an inspection's result was right (``confirm``) or wrong (``reject``),
optionally with a corrected mask. :func:`export_review_dataset` turns reviews into an
``images-masks`` dataset folder that :func:`defectscan.training.train` reads:

- a corrected mask wins, whatever the verdict;
- ``confirm``: the model's own defects (their polygons, filled with their class index) are the
  mask; a confirmed pass is a defect-free example;
- ``reject`` without a mask on a ``fail``: a false reject, so the image is defect-free;
- ``reject`` without a mask on a ``pass``: a missed defect nobody outlined, which cannot be
  used for segmentation; it is skipped and reported.

The image is read from the archive by its sha256 (the line monitor keeps failed parts, close
calls and a share of passes there before it acknowledges them), or from the file at the
inspection's ``file://`` URI if it still holds the same bytes; otherwise the review is skipped
and reported.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import cv2
import numpy as np
from sqlalchemy.orm import Session

from defectscan.archive import ArchiveError, ImageArchive, default_archive, image_suffix
from defectscan.errors import DatasetError, StoreError
from defectscan.store import add_review, reviews_for_training
from defectscan.store.schema import Inspection, Review
from defectscan.training.datasets import load_mask

__all__ = ["ReviewExport", "export_review_dataset", "record_review"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReviewExport:
    """What :func:`export_review_dataset` wrote and what it had to leave out (and why)."""

    root: Path
    class_names: tuple[str, ...]
    written: tuple[Path, ...]
    review_ids: tuple[int, ...]
    skipped: dict[int, str] = field(default_factory=dict)


def record_review(
    inspection_id: int,
    verdict: str,
    *,
    session: Session,
    mask: Path | None = None,
    operator: str | None = None,
    note: str | None = None,
    store_dir: Path | None = None,
) -> Review:
    """Validate and store a review; a corrected mask is copied under ``store_dir`` (var/reviews)."""
    if verdict not in ("confirm", "reject"):
        msg = f"--verdict must be confirm or reject, got {verdict!r}"
        raise StoreError(msg)
    inspection = session.get(Inspection, inspection_id)
    if inspection is None:
        msg = f"inspection {inspection_id} does not exist; cannot review it"
        raise StoreError(msg)
    kept: str | None = None
    if mask is not None:
        names = tuple(inspection.model_version.class_names)
        shape = (inspection.height or 0, inspection.width or 0)
        if not all(shape):
            data, _ = _inspected_bytes(inspection, default_archive())
            img = (
                None
                if data is None
                else cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            )
            if img is None:
                msg = f"inspection {inspection_id} has no recorded size and its image is gone"
                raise DatasetError(msg)
            shape = (int(img.shape[0]), int(img.shape[1]))
        load_mask(Path(mask), shape=shape, n_classes=len(names))  # raises with a clear reason
        if store_dir is None:
            from defectscan.config import get_settings

            store_dir = get_settings().var_dir / "reviews"
        store_dir.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(Path(mask).read_bytes()).hexdigest()[:12]
        target = store_dir / f"inspection{inspection_id}_{digest}.png"
        shutil.copyfile(mask, target)
        kept = str(target.resolve())
    decision: Literal["confirm", "reject"] = "confirm" if verdict == "confirm" else "reject"
    return add_review(
        session=session,
        inspection_id=inspection_id,
        decision=decision,
        operator=operator,
        corrected_mask_path=kept,
        note=note,
    )


def _uri_path(uri: str) -> Path | None:
    """The local file a ``file://`` URI (or a plain path) names; None for other schemes."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(url2pathname(unquote(parsed.path)))
    if parsed.scheme == "" and uri:
        return Path(uri)
    return None


def _inspected_bytes(inspection: Inspection, archive: ImageArchive) -> tuple[bytes | None, str]:
    """The exact bytes that were inspected: from the archive, else from the source file."""
    if archive.has(inspection.sha256):
        try:
            return archive.get(inspection.sha256), ""
        except ArchiveError as exc:
            return None, str(exc)
    path = _uri_path(inspection.uri)
    if path is None or not path.is_file():
        return None, (
            f"image {inspection.sha256[:12]} is not in the archive {archive.root} and its "
            f"source {inspection.uri} is gone"
        )
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != inspection.sha256:
        return None, f"image {inspection.uri} changed since it was inspected (sha256 differs)"
    return data, ""


def _rasterise(inspection: Inspection, shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    for d in inspection.defects:
        poly = np.asarray(d.polygon, dtype=np.int32).reshape(-1, 2) if d.polygon else None
        if poly is not None and len(poly) >= 3:
            cv2.fillPoly(mask, [poly], int(d.class_index))
        else:
            # No outline stored: the bounding box is the best we have.
            x, y, w, h = d.bbox
            mask[y : y + h, x : x + w] = d.class_index
    return mask


def export_review_dataset(
    root: Path,
    *,
    session: Session,
    class_names: Sequence[str] | None = None,
    unused_only: bool = True,
    archive: ImageArchive | None = None,
    inspection_ids: Collection[int] | None = None,
) -> ReviewExport:
    """Write reviewed images and their masks as ``root/images`` + ``root/masks`` + classes.txt.

    Images come from the archive by sha256 (``archive``, default ``var/archive``): the source
    file is usually gone by then. A file still at the inspection's ``file://`` URI with the
    same bytes is used when the archive does not hold the image. Mark the returned
    ``review_ids`` as used (``store.mark_reviews_used``) once the training run that consumed
    them has succeeded. ``inspection_ids``: only the reviews of these inspections.
    """
    root = Path(root)
    archive = archive or default_archive()
    reviews = reviews_for_training(session=session, unused_only=unused_only)
    if inspection_ids is not None:
        wanted = set(inspection_ids)
        reviews = [r for r in reviews if r.inspection_id in wanted]
    names: tuple[str, ...] | None = tuple(class_names) if class_names else None
    written: list[Path] = []
    used: list[int] = []
    skipped: dict[int, str] = {}
    # The newest review of an inspection wins: an operator may correct an earlier review.
    latest: dict[int, Review] = {}
    for r in reviews:
        latest[r.inspection_id] = r
    for r in latest.values():
        insp = r.inspection
        model_names = tuple(insp.model_version.class_names)
        if names is None:
            names = model_names
        if model_names != names:
            skipped[r.id] = f"model classes {model_names} differ from the export's {names}"
            continue
        data, why = _inspected_bytes(insp, archive)
        if data is None:
            skipped[r.id] = why
            continue
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None:
            skipped[r.id] = f"image {insp.uri} cannot be decoded"
            continue
        shape = (int(img.shape[0]), int(img.shape[1]))
        try:
            if r.corrected_mask_path:
                mask = load_mask(Path(r.corrected_mask_path), shape=shape, n_classes=len(names))
            elif r.decision == "confirm":
                mask = _rasterise(insp, shape)
            elif insp.verdict == "fail":
                mask = np.zeros(shape, np.uint8)
            else:
                skipped[r.id] = "rejected pass without a corrected mask: the defect is not outlined"
                continue
        except (DatasetError, OSError) as exc:
            skipped[r.id] = str(exc)
            continue
        stem = f"inspection{insp.id}_{insp.sha256[:12]}"
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        out_img = root / "images" / f"{stem}{image_suffix(data)}"
        out_img.write_bytes(data)
        if not cv2.imwrite(str(root / "masks" / f"{stem}.png"), mask):
            msg = f"cannot write mask under {root / 'masks'}"
            raise DatasetError(msg)
        written.append(out_img)
        used.append(r.id)
    # Superseded reviews of the same inspection were read too: they count as used.
    superseded = [r.id for r in reviews if latest[r.inspection_id].id in used and r.id not in used]
    if names:
        root.mkdir(parents=True, exist_ok=True)
        (root / "classes.txt").write_text("\n".join(names) + "\n")
    for rid, why in skipped.items():
        logger.warning("review %d not exported: %s", rid, why)
    return ReviewExport(
        root=root,
        class_names=names or (),
        written=tuple(written),
        review_ids=tuple(used + superseded),
        skipped=skipped,
    )
