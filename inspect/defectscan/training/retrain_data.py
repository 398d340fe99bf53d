"""What a retrain learns from and is judged on: the fixed holdout and the training set.

- :func:`ensure_holdout` chooses the fixed holdout once (a share of the base dataset ranked by
  a hash of each image's bytes, with at least one defective and one good image where the base
  has them) and keeps it under ``holdout_dir`` with a manifest and its fingerprint; every later
  retrain is gated on the same images.
- :func:`build_training_set` writes the base dataset (less the holdout) plus the operators'
  reviews from the archive into one images/masks folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from defectscan.archive import ImageArchive
from defectscan.errors import ConfigError, DatasetError

__all__ = ["Holdout", "build_training_set", "ensure_holdout"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Holdout:
    """The fixed holdout: where it is, what it holds, and its fingerprint."""

    path: Path
    fingerprint: str
    n_images: int
    n_defective: int
    sha256: frozenset[str]
    created_at: str

    def stats(self) -> dict[str, Any]:
        """What the training run records about it."""
        return {
            "path": str(self.path),
            "fingerprint": self.fingerprint,
            "n_images": self.n_images,
            "n_defective": self.n_defective,
            "created_at": self.created_at,
        }


def _sha_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _unit(sha: str) -> float:
    return int(sha[:13], 16) / float(1 << 52)


def _base_samples(base: Path) -> tuple[tuple[str, ...], list[tuple[Path, Path, str]]]:
    from defectscan.training.datasets import scan_dataset

    index = scan_dataset(base, layout="images-masks")
    out = []
    for s in index.samples:
        if s.mask is None:
            msg = f"{s.image} has no mask; the base dataset needs one per image"
            raise DatasetError(msg)
        out.append((s.image, s.mask, _sha_file(s.image)))
    return tuple(index.class_names), out


def _mask_has_defect(path: Path) -> bool:
    import cv2

    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return mask is not None and bool(mask.any())


def ensure_holdout(holdout_dir: Path, *, base: Path | None, fraction: float = 0.2) -> Holdout:
    """The fixed holdout: read it back, or choose it once from ``base`` and keep it on disk.

    Images are chosen by the hash of their bytes (at least one defective and one good image
    where the base has them), so the choice does not depend on file names or order.
    """
    holdout_dir = Path(holdout_dir)
    manifest = holdout_dir / "manifest.json"
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        missing = [f for f in data["files"] if not (holdout_dir / "images" / f).is_file()]
        if missing:
            msg = (
                f"holdout {holdout_dir} lost {len(missing)} image(s) (e.g. {missing[0]}): "
                "restore them, or delete the folder to choose a new holdout (scores of older "
                "runs then no longer compare)"
            )
            raise DatasetError(msg)
        return Holdout(
            path=holdout_dir,
            fingerprint=data["fingerprint"],
            n_images=len(data["files"]),
            n_defective=int(data["n_defective"]),
            sha256=frozenset(data["sha256"]),
            created_at=data["created_at"],
        )
    if base is None:
        msg = (
            "no holdout yet and no base dataset to choose one from: set retrain_data "
            "(DEFECTSCAN_RETRAIN_DATA) or pass --data DIR (an images/ + masks/ folder)"
        )
        raise ConfigError(msg)
    if not 0.0 < fraction < 1.0:
        msg = f"holdout fraction must be in (0, 1), got {fraction}"
        raise ConfigError(msg)
    names, samples = _base_samples(base)
    if len(samples) < 4:
        msg = f"base dataset {base} has {len(samples)} images; a retrain needs at least 4"
        raise DatasetError(msg)
    ranked = sorted(samples, key=lambda s: _unit(s[2]))
    n = max(1, round(fraction * len(samples)))
    chosen = ranked[:n]
    defective = [s for s in ranked if _mask_has_defect(s[1])]
    good = [s for s in ranked if s not in defective]
    for group in (defective, good):
        if group and not any(s in chosen for s in group):
            chosen.append(group[0])
    tmp = holdout_dir.with_name(holdout_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    (tmp / "masks").mkdir(parents=True)
    files = []
    for image, mask, _sha in chosen:
        shutil.copyfile(image, tmp / "images" / image.name)
        shutil.copyfile(mask, tmp / "masks" / f"{image.stem}{mask.suffix}")
        files.append(image.name)
    (tmp / "classes.txt").write_text("\n".join(names) + "\n")
    from defectscan.training.datasets import dataset_fingerprint, scan_dataset

    fingerprint = dataset_fingerprint(scan_dataset(tmp, layout="images-masks"))
    created = datetime.now(UTC).isoformat(timespec="seconds")
    record = {
        "created_at": created,
        "base": str(base),
        "fraction": fraction,
        "files": files,
        "sha256": [s[2] for s in chosen],
        "n_defective": sum(_mask_has_defect(s[1]) for s in chosen),
        "fingerprint": fingerprint,
    }
    (tmp / "manifest.json").write_text(json.dumps(record, indent=1))
    holdout_dir.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, holdout_dir)
    logger.info("chose a fixed holdout of %d images under %s", len(chosen), holdout_dir)
    return ensure_holdout(holdout_dir, base=None)


def build_training_set(
    out: Path,
    *,
    session: Session,
    holdout: Holdout,
    base: Path | None,
    archive: ImageArchive | None,
) -> tuple[dict[str, Any], tuple[int, ...]]:
    """Write base-minus-holdout + reviewed inspections to ``out``; (stats, review ids used)."""
    from defectscan.training.reviews import export_review_dataset

    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir(parents=True)
    names: tuple[str, ...] | None = None
    n_base = 0
    held = 0
    if base is not None:
        names, samples = _base_samples(base)
        for image, mask, sha in samples:
            if sha in holdout.sha256:
                held += 1
                continue
            shutil.copyfile(image, out / "images" / f"base_{image.name}")
            shutil.copyfile(mask, out / "masks" / f"base_{image.stem}{mask.suffix}")
            n_base += 1
    if names is None:
        names = _holdout_classes(holdout)
    export = export_review_dataset(
        out / "_reviews", session=session, class_names=names, archive=archive
    )
    n_reviews = 0
    in_holdout = []
    for img in export.written:
        sha = _sha_file(img)
        if sha in holdout.sha256:
            in_holdout.append(img.name)
            continue
        mask = export.root / "masks" / f"{img.stem}.png"
        shutil.copyfile(img, out / "images" / f"review_{img.name}")
        shutil.copyfile(mask, out / "masks" / f"review_{img.stem}.png")
        n_reviews += 1
    shutil.rmtree(out / "_reviews", ignore_errors=True)
    (out / "classes.txt").write_text("\n".join(names) + "\n")
    if n_base + n_reviews < 2:
        msg = (
            f"only {n_base + n_reviews} training image(s) outside the holdout: add a base "
            "dataset (retrain_data) or more reviews"
        )
        raise DatasetError(msg)
    stats = {
        "n_base": n_base,
        "n_base_in_holdout": held,
        "n_reviews": n_reviews,
        "n_reviews_skipped": len(export.skipped),
        "reviews_skipped": {str(k): v for k, v in export.skipped.items()},
        "reviews_in_holdout": in_holdout,
        "class_names": list(names),
        "holdout": holdout.stats(),
        "base": str(base) if base else None,
    }
    return stats, export.review_ids


def _holdout_classes(holdout: Holdout) -> tuple[str, ...]:
    path = holdout.path / "classes.txt"
    return tuple(x.strip() for x in path.read_text().splitlines() if x.strip())


# --------------------------------------------------------------------------- the run
