"""Reads over stored inspections: the newest ones, one by id or sha256, and line statistics.

The statistics (defect rates per hour, yield per shift, latency percentiles) are computed in
the database where the dialect allows it. Every function takes a keyword-only ``session`` and
only reads.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Literal, TypedDict
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session, selectinload

from defectscan.errors import StoreError
from defectscan.store._sql import _as_utc, _aware, _dialect, _hour, _window
from defectscan.store.schema import Defect, Inspection, ModelVersion

__all__ = [
    "DEFAULT_SHIFTS",
    "DefectRate",
    "LatencyStats",
    "ShiftYield",
    "defect_rates",
    "get_inspection",
    "latency_percentiles",
    "recent_inspections",
    "yield_by_shift",
]

DEFAULT_SHIFTS: tuple[tuple[int, int], ...] = ((6, 14), (14, 22), (22, 6))


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
