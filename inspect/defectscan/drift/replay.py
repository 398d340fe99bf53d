"""Building a reference and replaying images, from a folder or from the image archive.

What ``defectscan drift reference build`` and ``defectscan drift replay`` run: records from a
folder (capture time: the file's modification time) or from the archive (the stored
inspections of a line and camera, their bytes by sha256), through an inspector with drift
features on, then :func:`~defectscan.drift.fit_reference` or the windows of
:class:`~defectscan.drift.CameraDrift`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from defectscan.drift.alerts import CameraDrift, DriftState, WindowCollector, WindowResult
from defectscan.drift.reference import DriftError, DriftReference, fit_reference
from defectscan.drift.tracking import inspect_rows, output_names
from defectscan.pipeline import Inspector
from defectscan.sources.base import ImageRecord

__all__ = [
    "DEFAULT_REFERENCE_IMAGES",
    "archive_records",
    "build_reference",
    "folder_records",
    "replay",
]

#: Images a reference is built from by default (several shifts of a camera).
DEFAULT_REFERENCE_IMAGES = 3000

_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def folder_records(
    folder: Path, *, line: str | None, camera: str | None, limit: int | None = None
) -> list[ImageRecord]:
    """The folder's images (recursively) in capture order (modification time, then name)."""
    if not folder.is_dir():
        msg = f"{folder} is not a folder of images"
        raise DriftError(msg)
    files = [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in _SUFFIXES]
    files.sort(key=lambda p: (p.stat().st_mtime, str(p)))
    if limit is not None:
        files = files[-limit:]
    return [
        ImageRecord(
            id=str(p),
            uri=p.as_uri(),
            path=p,
            line=line,
            camera=camera,
            captured_at=datetime.fromtimestamp(p.stat().st_mtime, UTC),
        )
        for p in files
    ]


def archive_records(
    *, session: Any, archive: Any, line: str | None, camera: str | None, limit: int
) -> list[ImageRecord]:
    """A camera's newest stored inspections whose images the archive still holds."""
    from defectscan.store.drift_rows import archived_inspections

    out = []
    for sha, when, uri in archived_inspections(
        session=session, line=line, camera=camera, limit=limit
    ):
        if not archive.has(sha):
            continue
        out.append(
            ImageRecord(
                id=sha,
                uri=uri,
                data=archive.get(sha),
                line=line,
                camera=camera,
                captured_at=when,
            )
        )
    return out


def build_reference(
    inspector: Inspector,
    records: list[ImageRecord],
    *,
    k: int = 64,
    min_images: int = DEFAULT_REFERENCE_IMAGES,
    seed: int = 0,
) -> DriftReference:
    """A reference from ``records`` (at least ``min_images`` inspected, time-ordered)."""
    if len(records) < min_images:
        msg = (
            f"{len(records)} images found, a reference needs at least {min_images}: give "
            "more images (several shifts) or lower --min-images"
        )
        raise DriftError(msg)
    rows = inspect_rows(inspector, records)
    return fit_reference(
        rows,
        output_names=output_names(inspector.spec.class_names),
        k=k,
        seed=seed,
        min_images=min(min_images, len(rows)),
    )


def replay(
    inspector: Inspector,
    records: list[ImageRecord],
    reference: DriftReference,
    *,
    min_images: int = 200,
    on_window: Callable[[WindowResult, DriftState], None] | None = None,
) -> list[WindowResult]:
    """``records`` through windows against ``reference``; the last, partial window included."""
    rows = inspect_rows(inspector, records)
    cam = CameraDrift(reference)
    collector = WindowCollector(min_images=min_images)
    windows = collector.add(rows)
    last = collector.flush()
    if last is not None and len(last) >= min(min_images, 50):
        windows.append(last)
    out = []
    state: DriftState = "ok"
    for w in windows:
        result = cam.evaluate(w)
        if on_window is not None:
            on_window(result, state)
        state = result.state
        out.append(result)
    return out
