"""What the operator console shows: lines at a glance, the gallery, a detail, the review queue,
events, the threshold what-if and trends. Read-only; every function takes ``session``.

The gallery pages by keyset (``finished_at``, ``id``), never by offset, so page 10,000 costs what
page 1 does; every filter is a bound parameter (no SQL is built from user text).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, exists, func, or_, select
from sqlalchemy import true as sa_true
from sqlalchemy.orm import Session, selectinload

from defectscan.store._sql import _as_utc, _aware, _hour
from defectscan.store.inspection_queries import defect_rates
from defectscan.store.schema import (
    Defect,
    DriftWindowRow,
    Event,
    Inspection,
    LineControl,
    ModelVersion,
    Review,
    RunMetric,
    utcnow,
)

__all__ = [
    "DriftCard",
    "GalleryFilters",
    "GalleryPage",
    "LineSummary",
    "QueueItem",
    "ThresholdWhatIf",
    "TrendRow",
    "drift_overview",
    "event_kinds",
    "filter_events",
    "gallery_page",
    "inspection_detail",
    "judge_health",
    "lines_overview",
    "review_queue",
    "same_image",
    "threshold_what_if",
    "trends",
]

#: A fail whose peak score is at most this far above 0.5 counts as a close call in the queue.
CLOSE_CALL_MARGIN = 0.15
#: The Lines page shows the lines and cameras among this many newest inspections of the week
#: (besides the plant file's lines and those with monitor windows).
RECENT_KEYS = 2000
#: Without monitor windows, a line's 7-day fail rate is taken over at most its newest this many.
WEEK_SAMPLE = 20_000
#: A monitor that wrote a row (inspection, metrics window, event) this recently is up ...
UP_WITHIN = timedelta(minutes=5)
#: ... and one seen this recently is idle: a bounded monitor run (10 minutes by default) writes
#: its summary row when it ends, even without images.
IDLE_WITHIN = timedelta(minutes=15)
#: The oldest image waiting longer than this makes a line "behind" (besides its own event).
LAG_WARN = timedelta(minutes=2)
#: Events that say how a line's monitor fares: (kinds, the kind that opens the state).
_STATE_EVENTS: dict[str, tuple[tuple[str, ...], str]] = {
    "fault": (("plant_fault", "plant_fault_cleared"), "plant_fault"),
    "behind": (("line_behind", "line_caught_up"), "line_behind"),
    "engine": (("engine_in_use", "engine_switch"), ""),
}
_MONITOR_EVENTS = tuple(k for kinds, _ in _STATE_EVENTS.values() for k in kinds)


# --------------------------------------------------------------------------- lines


@dataclass
class LineSummary:
    """One line and camera at a glance (the Lines page)."""

    line: str
    camera: str | None
    last_id: int | None = None
    last_sha256: str | None = None
    last_verdict: str | None = None
    last_status: str | None = None
    last_at: datetime | None = None
    model_version: str | None = None
    images_per_min: float = 0.0
    fail_rate_hour: float | None = None
    fail_rate_week: float | None = None
    top_classes: list[tuple[str, int]] = field(default_factory=list)
    paused: bool = False
    paused_by: str | None = None
    state: str = "down"  # up, paused, idle, down
    latency_p95_ms: float | None = None
    #: The line's newest event (a plant fault, a refused model, falling behind, a pause...):
    #: (kind, level, message, when). Later figures (drift) add their own fields here.
    last_event: tuple[str, str, str, datetime] | None = None
    #: The newest row its monitor wrote (inspection, metrics window or monitor event).
    monitor_seen_at: datetime | None = None
    #: An open plant fault (its message) and since when; None when cleared or never.
    fault: str | None = None
    fault_since: datetime | None = None
    #: The monitor said it falls behind (``line_behind``, not yet ``line_caught_up``).
    behind: bool = False
    behind_since: datetime | None = None
    #: The engine the monitor last said it inspects with (``engine_in_use``/``engine_switch``).
    engine: str | None = None
    engine_at: datetime | None = None
    #: The line's queue, read from its source by the console (None: not known here).
    backlog: int | None = None
    #: Of the backlog, entries delivered to a consumer and not settled (Redis only).
    pending: int | None = None
    #: When the oldest waiting item arrived (a file's mtime, a stream entry's id).
    oldest_waiting_at: datetime | None = None
    #: Why the queue is not known (no source in the plant file, folder missing, Redis down).
    queue_note: str | None = None
    #: The queue has more items than were counted (the count is a lower bound).
    backlog_capped: bool = False
    #: One word for the line (ok, idle, paused, behind, faulted, down) and its level
    #: (ok, info, warning, critical), with the reasons behind it.
    health: str = "down"
    health_level: str = "critical"
    health_reasons: list[str] = field(default_factory=list)

    @property
    def monitor_seen_s(self) -> float | None:
        """Seconds since its monitor's newest row (None: never seen)."""
        if self.monitor_seen_at is None:
            return None
        return max(0.0, (utcnow() - _as_utc(self.monitor_seen_at)).total_seconds())

    @property
    def oldest_waiting_s(self) -> float | None:
        """Age of the oldest waiting item in seconds (None when unknown or nothing waits)."""
        if self.oldest_waiting_at is None:
            return None
        return max(0.0, (utcnow() - _as_utc(self.oldest_waiting_at)).total_seconds())


def _rate(fails: int, total: int) -> float | None:
    return fails / total if total else None


def lines_overview(
    *, session: Session, lines: Sequence[str] = (), now: datetime | None = None
) -> list[LineSummary]:
    """Per line and camera: the last image, throughput, fail rates (hour vs 7 days), top
    classes, model, pause state and whether a monitor reported in the last minutes.

    ``lines`` (the plant file's) are shown even before their first image.
    """
    now = now or utcnow()
    hour_ago, week_ago, five_min = (
        now - timedelta(hours=1),
        now - timedelta(days=7),
        now - timedelta(minutes=5),
    )
    controls = {c.line: c for c in session.scalars(select(LineControl))}
    keys: dict[tuple[str, str | None], LineSummary] = {}
    # Which lines and cameras to show: those of the newest inspections (an index range, not a
    # scan of the week), the plant file's, those with a control row or monitor windows.
    newest = session.execute(
        select(Inspection.line, Inspection.camera)
        .where(Inspection.finished_at >= week_ago)
        .order_by(Inspection.finished_at.desc())
        .limit(RECENT_KEYS)
    ).all()
    for line, camera in newest:
        if line is not None:
            keys.setdefault((line, camera), LineSummary(line=line, camera=camera))
    week_metrics = {
        line: (int(processed or 0), int(rejected or 0), int(failed or 0))
        for line, processed, rejected, failed in session.execute(
            select(
                RunMetric.line,
                func.sum(RunMetric.processed),
                func.sum(RunMetric.rejected),
                func.sum(RunMetric.failed),
            )
            .where(RunMetric.window_start >= week_ago, RunMetric.line.is_not(None))
            .group_by(RunMetric.line)
        )
    }
    for line in [*lines, *controls, *(str(m) for m in week_metrics)]:
        if not any(k[0] == line for k in keys):
            keys[(line, None)] = LineSummary(line=line, camera=None)
    if not keys:
        return []
    week_rates: dict[str, float | None] = {}
    for line in {k[0] for k in keys}:
        if line in week_metrics:  # a monitor's per-minute windows: cheap at any volume
            processed, rejected, failed = week_metrics[line]
            week_rates[line] = _rate(failed, processed - rejected)
            continue
        # No monitor windows (batch inspections only): the line's newest parts of the week.
        recent = (
            select(Inspection.verdict)
            .where(Inspection.line == line, Inspection.finished_at >= week_ago)
            .order_by(Inspection.finished_at.desc())
            .limit(WEEK_SAMPLE)
            .subquery()
        )
        n, fails = session.execute(
            select(func.count(), func.sum(case((recent.c.verdict == "fail", 1), else_=0)))
        ).one()
        week_rates[line] = _rate(int(fails or 0), int(n or 0))
    for s in keys.values():
        s.fail_rate_week = week_rates.get(s.line)
    hour_rows = session.execute(
        select(
            Inspection.line,
            Inspection.camera,
            func.count(Inspection.id),
            func.sum(case((Inspection.verdict == "fail", 1), else_=0)),
            func.sum(case((Inspection.finished_at >= five_min, 1), else_=0)),
        )
        .where(Inspection.finished_at >= hour_ago, Inspection.line.is_not(None))
        .group_by(Inspection.line, Inspection.camera)
    ).all()
    for line, camera, n, fails, last5 in hour_rows:
        hs = keys.get((line, camera))
        if hs is not None:
            hs.fail_rate_hour = _rate(int(fails or 0), int(n))
            hs.images_per_min = int(last5 or 0) / 5.0
    for s in keys.values():
        s.last_id = None
        # A card without a camera shows the line's newest image, whatever its camera.
        camera_is = sa_true() if s.camera is None else Inspection.camera == s.camera
        row = session.execute(
            select(
                Inspection.id,
                Inspection.sha256,
                Inspection.verdict,
                Inspection.status,
                Inspection.finished_at,
                ModelVersion.version,
            )
            .join(ModelVersion, ModelVersion.id == Inspection.model_version_id)
            .where(Inspection.line == s.line, camera_is, Inspection.finished_at >= week_ago)
            .order_by(Inspection.finished_at.desc(), Inspection.id.desc())
            .limit(1)
        ).first()
        if row is not None:
            s.last_id, s.last_sha256, s.last_verdict = row.id, row.sha256, row.verdict
            s.last_status, s.last_at, s.model_version = row.status, row.finished_at, row.version
    for line, camera, class_name, n in session.execute(
        select(Inspection.line, Inspection.camera, Defect.class_name, func.count(Defect.id))
        .join(Defect, Defect.inspection_id == Inspection.id)
        .where(
            # the hour's inspections by their time index first, then their defects by theirs
            # (SQLite would otherwise walk every defect of the database)
            Defect.inspection_id.in_(
                select(Inspection.id).where(Inspection.finished_at >= hour_ago)
            ),
            Inspection.finished_at >= hour_ago,
            Inspection.line.is_not(None),
        )
        .group_by(Inspection.line, Inspection.camera, Defect.class_name)
    ):
        cs = keys.get((str(line), camera))
        if cs is not None:
            cs.top_classes.append((class_name, int(n)))
    day_ago = now - timedelta(days=1)
    windows: dict[str | None, tuple[datetime | None, float | None]] = {
        line: (_as_utc(end) if end is not None else None, p95)
        for line, end, p95 in session.execute(
            select(
                RunMetric.line,
                func.max(RunMetric.window_end),
                func.max(
                    case(
                        (
                            RunMetric.window_start >= now - timedelta(minutes=11),
                            RunMetric.latency_p95_ms,
                        ),
                        else_=None,
                    )
                ),
            )
            .where(RunMetric.window_start >= day_ago)
            .group_by(RunMetric.line)
        ).all()
    }
    line_names = {s.line for s in keys.values()}
    last_events: dict[str, tuple[str, str, str, datetime]] = {}
    states: dict[tuple[str, str], tuple[str, str, dict[str, Any], datetime]] = {}
    for line in line_names:
        ev = session.execute(
            select(Event.kind, Event.level, Event.message, Event.created_at)
            .where(Event.line == line)
            .order_by(Event.id.desc())
            .limit(1)
        ).first()
        if ev is not None:
            last_events[line] = (ev.kind, ev.level, ev.message, ev.created_at)
        for what, (kinds, _opens) in _STATE_EVENTS.items():
            # The (kind, created_at) index per kind, newest first: one row each.
            found = [
                session.execute(
                    select(Event.kind, Event.message, Event.details, Event.created_at)
                    .where(Event.kind == kind, Event.line == line)
                    .order_by(Event.created_at.desc(), Event.id.desc())
                    .limit(1)
                ).first()
                for kind in kinds
            ]
            rows = [r for r in found if r is not None]
            if rows:
                r = max(rows, key=lambda r: _as_utc(r.created_at))
                states[(line, what)] = (r.kind, r.message, r.details or {}, _as_utc(r.created_at))
    for s in keys.values():
        s.last_event = last_events.get(s.line)
        s.top_classes = sorted(s.top_classes, key=lambda kv: (-kv[1], kv[0]))[:3]
        control = controls.get(s.line)
        s.paused = bool(control and control.paused)
        s.paused_by = control.changed_by if control else None
        window_end, s.latency_p95_ms = windows.get(s.line, (None, None))
        fault = states.get((s.line, "fault"))
        if fault is not None and fault[0] == "plant_fault":
            s.fault = str(fault[2].get("error") or fault[1])
            s.fault_since = fault[3]
        behind = states.get((s.line, "behind"))
        if behind is not None and behind[0] == "line_behind":
            s.behind, s.behind_since = True, behind[3]
        engine = states.get((s.line, "engine"))
        if engine is not None:
            s.engine, s.engine_at = str(engine[2].get("engine") or "?"), engine[3]
        signs = [
            t
            for t in (
                _as_utc(s.last_at) if s.last_at is not None else None,
                window_end,
                *(states[(s.line, w)][3] for w in _STATE_EVENTS if (s.line, w) in states),
            )
            if t is not None
        ]
        s.monitor_seen_at = max(signs) if signs else None
        if s.paused:
            s.state = "paused"
        elif s.last_at is not None and _as_utc(s.last_at) >= now - UP_WITHIN:
            s.state = "up"
        elif s.monitor_seen_at is not None and s.monitor_seen_at >= now - IDLE_WITHIN:
            s.state = "idle"
        else:
            s.state = "down"
        judge_health(s, now=now)
    return sorted(keys.values(), key=lambda s: (s.line, s.camera or ""))


def judge_health(s: LineSummary, *, now: datetime | None = None) -> LineSummary:
    """Set ``s.health``, its level and reasons from the monitor's state, its events and the
    queue (call again once the queue is known). The worst reason names the word."""
    now = now or utcnow()
    reasons: list[tuple[int, str, str]] = []  # (rank, word, reason)
    waiting = f"{s.backlog}{'+' if s.backlog_capped else ''} waiting" if s.backlog else ""
    if s.fault is not None:
        reasons.append((4, "faulted", f"plant fault: {s.fault}"))
    if s.state == "down":
        seen = (
            f"no row from its monitor since {s.monitor_seen_at:%Y-%m-%d %H:%M} UTC"
            if s.monitor_seen_at is not None
            else "no monitor has reported"
        )
        reasons.append((3, "down", seen + (f"; {waiting}" if waiting else "")))
    if s.behind:
        reasons.append((2, "behind", "its monitor says the backlog keeps growing"))
    oldest = s.oldest_waiting_at
    if oldest is not None and s.backlog and now - _as_utc(oldest) >= LAG_WARN and not s.paused:
        age = int((now - _as_utc(oldest)).total_seconds())
        reasons.append((2, "behind", f"the oldest image has waited {age // 60} min {age % 60} s"))
    if s.paused:
        reasons.append((1, "paused", f"paused by {s.paused_by or 'an operator'}"))
    if not reasons:
        reasons.append((0, "ok" if s.state == "up" else "idle", waiting or "nothing waiting"))
    reasons.sort(key=lambda r: -r[0])
    s.health = reasons[0][1]
    s.health_level = {4: "critical", 3: "critical", 2: "warning", 1: "info", 0: "ok"}[reasons[0][0]]
    s.health_reasons = [r[2] for r in reasons]
    return s


@dataclass(frozen=True)
class DriftCard:
    """The newest drift window of one line and camera, and its last alert."""

    line: str | None
    camera: str | None
    state: str  # ok, warning, critical
    hints: list[str]
    window_end: datetime
    n: int
    model_version: str
    last_alert_at: datetime | None


def drift_overview(*, session: Session, limit: int = 200) -> list[DriftCard]:
    """Per line and camera, the newest ``drift_windows`` row and when it last alerted."""
    pairs = session.execute(
        select(DriftWindowRow.line, DriftWindowRow.camera)
        .distinct()
        .order_by(DriftWindowRow.line, DriftWindowRow.camera)
        .limit(limit)
    ).all()
    cards = []
    for line, camera in pairs:
        same = [
            DriftWindowRow.line.is_(None) if line is None else DriftWindowRow.line == line,
            DriftWindowRow.camera.is_(None) if camera is None else DriftWindowRow.camera == camera,
        ]
        row = session.scalars(
            select(DriftWindowRow)
            .where(*same)
            .order_by(DriftWindowRow.window_end.desc(), DriftWindowRow.id.desc())
            .limit(1)
        ).first()
        if row is None:
            continue
        alert = session.scalar(
            select(func.max(DriftWindowRow.window_end)).where(*same, DriftWindowRow.state != "ok")
        )
        cards.append(
            DriftCard(
                line=line,
                camera=camera,
                state=row.state,
                hints=[str(h) for h in row.hints or []],
                window_end=_as_utc(row.window_end),
                n=row.n,
                model_version=row.model_version,
                last_alert_at=_as_utc(alert) if alert is not None else None,
            )
        )
    return cards


# --------------------------------------------------------------------------- gallery


@dataclass(frozen=True)
class GalleryFilters:
    """The gallery's filters; None or empty: no filter."""

    line: str | None = None
    camera: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    verdict: str | None = None  # pass, fail
    status: str | None = None  # ok, rejected
    class_name: str | None = None
    model_version: str | None = None
    score_min: float | None = None
    score_max: float | None = None
    reviewed: bool | None = None
    disagreement: bool = False

    def conditions(self) -> list[Any]:
        """The WHERE clauses (bound parameters only)."""
        c: list[Any] = []
        if self.line:
            c.append(Inspection.line == self.line)
        if self.camera:
            c.append(Inspection.camera == self.camera)
        if self.since is not None:
            c.append(Inspection.finished_at >= _aware(self.since, "since"))
        if self.until is not None:
            c.append(Inspection.finished_at < _aware(self.until, "until"))
        if self.verdict:
            c.append(Inspection.verdict == self.verdict)
        if self.status:
            c.append(Inspection.status == self.status)
        if self.model_version:
            c.append(
                Inspection.model_version_id.in_(
                    select(ModelVersion.id).where(ModelVersion.version == self.model_version)
                )
            )
        if self.class_name or self.score_min is not None or self.score_max is not None:
            d = [Defect.inspection_id == Inspection.id]
            if self.class_name:
                d.append(Defect.class_name == self.class_name)
            if self.score_min is not None:
                d.append(Defect.max_score >= self.score_min)
            if self.score_max is not None:
                d.append(Defect.max_score <= self.score_max)
            c.append(exists().where(*d))
        reviewed = exists().where(Review.inspection_id == Inspection.id)
        if self.reviewed is True:
            c.append(reviewed)
        elif self.reviewed is False:
            c.append(~reviewed)
        if self.disagreement:
            c.append(
                exists().where(Review.inspection_id == Inspection.id, Review.decision == "reject")
            )
        return c


@dataclass(frozen=True)
class GalleryItem:
    """One thumbnail of the gallery."""

    id: int
    sha256: str
    line: str | None
    camera: str | None
    status: str
    verdict: str | None
    n_defects: int
    finished_at: datetime
    model_version: str
    reviewed: bool


@dataclass(frozen=True)
class GalleryPage:
    """A page of the gallery and the cursor of the next one (None: the last page)."""

    items: list[GalleryItem]
    next_cursor: str | None


def encode_cursor(finished_at: datetime, id_: int) -> str:
    """``<epoch microseconds>_<id>``: where the next page starts."""
    micros = round(_as_utc(finished_at).timestamp() * 1_000_000)
    return f"{micros}_{id_}"


def decode_cursor(cursor: str) -> tuple[datetime, int] | None:
    """The (finished_at, id) of a cursor; None when it is not one."""
    try:
        micros, id_ = cursor.split("_", 1)
        from datetime import UTC

        when = datetime.fromtimestamp(int(micros) / 1_000_000, UTC)
        return when, int(id_)
    except (ValueError, OverflowError, OSError):
        return None


def gallery_page(
    filters: GalleryFilters, *, session: Session, cursor: str | None = None, limit: int = 48
) -> GalleryPage:
    """Newest first, ``limit`` items after ``cursor``."""
    q = select(
        Inspection.id,
        Inspection.sha256,
        Inspection.line,
        Inspection.camera,
        Inspection.status,
        Inspection.verdict,
        Inspection.n_defects,
        Inspection.finished_at,
        Inspection.model_version_id,
    ).where(*filters.conditions())
    after = decode_cursor(cursor) if cursor else None
    if after is not None:
        when, id_ = after
        # The range on finished_at alone lets the index do the work; the OR only breaks ties.
        q = q.where(
            Inspection.finished_at <= when,
            or_(Inspection.finished_at < when, Inspection.id < id_),
        )
    rows = session.execute(
        q.order_by(Inspection.finished_at.desc(), Inspection.id.desc()).limit(limit + 1)
    ).all()
    more = len(rows) > limit
    rows = rows[:limit]
    ids = [r.id for r in rows]
    reviewed = set()
    if ids:
        reviewed = set(
            session.scalars(select(Review.inspection_id).where(Review.inspection_id.in_(ids)))
        )
    versions = dict(
        session.execute(
            select(ModelVersion.id, ModelVersion.version).where(
                ModelVersion.id.in_({r.model_version_id for r in rows})
            )
        ).all()
    )
    items = [
        GalleryItem(
            id=r.id,
            sha256=r.sha256,
            line=r.line,
            camera=r.camera,
            status=r.status,
            verdict=r.verdict,
            n_defects=r.n_defects,
            finished_at=r.finished_at,
            model_version=versions.get(r.model_version_id, "?"),
            reviewed=r.id in reviewed,
        )
        for r in rows
    ]
    next_cursor = encode_cursor(rows[-1].finished_at, rows[-1].id) if more and rows else None
    return GalleryPage(items=items, next_cursor=next_cursor)


def gallery_choices(*, session: Session) -> dict[str, list[str]]:
    """Values the gallery's drop-downs offer: lines, cameras, classes, model versions."""
    # Lines and cameras of the newest inspections (an index range; a distinct over the week
    # would read every row of it), plus every line that has monitor windows or a rule.
    newest = session.execute(
        select(Inspection.line, Inspection.camera)
        .order_by(Inspection.finished_at.desc())
        .limit(RECENT_KEYS)
    ).all()
    lines = {line for line, _ in newest}
    lines.update(
        session.scalars(
            select(RunMetric.line)
            .where(RunMetric.window_start >= utcnow() - timedelta(days=1))
            .distinct()
        )
    )
    cameras = {camera for _, camera in newest}
    versions = session.scalars(select(ModelVersion.version).order_by(ModelVersion.id.desc())).all()
    classes: set[str] = set()
    for names in session.scalars(select(ModelVersion.class_names)):
        classes.update(str(n) for n in names or [])
    return {
        "lines": sorted(x for x in lines if x),
        "cameras": sorted(x for x in cameras if x),
        "classes": sorted(classes),
        "model_versions": list(versions),
    }


# --------------------------------------------------------------------------- detail


def inspection_detail(inspection_id: int, *, session: Session) -> Inspection | None:
    """One inspection with its defects, reviews and model."""
    return session.scalars(
        select(Inspection)
        .options(selectinload(Inspection.defects), selectinload(Inspection.reviews))
        .where(Inspection.id == inspection_id)
    ).first()


def same_image(sha256: str, *, session: Session, exclude: int | None = None) -> list[Inspection]:
    """Other inspections of the same bytes (other models, redeliveries), newest first."""
    q = select(Inspection).where(Inspection.sha256 == sha256)
    if exclude is not None:
        q = q.where(Inspection.id != exclude)
    return list(session.scalars(q.order_by(Inspection.finished_at.desc()).limit(20)))


def peak_score(inspection: Inspection) -> float:
    """The highest defect score of an inspection (0 without defects)."""
    return max((d.max_score for d in inspection.defects), default=0.0)


# --------------------------------------------------------------------------- review queue


@dataclass(frozen=True)
class QueueItem:
    """One unreviewed inspection in the queue and why it is there."""

    id: int
    sha256: str
    line: str | None
    verdict: str | None
    peak: float
    kind: str  # close, fail, pass


def review_queue(
    *, session: Session, line: str | None = None, limit: int = 50, pass_sample: int = 16
) -> list[QueueItem]:
    """Unreviewed inspections: close calls first, then fails, then a sample of passes.

    A close call is a fail whose peak score lies within :data:`CLOSE_CALL_MARGIN` above 0.5.
    Passes are sampled by their sha256 (one image in ``pass_sample``), so every operator sees
    the same sample.
    """
    unreviewed = ~exists().where(Review.inspection_id == Inspection.id)
    base = [Inspection.status == "ok", unreviewed]
    if line:
        base.append(Inspection.line == line)
    peak = (
        select(func.max(Defect.max_score))
        .where(Defect.inspection_id == Inspection.id)
        .correlate(Inspection)
        .scalar_subquery()
    )
    fails = session.execute(
        select(Inspection.id, Inspection.sha256, Inspection.line, Inspection.verdict, peak)
        .where(*base, Inspection.verdict == "fail")
        .order_by(Inspection.finished_at.desc(), Inspection.id.desc())
        .limit(limit * 4)
    ).all()
    close = [r for r in fails if r[4] is not None and r[4] <= 0.5 + CLOSE_CALL_MARGIN]
    close.sort(key=lambda r: (r[4], -r[0]))
    close_ids = {r[0] for r in close}
    out = [QueueItem(r[0], r[1], r[2], r[3], float(r[4] or 0), "close") for r in close]
    out += [
        QueueItem(r[0], r[1], r[2], r[3], float(r[4] or 0), "fail")
        for r in fails
        if r[0] not in close_ids
    ]
    if len(out) < limit:
        # sha256 is hex: its first character is uniform over 16 values.
        prefixes = [f"{i:x}" for i in range(max(1, 16 // max(1, pass_sample)))]
        passes = session.execute(
            select(Inspection.id, Inspection.sha256, Inspection.line, Inspection.verdict)
            .where(
                *base,
                Inspection.verdict == "pass",
                or_(*(Inspection.sha256.startswith(p) for p in prefixes)),
            )
            .order_by(Inspection.finished_at.desc(), Inspection.id.desc())
            .limit(limit - len(out))
        ).all()
        out += [QueueItem(r[0], r[1], r[2], r[3], 0.0, "pass") for r in passes]
    return out[:limit]


# --------------------------------------------------------------------------- events


def event_kinds(*, session: Session) -> list[str]:
    """Every event kind recorded so far."""
    return sorted(session.scalars(select(Event.kind).distinct()))


def filter_events(
    *,
    session: Session,
    kind: str | None = None,
    line: str | None = None,
    level: str | None = None,
    since: datetime | None = None,
    text: str | None = None,
    limit: int = 200,
) -> list[Event]:
    """Events newest first, filtered by kind, line, level, time and a substring."""
    q = select(Event)
    if kind:
        q = q.where(Event.kind == kind)
    if line:
        q = q.where(Event.line == line)
    if level:
        q = q.where(Event.level == level)
    if since is not None:
        q = q.where(Event.created_at >= _aware(since, "since"))
    if text:
        escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        q = q.where(Event.message.ilike(f"%{escaped}%", escape="\\"))
    return list(session.scalars(q.order_by(Event.created_at.desc(), Event.id.desc()).limit(limit)))


# --------------------------------------------------------------------------- thresholds


@dataclass(frozen=True)
class ThresholdWhatIf:
    """Recent peak scores of one class on one line, and what a threshold would make of them."""

    line: str
    class_name: str
    threshold: float
    samples: int
    bins: list[float]  # left edges, width 1/len(bins)
    counts_good: list[int]  # reviewed: no real defect
    counts_bad: list[int]  # reviewed: a real defect
    counts_unreviewed: list[int]
    pass_rate: float | None
    fail_rate: float | None
    false_reject_rate: float | None  # reviewed good parts the threshold fails
    miss_rate: float | None  # reviewed defective parts the threshold passes
    reviewed: int


def threshold_what_if(
    line: str,
    class_name: str,
    threshold: float,
    *,
    session: Session,
    since: datetime | None = None,
    limit: int = 5000,
    n_bins: int = 20,
) -> ThresholdWhatIf:
    """The histogram of recent peak scores (per part, of ``class_name``) with review labels.

    A part's label is what its review says: a confirmed fail or an overruled pass had a real
    defect; a confirmed pass or an overruled fail had none. Parts without a defect of the class
    have peak 0: the database keeps scores of kept regions only, so scores below the threshold
    in use at inspection time are not known (the lowest bin holds them).
    """
    since = since or utcnow() - timedelta(days=7)
    peak = (
        select(func.max(Defect.max_score))
        .where(Defect.inspection_id == Inspection.id, Defect.class_name == class_name)
        .correlate(Inspection)
        .scalar_subquery()
    )
    rows = session.execute(
        select(Inspection.id, Inspection.verdict, peak)
        .where(
            Inspection.line == line,
            Inspection.status == "ok",
            Inspection.finished_at >= _aware(since, "since"),
        )
        .order_by(Inspection.finished_at.desc())
        .limit(limit)
    ).all()
    ids = [r[0] for r in rows]
    decisions: dict[int, str] = {}
    for chunk in range(0, len(ids), 900):
        for inspection_id, decision in session.execute(
            select(Review.inspection_id, Review.decision)
            .where(Review.inspection_id.in_(ids[chunk : chunk + 900]))
            .order_by(Review.id)
        ):
            decisions[inspection_id] = decision  # the latest review wins
    width = 1.0 / n_bins
    good, bad, unrev = [0] * n_bins, [0] * n_bins, [0] * n_bins
    fails = reviewed = false_rejects = good_n = bad_n = misses = 0
    for inspection_id, verdict, p in rows:
        score = float(p or 0.0)
        b = min(n_bins - 1, max(0, math.floor(score / width)))
        predicted_fail = score >= threshold and p is not None
        fails += predicted_fail
        decided = decisions.get(inspection_id)
        if decided is None:
            unrev[b] += 1
            continue
        reviewed += 1
        defective = (verdict == "fail") == (decided == "confirm")
        if defective:
            bad[b] += 1
            bad_n += 1
            misses += not predicted_fail
        else:
            good[b] += 1
            good_n += 1
            false_rejects += predicted_fail
    n = len(rows)
    return ThresholdWhatIf(
        line=line,
        class_name=class_name,
        threshold=threshold,
        samples=n,
        bins=[i * width for i in range(n_bins)],
        counts_good=good,
        counts_bad=bad,
        counts_unreviewed=unrev,
        pass_rate=(n - fails) / n if n else None,
        fail_rate=fails / n if n else None,
        false_reject_rate=false_rejects / good_n if good_n else None,
        miss_rate=misses / bad_n if bad_n else None,
        reviewed=reviewed,
    )


# --------------------------------------------------------------------------- trends


@dataclass
class TrendRow:
    """One UTC hour of one line."""

    hour: datetime
    inspections: int = 0
    rejected: int = 0
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    #: Failed parts per defect class (a part failed with two classes counts for each).
    fails_by_class: dict[str, int] = field(default_factory=dict)
    defect_rate_by_class: dict[str, float] = field(default_factory=dict)
    latency_p95_ms: float | None = None


def trends(
    *, session: Session, line: str | None, since: datetime, until: datetime | None = None
) -> list[TrendRow]:
    """Per hour: inspections, rejected inputs by error kind, failed parts by defect class,
    defect rate by class, p95 capture-to-commit (hours without any row are left out)."""
    _aware(since, "since")
    rows: dict[datetime, TrendRow] = {}

    def row(h: Any) -> TrendRow:
        key = _as_utc(h)
        if key not in rows:
            rows[key] = TrendRow(hour=key)
        return rows[key]

    hour = _hour(session, Inspection.finished_at).label("hour")
    conditions = [Inspection.finished_at >= since]
    if until is not None:
        conditions.append(Inspection.finished_at < until)
    if line:
        conditions.append(Inspection.line == line)
    for h, status, kind, n in session.execute(
        select(hour, Inspection.status, Inspection.error_kind, func.count(Inspection.id))
        .where(*conditions)
        .group_by(hour, Inspection.status, Inspection.error_kind)
    ):
        r = row(h)
        r.inspections += int(n)
        if status == "rejected":
            r.rejected += int(n)
            reason = kind or "unknown"
            r.rejects_by_reason[reason] = r.rejects_by_reason.get(reason, 0) + int(n)
    for h, class_name, n in session.execute(
        select(hour, Defect.class_name, func.count(func.distinct(Inspection.id)))
        .join(Defect, Defect.inspection_id == Inspection.id)
        .where(*conditions, Inspection.status == "ok", Inspection.verdict == "fail")
        .group_by(hour, Defect.class_name)
    ):
        row(h).fails_by_class[class_name] = int(n)
    for rate in defect_rates(session=session, since=since, until=until, line=line):
        row(rate.hour).defect_rate_by_class[rate.class_name] = rate.rate
    mhour = _hour(session, RunMetric.window_start).label("hour")
    mconditions = [RunMetric.window_start >= since]
    if line:
        mconditions.append(RunMetric.line == line)
    for h, p95 in session.execute(
        select(mhour, func.max(RunMetric.latency_p95_ms)).where(*mconditions).group_by(mhour)
    ):
        if p95 is not None:
            row(h).latency_p95_ms = float(p95)
    return [rows[k] for k in sorted(rows)]


def class_counts(rows: Sequence[TrendRow]) -> list[str]:
    """Every class that appears in ``rows``, most frequent first."""
    c: Counter[str] = Counter()
    for r in rows:
        for name, rate in r.defect_rate_by_class.items():
            c[name] += int(rate > 0)
    return [name for name, _ in c.most_common()]


# --------------------------------------------------------------------------- models


def recent_training_runs(*, session: Session, limit: int = 30) -> list[Any]:
    """Training runs, newest first (status, who asked and why, result)."""
    from defectscan.store.schema import TrainingRun

    return list(session.scalars(select(TrainingRun).order_by(TrainingRun.id.desc()).limit(limit)))
