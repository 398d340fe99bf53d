"""Idempotent writes of inspections: batches, single records and rejected inputs.

Every function takes a keyword-only ``session`` and never commits: the caller owns the
transaction (wrap writer calls in :func:`defectscan.store.db.retrying`). Writes are idempotent
on the delivery: ``(source_key, image sha256)`` for a record a source delivered, under any
model version, and ``(image sha256, model version)`` for one without a source identity. A
repeated delivery inserts nothing and updates nothing, whether it comes again in a later batch,
twice in the same batch, under another model after a switch, or from a second writer at the
same moment; two deliveries of identical bytes (two parts that look alike) are two rows.
:func:`committed_deliveries` finds the rows of deliveries that come back, before they are
inspected again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, insert, select
from sqlalchemy.orm import Session

from defectscan.errors import StoreError
from defectscan.store._sql import _aware, _dialect, _insert
from defectscan.store.records import DefectRecord, InspectionRecord
from defectscan.store.schema import (
    INSPECTION_STATUSES,
    VERDICTS,
    Defect,
    Inspection,
    ModelVersion,
    utcnow,
)

__all__ = [
    "CommittedDelivery",
    "SaveResult",
    "committed_deliveries",
    "record_rejection",
    "rejection_record",
    "save_inspection",
    "save_inspections",
]

_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class SaveResult:
    """What a save did: rows newly inserted, and records that were already stored."""

    inserted: int
    duplicates: int


def _check_record(record: InspectionRecord) -> None:
    sha = record.sha256
    if len(sha) != 64 or not set(sha) <= _HEX:
        msg = (
            f"sha256 {sha!r} of {record.uri} is not 64 lowercase hex digits; "
            "pass hashlib.sha256(data).hexdigest()"
        )
        raise StoreError(msg)
    if record.status not in INSPECTION_STATUSES:
        msg = f"status {record.status!r} of {record.uri}: expected one of {INSPECTION_STATUSES}"
        raise StoreError(msg)
    if record.status == "ok" and record.verdict not in VERDICTS:
        msg = f"inspection of {record.uri} has status 'ok' but verdict {record.verdict!r}"
        raise StoreError(msg)
    if record.status == "rejected" and (record.verdict is not None or not record.error_kind):
        msg = (
            f"rejected input {record.uri} needs verdict None and an error_kind "
            f"(got verdict={record.verdict!r}, error_kind={record.error_kind!r})"
        )
        raise StoreError(msg)
    for name in ("captured_at", "received_at", "finished_at"):
        _aware(getattr(record, name), f"{name} of {record.uri}")


def _total_ms(record: InspectionRecord, finished_at: datetime) -> float | None:
    total = record.timings_ms.get("total")
    if total is not None:
        return float(total)
    if record.received_at is not None:
        return (finished_at - record.received_at).total_seconds() * 1000.0
    return None


def _inspection_row(record: InspectionRecord, model_version_id: int) -> dict[str, Any]:
    finished_at = record.finished_at or utcnow()
    return {
        "sha256": record.sha256,
        "uri": record.uri,
        "model_version_id": model_version_id,
        "status": record.status,
        "verdict": record.verdict,
        "camera": record.camera,
        "line": record.line,
        "width": record.width,
        "height": record.height,
        "channels": record.channels,
        "captured_at": record.captured_at,
        "received_at": record.received_at,
        "finished_at": finished_at,
        "timings_ms": {k: float(v) for k, v in record.timings_ms.items()},
        "total_ms": _total_ms(record, finished_at),
        "n_defects": len(record.defects),
        "error_kind": record.error_kind,
        "error_message": record.error_message,
        "mask_path": record.mask_path,
        "overlay_path": record.overlay_path,
        "source": record.source,
        "source_id": record.source_id,
        "source_key": record.source_key,
    }


def _defect_row(defect: DefectRecord, inspection_id: int) -> dict[str, Any]:
    x, y, w, h = defect.bbox
    cx, cy = defect.centroid
    return {
        "inspection_id": inspection_id,
        "class_index": int(defect.class_index),
        "class_name": defect.class_name,
        "area": int(defect.area),
        "bbox_x": int(x),
        "bbox_y": int(y),
        "bbox_w": int(w),
        "bbox_h": int(h),
        "centroid_x": float(cx),
        "centroid_y": float(cy),
        "perimeter": float(defect.perimeter),
        "mean_score": float(defect.mean_score),
        "max_score": float(defect.max_score),
        "polygon": [[int(px), int(py)] for px, py in defect.polygon],
    }


def _model_version_ids(session: Session, versions: Iterable[str]) -> dict[str, int]:
    wanted = sorted(set(versions))
    rows = session.execute(
        select(ModelVersion.version, ModelVersion.id).where(ModelVersion.version.in_(wanted))
    ).all()
    found = {row.version: row.id for row in rows}
    missing = [v for v in wanted if v not in found]
    if missing:
        msg = (
            f"model version(s) {', '.join(missing)} not registered in the results database; "
            "call ensure_model_version(...) for the loaded checkpoint before saving inspections"
        )
        raise StoreError(msg)
    return found


def save_inspections(records: Sequence[InspectionRecord], *, session: Session) -> SaveResult:
    """Store a batch of inspections with their defects; skip those already stored.

    One ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` for the inspections of the batch
    (records repeated inside the batch count once), then one bulk insert for the defects of
    the newly inserted ones. Rows go in sorted by key, so concurrent writers of overlapping
    batches take their row locks in the same order and cannot deadlock.
    """
    if not records:
        return SaveResult(inserted=0, duplicates=0)
    # The identity of a row: a source's delivery whatever model looked at it, else the bytes
    # under one model (see the module docstring).
    unique: dict[tuple[str | None, str, str | None], InspectionRecord] = {}
    for record in records:
        _check_record(record)
        identity = (
            (record.source_key, record.sha256, None)
            if record.source_key is not None
            else (None, record.sha256, record.model_version)
        )
        unique.setdefault(identity, record)
    version_ids = _model_version_ids(session, (r.model_version for r in unique.values()))
    by_key: dict[tuple[str | None, str, int], InspectionRecord] = {
        (rec.source_key, rec.sha256, version_ids[rec.model_version]): rec for rec in unique.values()
    }
    rows = [
        _inspection_row(by_key[key], key[2])
        for key in sorted(by_key, key=lambda k: (k[0] or "", k[2], k[1]))
    ]

    # executemany of one cached statement: SQLAlchemy's "insertmanyvalues" sends it as
    # multi-row INSERT ... RETURNING pages (one round trip per 1000 rows) without compiling a
    # new statement for every batch size, which costs more than the insert itself.
    # No conflict target: a row may collide on either unique index (the delivery, or the
    # bytes under one model for rows without a source identity), and either means "stored".
    table = cast(Table, Inspection.__table__)
    stmt = (
        _insert(session, table)
        .on_conflict_do_nothing()
        .returning(table.c.id, table.c.source_key, table.c.sha256, table.c.model_version_id)
    )
    inserted: dict[tuple[str | None, str, int], int] = {
        (key, sha, mv_id): id_ for id_, key, sha, mv_id in session.execute(stmt, rows)
    }

    defect_rows = [
        _defect_row(defect, inspection_id)
        for key, inspection_id in inserted.items()
        for defect in by_key[key].defects
    ]
    if defect_rows:
        _insert_defects(session, defect_rows)
    return SaveResult(inserted=len(inserted), duplicates=len(records) - len(inserted))


def _insert_defects(session: Session, rows: list[dict[str, Any]]) -> None:
    """Bulk insert defect rows in the session's transaction, the fastest way per dialect."""
    if _dialect(session) != "postgresql":
        # sqlite3's executemany runs in-process: no round trips to save.
        session.execute(insert(cast(Table, Defect.__table__)), rows)
        return
    # COPY streams all rows in one round trip; psycopg's executemany pays per-row overhead
    # that is most of the batch's time at 5 defects per image.
    import psycopg  # the PostgreSQL driver; only needed here

    columns = list(rows[0])
    dbapi = session.connection().connection.dbapi_connection
    if not isinstance(dbapi, psycopg.Connection):
        session.execute(insert(cast(Table, Defect.__table__)), rows)  # another driver
        return
    with (
        dbapi.cursor() as cursor,
        cursor.copy(f"COPY defects ({', '.join(columns)}) FROM STDIN") as copy,
    ):
        for row in rows:
            copy.write_row([json.dumps(row[c]) if c == "polygon" else row[c] for c in columns])


def save_inspection(record: InspectionRecord, *, session: Session) -> SaveResult:
    """Store one inspection with its defects; a no-op if it is already stored."""
    return save_inspections([record], session=session)


@dataclass(frozen=True, slots=True)
class CommittedDelivery:
    """The committed row of a delivery that came back: enough to settle it again."""

    source_key: str
    sha256: str
    status: str
    error_kind: str | None
    error_message: str | None
    model_version: str


def committed_deliveries(
    source_keys: Iterable[str], *, session: Session
) -> dict[str, list[CommittedDelivery]]:
    """The rows already committed for these source identities, under any model version.

    Keyed by source key; a key maps to several rows only when the source reused an identity
    for other bytes (the caller compares the sha256).
    """
    keys = sorted(set(source_keys))
    found: dict[str, list[CommittedDelivery]] = {}
    # A bounded IN list per query: a large batch must not build one huge statement.
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        result = session.execute(
            select(
                Inspection.source_key,
                Inspection.sha256,
                Inspection.status,
                Inspection.error_kind,
                Inspection.error_message,
                ModelVersion.version,
            )
            .join(ModelVersion, ModelVersion.id == Inspection.model_version_id)
            .where(Inspection.source_key.in_(chunk))
        )
        for key, sha, status, kind, message, version in result:
            assert key is not None  # the query selects keyed rows only
            found.setdefault(key, []).append(
                CommittedDelivery(
                    source_key=key,
                    sha256=sha,
                    status=status,
                    error_kind=kind,
                    error_message=message,
                    model_version=version,
                )
            )
    return found


def rejection_record(
    *,
    sha256: str,
    uri: str,
    model_version: str,
    error_kind: str,
    error_message: str,
    camera: str | None = None,
    line: str | None = None,
    source: str | None = None,
    source_id: str | None = None,
    source_key: str | None = None,
    received_at: datetime | None = None,
    finished_at: datetime | None = None,
) -> InspectionRecord:
    """The :class:`InspectionRecord` of an input that could not be inspected."""
    return InspectionRecord(
        sha256=sha256,
        uri=uri,
        model_version=model_version,
        status="rejected",
        verdict=None,
        camera=camera,
        line=line,
        received_at=received_at,
        finished_at=finished_at,
        error_kind=error_kind,
        error_message=error_message,
        source=source,
        source_id=source_id,
        source_key=source_key,
    )


def record_rejection(
    *,
    session: Session,
    sha256: str,
    uri: str,
    model_version: str,
    error_kind: str,
    error_message: str,
    camera: str | None = None,
    line: str | None = None,
    source: str | None = None,
    source_id: str | None = None,
    source_key: str | None = None,
    received_at: datetime | None = None,
    finished_at: datetime | None = None,
) -> SaveResult:
    """Record an input that was refused (bad bytes, too large ...), idempotently.

    ``sha256`` is of the input's bytes as received, so a file rejected twice (say after a
    crash before it was moved to ``rejected/``) is still one row.
    """
    record = rejection_record(
        sha256=sha256,
        uri=uri,
        model_version=model_version,
        error_kind=error_kind,
        error_message=error_message,
        camera=camera,
        line=line,
        source=source,
        source_id=source_id,
        source_key=source_key,
        received_at=received_at,
        finished_at=finished_at,
    )
    return save_inspections([record], session=session)
