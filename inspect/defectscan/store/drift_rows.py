"""Drift references and windows in the database (tables ``drift_references``, ``drift_windows``).

Plain dicts in and out: the statistics live one floor up, in :mod:`defectscan.drift`, which
converts its :class:`~defectscan.drift.DriftReference` with ``to_dict`` / ``from_dict``. A
warning or critical window also gets an ``events`` row (kind ``drift``), where operators look
for what happened to a line.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from defectscan.store.operations import record_event
from defectscan.store.schema import DriftReferenceRow, DriftWindowRow, utcnow

__all__ = [
    "archived_inspections",
    "has_reference",
    "latest_drift_windows",
    "latest_reference",
    "save_drift_window",
    "save_reference",
]

_COLUMNS = ("k", "mean", "components", "whitening", "thresholds", "n_images")


def save_reference(
    reference: dict[str, Any],
    *,
    session: Session,
    model_version: str,
    line: str | None,
    camera: str | None,
    built_from: datetime | None = None,
    built_to: datetime | None = None,
) -> int:
    """Store a reference (``DriftReference.to_dict()``); returns its id. The newest one is used."""
    details = {k: v for k, v in reference.items() if k not in _COLUMNS}
    row = DriftReferenceRow(
        model_version=model_version,
        line=line,
        camera=camera,
        k=int(reference["k"]),
        mean=reference["mean"],
        components=reference["components"],
        whitening=reference["whitening"],
        thresholds=reference["thresholds"],
        details=details,
        n_images=int(reference["n_images"]),
        built_from=built_from,
        built_to=built_to,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return int(row.id)


def _same(column: Any, value: str | None) -> Any:
    return column.is_(None) if value is None else column == value


def has_reference(*, session: Session, model_version: str) -> bool:
    """Whether any camera has a reference for ``model_version``."""
    found = session.scalars(
        select(DriftReferenceRow.id)
        .where(DriftReferenceRow.model_version == model_version)
        .limit(1)
    ).first()
    return found is not None


def latest_reference(
    *, session: Session, model_version: str, line: str | None, camera: str | None
) -> tuple[int, dict[str, Any]] | None:
    """The newest reference of a model version and camera: ``(id, to_dict() form)``."""
    row = session.scalars(
        select(DriftReferenceRow)
        .where(
            DriftReferenceRow.model_version == model_version,
            _same(DriftReferenceRow.line, line),
            _same(DriftReferenceRow.camera, camera),
        )
        .order_by(DriftReferenceRow.created_at.desc(), DriftReferenceRow.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    d = dict(row.details)
    d.update(
        k=row.k,
        mean=row.mean,
        components=row.components,
        whitening=row.whitening,
        thresholds=row.thresholds,
        n_images=row.n_images,
    )
    return int(row.id), d


def save_drift_window(
    *,
    session: Session,
    line: str | None,
    camera: str | None,
    model_version: str,
    reference_id: int | None,
    window_start: datetime,
    window_end: datetime,
    n: int,
    statistics: dict[str, Any],
    thresholds: dict[str, Any],
    state: str,
    hints: list[str],
    previous_state: str | None = None,
) -> DriftWindowRow:
    """Store a closed window; a warning or critical one also records a ``drift`` event.

    An event is written when the state rises (ok -> warning, warning -> critical), not for
    every window of a long alert: ``previous_state`` is the camera's state before this window.
    """
    row = DriftWindowRow(
        line=line,
        camera=camera,
        model_version=model_version,
        reference_id=reference_id,
        window_start=window_start,
        window_end=window_end,
        n=n,
        statistics=statistics,
        thresholds=thresholds,
        state=state,
        hints=list(hints),
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    rank = {"ok": 0, "warning": 1, "critical": 2}
    if state != "ok" and rank[state] > rank.get(previous_state or "ok", 0):
        where = f"line {line or '-'} camera {camera or '-'}"
        record_event(
            session=session,
            kind="drift",
            level=state,
            line=line,
            model_version=model_version,
            message=f"drift {state} on {where}: {'; '.join(hints) or 'statistics moved'}",
            details={
                "camera": camera,
                "window_id": int(row.id),
                "over": statistics.get("over", {}),
                "hints": list(hints),
            },
        )
    return row


def latest_drift_windows(
    *, session: Session, line: str | None = None, per_camera: int = 1
) -> list[DriftWindowRow]:
    """The newest ``per_camera`` windows of every (line, camera), newest camera first."""
    stmt = select(DriftWindowRow)
    if line is not None:
        stmt = stmt.where(DriftWindowRow.line == line)
    rows = session.scalars(
        stmt.order_by(DriftWindowRow.window_end.desc(), DriftWindowRow.id.desc()).limit(5000)
    )
    seen: dict[tuple[str | None, str | None], int] = {}
    out = []
    for row in rows:
        key = (row.line, row.camera)
        if seen.get(key, 0) < per_camera:
            seen[key] = seen.get(key, 0) + 1
            out.append(row)
    return out


def archived_inspections(
    *, session: Session, line: str | None, camera: str | None, limit: int
) -> list[tuple[str, datetime | None, str]]:
    """``(sha256, captured_at, uri)`` of a camera's newest inspected images, oldest first.

    One entry per image (the newest row of each sha256), for building a drift reference or
    replaying stored images from the archive.
    """
    from defectscan.store.schema import Inspection

    stmt = select(Inspection.sha256, Inspection.captured_at, Inspection.uri).where(
        Inspection.status == "ok",
        _same(Inspection.line, line),
        _same(Inspection.camera, camera),
    )
    rows = session.execute(
        stmt.order_by(Inspection.captured_at.desc(), Inspection.id.desc()).limit(limit * 2)
    ).all()
    seen: set[str] = set()
    out: list[tuple[str, datetime | None, str]] = []
    for sha, when, uri in rows:
        if sha in seen:
            continue
        seen.add(sha)
        out.append((sha, when, uri))
        if len(out) >= limit:
            break
    return out[::-1]
