"""Idempotent writes and the queries users run against the results database.

Every function takes a keyword-only ``session`` and never commits: the caller owns the
transaction (wrap writer calls in :func:`defectscan.store.db.retrying`). Writes of inspections
are idempotent on ``(image sha256, model version)``: a repeated delivery inserts nothing and
updates nothing, whether it comes again in a later batch, twice in the same batch, or from a
second writer at the same moment.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any, Literal, TypedDict, cast
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Table, and_, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, selectinload

from defectscan.errors import StoreError
from defectscan.store.records import DefectRecord, InspectionRecord
from defectscan.store.schema import (
    INSPECTION_STATUSES,
    MODEL_STATUSES,
    REVIEW_DECISIONS,
    TRAINING_STATUSES,
    TRAINING_TRIGGERS,
    VERDICTS,
    Defect,
    Event,
    Inspection,
    ModelVersion,
    Review,
    RunMetric,
    TrainingRun,
    utcnow,
)

__all__ = [
    "DEFAULT_SHIFTS",
    "DefectRate",
    "LatencyStats",
    "SaveResult",
    "ShiftYield",
    "add_review",
    "create_training_run",
    "defect_rates",
    "ensure_model_version",
    "finish_training_run",
    "get_champion",
    "get_inspection",
    "get_model_version",
    "latency_percentiles",
    "list_model_versions",
    "mark_reviews_used",
    "recent_events",
    "recent_inspections",
    "record_event",
    "record_rejection",
    "rejection_record",
    "reviews_for_training",
    "save_inspection",
    "save_inspections",
    "save_run_metrics",
    "set_model_status",
    "start_training_run",
    "yield_by_shift",
]

DEFAULT_SHIFTS: tuple[tuple[int, int], ...] = ((6, 14), (14, 22), (22, 6))
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class SaveResult:
    """What a save did: rows newly inserted, and records that were already stored."""

    inserted: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class DefectRate:
    """Defects of one class in one UTC hour.

    ``rate`` is the share of the hour's inspections (status ok) with at least one defect of
    the class; ``defects`` counts regions, so one part can contribute several.
    """

    hour: datetime
    class_name: str
    defects: int
    affected: int
    inspections: int
    rate: float


@dataclass(frozen=True, slots=True)
class ShiftYield:
    """Pass/fail yield of one line in one shift (``shift_start`` in the requested zone)."""

    line: str | None
    shift: str
    shift_start: datetime
    inspected: int
    passed: int
    failed: int
    rejected: int
    yield_rate: float | None


class LatencyStats(TypedDict):
    """End-to-end latency (``timings_ms["total"]``) percentiles in milliseconds."""

    p50: float
    p95: float
    p99: float
    count: int


# --------------------------------------------------------------------------- helpers


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _insert(session: Session, entity: Any) -> Any:
    """The dialect's INSERT, which has ``on_conflict_do_nothing``/``_do_update``."""
    name = _dialect(session)
    if name == "postgresql":
        return postgresql.insert(entity)
    if name == "sqlite":
        return sqlite.insert(entity)
    msg = f"the results database supports SQLite and PostgreSQL, not {name!r}"
    raise StoreError(msg)


def _aware(value: datetime | None, what: str) -> datetime | None:
    if value is not None and value.tzinfo is None:
        msg = f"{what} is a naive datetime ({value.isoformat()}); pass a timezone-aware UTC one"
        raise StoreError(msg)
    return value


def _as_utc(value: Any) -> datetime:
    """A bucket value from either dialect (datetime, or SQLite's text) as aware UTC."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        msg = f"expected a datetime from the database, got {value!r}"
        raise StoreError(msg)
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _hour(session: Session, column: Any) -> ColumnElement[Any]:
    """``column`` truncated to the hour (UTC: make_engine pins PostgreSQL to UTC)."""
    if _dialect(session) == "postgresql":
        return func.date_trunc("hour", column)
    return func.strftime("%Y-%m-%d %H:00:00", column)


def _window(since: datetime, until: datetime | None) -> list[ColumnElement[bool]]:
    _aware(since, "since")
    _aware(until, "until")
    conditions = [Inspection.finished_at >= since]
    if until is not None:
        conditions.append(Inspection.finished_at < until)
    return conditions


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


# --------------------------------------------------------------------------- inspections


def save_inspections(records: Sequence[InspectionRecord], *, session: Session) -> SaveResult:
    """Store a batch of inspections with their defects; skip those already stored.

    One ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` for the inspections of the batch
    (records repeated inside the batch count once), then one bulk insert for the defects of
    the newly inserted ones. Rows go in sorted by key, so concurrent writers of overlapping
    batches take their row locks in the same order and cannot deadlock.
    """
    if not records:
        return SaveResult(inserted=0, duplicates=0)
    unique: dict[tuple[str, str], InspectionRecord] = {}
    for record in records:
        _check_record(record)
        unique.setdefault((record.sha256, record.model_version), record)
    version_ids = _model_version_ids(session, (v for _, v in unique))
    by_key = {(sha, version_ids[version]): rec for (sha, version), rec in unique.items()}
    rows = [
        _inspection_row(by_key[key], key[1]) for key in sorted(by_key, key=lambda k: (k[1], k[0]))
    ]

    # executemany of one cached statement: SQLAlchemy's "insertmanyvalues" sends it as
    # multi-row INSERT ... RETURNING pages (one round trip per 1000 rows) without compiling a
    # new statement for every batch size, which costs more than the insert itself.
    table = cast(Table, Inspection.__table__)
    stmt = (
        _insert(session, table)
        .on_conflict_do_nothing(index_elements=["sha256", "model_version_id"])
        .returning(table.c.id, table.c.sha256, table.c.model_version_id)
    )
    inserted: dict[tuple[str, int], int] = {
        (sha, mv_id): id_ for id_, sha, mv_id in session.execute(stmt, rows)
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
        received_at=received_at,
        finished_at=finished_at,
    )
    return save_inspections([record], session=session)


def recent_inspections(
    *,
    session: Session,
    line: str | None = None,
    camera: str | None = None,
    status: Literal["ok", "rejected"] | None = None,
    limit: int = 50,
) -> list[Inspection]:
    """The newest inspections, optionally of one line and/or camera, newest first."""
    stmt = select(Inspection)
    if line is not None:
        stmt = stmt.where(Inspection.line == line)
    if camera is not None:
        stmt = stmt.where(Inspection.camera == camera)
    if status is not None:
        stmt = stmt.where(Inspection.status == status)
    stmt = stmt.order_by(Inspection.finished_at.desc(), Inspection.id.desc()).limit(limit)
    return list(session.scalars(stmt))


def get_inspection(
    id_or_sha256: int | str, *, session: Session, model_version: str | None = None
) -> Inspection | None:
    """One inspection with its defects, by id (int or digits) or by image sha256.

    An image inspected under several model versions has several rows: the newest is
    returned unless ``model_version`` picks one.
    """
    stmt = select(Inspection).options(selectinload(Inspection.defects))
    if isinstance(id_or_sha256, int) or (id_or_sha256.isdigit() and len(id_or_sha256) < 64):
        stmt = stmt.where(Inspection.id == int(id_or_sha256))
    else:
        stmt = stmt.where(Inspection.sha256 == id_or_sha256.lower())
    if model_version is not None:
        stmt = stmt.join(Inspection.model_version).where(ModelVersion.version == model_version)
    stmt = stmt.order_by(Inspection.finished_at.desc(), Inspection.id.desc()).limit(1)
    return session.scalars(stmt).first()


def defect_rates(
    *,
    session: Session,
    since: datetime,
    until: datetime | None = None,
    line: str | None = None,
    camera: str | None = None,
) -> list[DefectRate]:
    """Defect counts and rates per class per UTC hour, oldest hour first.

    Every hour with inspections gets a row for every class seen in the window (zeros
    included), so the rows plot as continuous series.
    """
    conditions = _window(since, until)
    conditions.append(Inspection.status == "ok")
    if line is not None:
        conditions.append(Inspection.line == line)
    if camera is not None:
        conditions.append(Inspection.camera == camera)
    hour = _hour(session, Inspection.finished_at).label("hour")
    totals = {
        _as_utc(h): n
        for h, n in session.execute(
            select(hour, func.count(Inspection.id)).where(*conditions).group_by(hour)
        )
    }
    per_class: dict[tuple[datetime, str], tuple[int, int]] = {}
    stmt = (
        select(
            hour,
            Defect.class_name,
            func.count(Defect.id),
            func.count(func.distinct(Defect.inspection_id)),
        )
        .join(Defect, Defect.inspection_id == Inspection.id)
        .where(*conditions)
        .group_by(hour, Defect.class_name)
    )
    for h, class_name, n_defects, n_affected in session.execute(stmt):
        per_class[(_as_utc(h), class_name)] = (n_defects, n_affected)
    classes = sorted({c for _, c in per_class})
    rows = []
    for h in sorted(totals):
        for class_name in classes:
            n_defects, n_affected = per_class.get((h, class_name), (0, 0))
            rows.append(
                DefectRate(
                    hour=h,
                    class_name=class_name,
                    defects=n_defects,
                    affected=n_affected,
                    inspections=totals[h],
                    rate=n_affected / totals[h],
                )
            )
    return rows


def _check_shifts(shifts: Sequence[tuple[int, int]]) -> list[int]:
    """Map each hour of the day to its shift index; every hour must be in exactly one."""
    owner = [-1] * 24
    for index, (start, end) in enumerate(shifts):
        if not (0 <= start < 24 and 0 <= end < 24) or start == end:
            msg = f"shift {start}-{end}: hours must be 0-23 and start != end"
            raise StoreError(msg)
        h = start
        while h != end:
            if owner[h] != -1:
                msg = f"shifts overlap at hour {h}: {shifts[owner[h]]} and {(start, end)}"
                raise StoreError(msg)
            owner[h] = index
            h = (h + 1) % 24
    missing = [h for h in range(24) if owner[h] == -1]
    if missing:
        msg = f"shifts {list(shifts)} leave hours {missing} uncovered; cover all 24 hours"
        raise StoreError(msg)
    return owner


def yield_by_shift(
    *,
    session: Session,
    since: datetime,
    until: datetime | None = None,
    shifts: Sequence[tuple[int, int]] = DEFAULT_SHIFTS,
    tz: str = "UTC",
    line: str | None = None,
) -> list[ShiftYield]:
    """Pass/fail yield per line and shift, in time order.

    ``shifts`` are (start hour, end hour) in the zone ``tz`` and must cover the day; a shift
    that crosses midnight belongs to the day it starts. Inspections are placed by the hour
    they finished in, so a zone whose offset is not a whole hour shifts boundaries by it.
    ``yield_rate`` is passed / (passed + failed); rejected inputs are counted apart.
    """
    owner = _check_shifts(shifts)
    zone = ZoneInfo(tz)
    conditions = _window(since, until)
    if line is not None:
        conditions.append(Inspection.line == line)
    hour = _hour(session, Inspection.finished_at).label("hour")
    stmt = (
        select(Inspection.line, hour, Inspection.status, Inspection.verdict, func.count())
        .where(*conditions)
        .group_by(Inspection.line, hour, Inspection.status, Inspection.verdict)
    )
    counts: dict[tuple[str | None, datetime, int], dict[str, int]] = defaultdict(
        lambda: {"pass": 0, "fail": 0, "rejected": 0}
    )
    for line_name, h, status, verdict, n in session.execute(stmt):
        local = _as_utc(h).astimezone(zone)
        index = owner[local.hour]
        start, end = shifts[index]
        day = local.date()
        if start > end and local.hour < end:  # the early-morning part of a night shift
            day -= timedelta(days=1)
        shift_start = datetime.combine(day, time(start), tzinfo=zone)
        key = "rejected" if status == "rejected" else str(verdict)
        counts[(line_name, shift_start, index)][key] += n
    rows = []
    for (line_name, shift_start, index), c in counts.items():
        start, end = shifts[index]
        inspected = c["pass"] + c["fail"]
        rows.append(
            ShiftYield(
                line=line_name,
                shift=f"{start:02d}-{end:02d}",
                shift_start=shift_start,
                inspected=inspected,
                passed=c["pass"],
                failed=c["fail"],
                rejected=c["rejected"],
                yield_rate=c["pass"] / inspected if inspected else None,
            )
        )
    rows.sort(key=lambda r: (r.shift_start, r.line or ""))
    return rows


def _percentile_cont(ordered: Sequence[float], q: float) -> float:
    """PostgreSQL's ``percentile_cont``: linear interpolation between closest ranks."""
    position = q * (len(ordered) - 1)
    lo = math.floor(position)
    hi = math.ceil(position)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (position - lo)


def latency_percentiles(
    *,
    session: Session,
    model_version: str | None = None,
    since: datetime | None = None,
    max_rows: int = 100_000,
) -> dict[str, LatencyStats]:
    """p50/p95/p99 of end-to-end latency per model version (inspections with status ok).

    PostgreSQL computes them in the database over all matching rows; on SQLite they are
    computed here over the newest ``max_rows`` rows of each version.
    """
    conditions: list[ColumnElement[bool]] = [
        Inspection.status == "ok",
        Inspection.total_ms.is_not(None),
    ]
    if model_version is not None:
        conditions.append(ModelVersion.version == model_version)
    if since is not None:
        conditions.append(Inspection.finished_at >= _aware(since, "since"))
    result: dict[str, LatencyStats] = {}
    if _dialect(session) == "postgresql":
        stmt = (
            select(
                ModelVersion.version,
                *(
                    func.percentile_cont(q).within_group(Inspection.total_ms)
                    for q in (0.5, 0.95, 0.99)
                ),
                func.count(Inspection.id),
            )
            .join(Inspection.model_version)
            .where(*conditions)
            .group_by(ModelVersion.version)
        )
        for version, p50, p95, p99, count in session.execute(stmt):
            result[version] = LatencyStats(
                p50=float(p50), p95=float(p95), p99=float(p99), count=int(count)
            )
        return result
    versions = session.scalars(
        select(ModelVersion.version)
        .join(Inspection, Inspection.model_version_id == ModelVersion.id)
        .where(*conditions)
        .distinct()
    ).all()
    for version in versions:
        values = session.scalars(
            select(Inspection.total_ms)
            .join(Inspection.model_version)
            .where(*conditions, ModelVersion.version == version)
            .order_by(Inspection.finished_at.desc())
            .limit(max_rows)
        ).all()
        ordered = sorted(float(v) for v in values if v is not None)
        if not ordered:
            continue
        result[version] = LatencyStats(
            p50=_percentile_cont(ordered, 0.5),
            p95=_percentile_cont(ordered, 0.95),
            p99=_percentile_cont(ordered, 0.99),
            count=len(ordered),
        )
    return result


# --------------------------------------------------------------------------- model registry


def get_model_version(version: str, *, session: Session) -> ModelVersion | None:
    """The registered model version called ``version``, or None."""
    return session.scalars(select(ModelVersion).where(ModelVersion.version == version)).first()


def _require_model_version(version: str, session: Session) -> ModelVersion:
    found = get_model_version(version, session=session)
    if found is None:
        msg = f"model version {version!r} is not registered; register it with ensure_model_version"
        raise StoreError(msg)
    return found


def ensure_model_version(
    *,
    session: Session,
    version: str,
    sha256: str,
    name: str,
    checkpoint_path: str | None,
    spec: dict[str, Any],
    activation: str,
    class_names: list[str],
    status: str = "candidate",
    metrics: dict[str, Any] | None = None,
    parent_version: str | None = None,
    training_run_id: int | None = None,
    dataset_fingerprint: str | None = None,
) -> ModelVersion:
    """Register a model version, or return it if it is already registered.

    Safe to call from several processes at once. A version already registered with other
    weights (another sha256) is an error: version names are meant to identify weights.
    """
    if status not in MODEL_STATUSES:
        msg = f"model status {status!r}: expected one of {MODEL_STATUSES}"
        raise StoreError(msg)
    existing = get_model_version(version, session=session)
    if existing is None:
        parent_id = None
        if parent_version is not None:
            parent_id = _require_model_version(parent_version, session).id
        stmt = (
            _insert(session, ModelVersion)
            .values(
                version=version,
                name=name,
                sha256=sha256,
                checkpoint_path=checkpoint_path,
                status="candidate",
                activation=activation,
                class_names=list(class_names),
                spec=spec,
                metrics=metrics,
                parent_id=parent_id,
                training_run_id=training_run_id,
                dataset_fingerprint=dataset_fingerprint,
                created_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["version"])
        )
        session.execute(stmt)
        existing = _require_model_version(version, session)
        if status != "candidate" and existing.status == "candidate":
            set_model_status(version, status, session=session)
    if existing.sha256 != sha256:
        msg = (
            f"model version {version!r} is registered with weights {existing.sha256[:12]}, "
            f"not {sha256[:12]}; give the new checkpoint its own version name"
        )
        raise StoreError(msg)
    if checkpoint_path and existing.checkpoint_path != checkpoint_path:
        # Same weights at another place: keep a path that still loads (an absolute one that
        # exists wins over a relative or vanished one).
        old = existing.checkpoint_path
        if not old or not os.path.isabs(old) or not os.path.isfile(old):
            existing.checkpoint_path = checkpoint_path
            session.flush()
    return existing


def list_model_versions(
    *, session: Session, status: str | None = None, name: str | None = None
) -> list[ModelVersion]:
    """Registered model versions, newest first."""
    stmt = select(ModelVersion)
    if status is not None:
        stmt = stmt.where(ModelVersion.status == status)
    if name is not None:
        stmt = stmt.where(ModelVersion.name == name)
    stmt = stmt.order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc())
    return list(session.scalars(stmt))


def get_champion(*, session: Session, name: str | None = None) -> ModelVersion | None:
    """The champion of model ``name`` (or the most recently promoted of any name)."""
    stmt = select(ModelVersion).where(ModelVersion.status == "champion")
    if name is not None:
        stmt = stmt.where(ModelVersion.name == name)
    stmt = stmt.order_by(ModelVersion.promoted_at.desc().nulls_last(), ModelVersion.id.desc())
    return session.scalars(stmt.limit(1)).first()


def set_model_status(version: str, status: str, *, session: Session) -> ModelVersion:
    """Change a version's status; promoting it retires the champion of the same name."""
    if status not in MODEL_STATUSES:
        msg = f"model status {status!r}: expected one of {MODEL_STATUSES}"
        raise StoreError(msg)
    model = _require_model_version(version, session)
    now = utcnow()
    if status == "champion" and model.status != "champion":
        # Demote first: the partial unique index allows one champion per name at any moment.
        session.execute(
            update(ModelVersion)
            .where(
                ModelVersion.name == model.name,
                ModelVersion.status == "champion",
                ModelVersion.id != model.id,
            )
            .values(status="retired", retired_at=now)
        )
        model.promoted_at = now
        model.retired_at = None
    elif status == "retired" and model.status != "retired":
        model.retired_at = now
    model.status = status
    session.flush()
    return model


# --------------------------------------------------------------------------- training runs


def create_training_run(
    *,
    session: Session,
    trigger: str,
    requested_by: str | None = None,
    reason: str | None = None,
    params: dict[str, Any] | None = None,
    status: Literal["queued", "running"] = "queued",
) -> TrainingRun:
    """Record a training run that is queued (or already running)."""
    if trigger not in TRAINING_TRIGGERS:
        msg = f"training trigger {trigger!r}: expected one of {TRAINING_TRIGGERS}"
        raise StoreError(msg)
    run = TrainingRun(
        trigger=trigger,
        requested_by=requested_by,
        reason=reason,
        params=params,
        status=status,
        created_at=utcnow(),
        started_at=utcnow() if status == "running" else None,
    )
    session.add(run)
    session.flush()
    return run


def _require_run(run_id: int, session: Session) -> TrainingRun:
    run = session.get(TrainingRun, run_id)
    if run is None:
        msg = f"training run {run_id} does not exist"
        raise StoreError(msg)
    return run


def start_training_run(run_id: int, *, session: Session) -> TrainingRun:
    """Mark a queued training run as running."""
    run = _require_run(run_id, session)
    run.status = "running"
    run.started_at = run.started_at or utcnow()
    session.flush()
    return run


def finish_training_run(
    run_id: int,
    *,
    session: Session,
    status: Literal["succeeded", "failed", "cancelled"],
    metrics: dict[str, Any] | None = None,
    dataset_stats: dict[str, Any] | None = None,
    error: str | None = None,
) -> TrainingRun:
    """Record how a training run ended."""
    terminal = tuple(s for s in TRAINING_STATUSES if s not in ("queued", "running"))
    if status not in terminal:
        msg = f"a finished training run's status must be one of {terminal}, not {status!r}"
        raise StoreError(msg)
    run = _require_run(run_id, session)
    run.status = status
    run.finished_at = utcnow()
    if metrics is not None:
        run.metrics = metrics
    if dataset_stats is not None:
        run.dataset_stats = dataset_stats
    if error is not None:
        run.error = error
    session.flush()
    return run


# --------------------------------------------------------------------------- reviews


def add_review(
    *,
    session: Session,
    inspection_id: int,
    decision: Literal["confirm", "reject"],
    operator: str | None = None,
    corrected_mask_path: str | None = None,
    note: str | None = None,
) -> Review:
    """Record an operator's verdict on an inspection."""
    if decision not in REVIEW_DECISIONS:
        msg = f"review decision {decision!r}: expected one of {REVIEW_DECISIONS}"
        raise StoreError(msg)
    if session.get(Inspection, inspection_id) is None:
        msg = f"inspection {inspection_id} does not exist; cannot review it"
        raise StoreError(msg)
    review = Review(
        inspection_id=inspection_id,
        decision=decision,
        operator=operator,
        corrected_mask_path=corrected_mask_path,
        note=note,
        created_at=utcnow(),
    )
    session.add(review)
    session.flush()
    return review


def reviews_for_training(*, session: Session, unused_only: bool = True) -> list[Review]:
    """Reviews with their inspections (and defects), oldest first."""
    stmt = select(Review).options(selectinload(Review.inspection).selectinload(Inspection.defects))
    if unused_only:
        stmt = stmt.where(Review.used_in_training_run_id.is_(None))
    return list(session.scalars(stmt.order_by(Review.created_at, Review.id)))


def mark_reviews_used(review_ids: Sequence[int], training_run_id: int, *, session: Session) -> int:
    """Record that a training run consumed these reviews; returns how many were marked."""
    if not review_ids:
        return 0
    _require_run(training_run_id, session)
    result = session.execute(
        update(Review)
        .where(Review.id.in_(list(review_ids)))
        .values(used_in_training_run_id=training_run_id)
        .execution_options(synchronize_session="fetch")
    )
    return int(getattr(result, "rowcount", 0) or 0)


# --------------------------------------------------------------------------- flow metrics


def save_run_metrics(
    *,
    session: Session,
    flow_run_id: str,
    window_start: datetime,
    window_end: datetime,
    processed: int,
    rejected: int = 0,
    throughput_per_s: float | None = None,
    latency_p50_ms: float | None = None,
    latency_p95_ms: float | None = None,
    flow_name: str | None = None,
    line: str | None = None,
    tiles: int = 0,
    failed: int = 0,
    defect_rate: float | None = None,
    rejected_by_reason: dict[str, int] | None = None,
    model_version: str | None = None,
) -> RunMetric:
    """Record a flow run's counts and speed over one window; saving a window again updates it."""
    _aware(window_start, "window_start")
    _aware(window_end, "window_end")
    values = {
        "flow_run_id": flow_run_id,
        "flow_name": flow_name,
        "line": line,
        "window_start": window_start,
        "window_end": window_end,
        "processed": processed,
        "rejected": rejected,
        "throughput_per_s": throughput_per_s,
        "latency_p50_ms": latency_p50_ms,
        "latency_p95_ms": latency_p95_ms,
        "tiles": tiles,
        "failed": failed,
        "defect_rate": defect_rate,
        "rejected_by_reason": dict(rejected_by_reason) if rejected_by_reason else None,
        "model_version": model_version,
        "created_at": utcnow(),
    }
    stmt = _insert(session, RunMetric).values(**values)
    stmt = stmt.on_conflict_do_update(
        index_elements=["flow_run_id", "window_start"],
        set_={
            k: getattr(stmt.excluded, k)
            for k in values
            if k not in ("flow_run_id", "window_start", "created_at")
        },
    )
    session.execute(stmt)
    return session.scalars(
        select(RunMetric)
        .where(and_(RunMetric.flow_run_id == flow_run_id, RunMetric.window_start == window_start))
        .execution_options(populate_existing=True)
    ).one()


# --------------------------------------------------------------------------- events


def record_event(
    *,
    session: Session,
    kind: str,
    message: str,
    level: str = "info",
    line: str | None = None,
    model_version: str | None = None,
    flow_run_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> Event:
    """Record an operational event (model switch, failed model load, released batch)."""
    event = Event(
        kind=kind,
        level=level,
        line=line,
        model_version=model_version,
        flow_run_id=flow_run_id,
        message=message,
        details=details,
        created_at=utcnow(),
    )
    session.add(event)
    session.flush()
    return event


def recent_events(
    *, session: Session, kind: str | None = None, line: str | None = None, limit: int = 100
) -> list[Event]:
    """The newest events first, optionally of one kind or line."""
    stmt = select(Event)
    if kind is not None:
        stmt = stmt.where(Event.kind == kind)
    if line is not None:
        stmt = stmt.where(Event.line == line)
    return list(
        session.scalars(stmt.order_by(Event.created_at.desc(), Event.id.desc()).limit(limit))
    )
