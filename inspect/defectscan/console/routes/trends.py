"""Trends: per line and hour, defect rate by class, throughput, p95 capture-to-commit, rejects by
reason, over 24 hours or 7 days (drawn as server-side SVG: no script, no plot library).

Rejects by reason is a series per reason: failed parts by the class of their defects
(``fail: scratch``) and inputs refused before inspection by why (``rejected: decode``). Every
hour of the span is a point, hours without inspections included (as zeros).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from defectscan.console.deps import Principal, current_user, db, state
from defectscan.console.pages import render
from defectscan.report import class_color
from defectscan.store.console_queries import TrendRow, class_counts, gallery_choices, trends

router = APIRouter()

W, H = 720, 140
#: Colours of the reasons an input was refused (defect classes keep their overlay colours).
_REJECT_COLORS = ("#d05050", "#b0b0b0", "#e07ad0", "#a0d070", "#70c0c0", "#8080e0")


def _every_hour(rows: Sequence[TrendRow], since: datetime, now: datetime) -> list[TrendRow]:
    """``rows`` with an empty row for every hour of [since, now] that has none."""
    have = {r.hour: r for r in rows}
    hour = since.replace(minute=0, second=0, microsecond=0)
    out = []
    while hour <= now:
        out.append(have.get(hour) or TrendRow(hour=hour))
        hour += timedelta(hours=1)
    return out


def _series(values: Sequence[float | None], top: float) -> str:
    """SVG polyline points of ``values`` scaled into W x H (None: a gap is drawn as 0)."""
    n = max(1, len(values) - 1)
    top = top or 1.0
    return " ".join(f"{W * i / n:.1f},{H - H * (v or 0.0) / top:.1f}" for i, v in enumerate(values))


@router.get("/trends")
def trends_page(
    request: Request, user: Principal = Depends(current_user), session: Session = Depends(db)
) -> Response:
    """Hourly charts of one line."""
    q = request.query_params
    choices = gallery_choices(session=session)
    lines = sorted(set(choices["lines"]) | set(state(request).settings.lines))
    line = str(q.get("line") or (lines[0] if lines else ""))[:64] or None
    span = "7d" if q.get("span") == "7d" else "24h"
    now = datetime.now(UTC)
    since = now - (timedelta(days=7) if span == "7d" else timedelta(hours=24))
    found = trends(session=session, line=line, since=since)
    rows = _every_hour(found, since, now) if found else []
    classes = class_counts(rows)
    charts: list[dict[str, Any]] = []
    if rows:
        top = max((r.inspections for r in rows), default=1)
        charts.append(
            {
                "title": "inspections per hour",
                "top": top,
                "lines": [("throughput", "#4aa3df", _series([r.inspections for r in rows], top))],
            }
        )
        rates = [
            (
                name,
                "#{2:02x}{1:02x}{0:02x}".format(*class_color(k + 1)),
                [r.defect_rate_by_class.get(name, 0.0) for r in rows],
            )
            for k, name in enumerate(classes)
        ]
        top_rate = max([0.01, *(max(v) for _, _, v in rates)]) if rates else 1.0
        charts.append(
            {
                "title": "defect rate by class (share of parts)",
                "top": f"{100 * top_rate:.1f}%",
                "lines": [(n, c, _series(v, top_rate)) for n, c, v in rates],
            }
        )
        p95 = [r.latency_p95_ms for r in rows]
        top_p95 = max([1.0, *(v for v in p95 if v is not None)])
        charts.append(
            {
                "title": "capture-to-commit p95 (ms)",
                "top": f"{top_p95:.0f}",
                "lines": [("p95", "#e0a040", _series(p95, top_p95))],
            }
        )
        color_of = {
            name: "#{2:02x}{1:02x}{0:02x}".format(*class_color(k + 1))
            for k, name in enumerate(classes)
        }
        failed = sorted({c for r in rows for c in r.fails_by_class})
        refused = sorted({k for r in rows for k in r.rejects_by_reason})
        series = [
            (
                f"fail: {c}",
                color_of.get(c, "#4aa3df"),
                [float(r.fails_by_class.get(c, 0)) for r in rows],
            )
            for c in failed
        ] + [
            (
                f"rejected: {k}",
                _REJECT_COLORS[i % len(_REJECT_COLORS)],
                [float(r.rejects_by_reason.get(k, 0)) for r in rows],
            )
            for i, k in enumerate(refused)
        ]
        top_rej = max([1.0, *(max(v) for _, _, v in series)])
        charts.append(
            {
                "title": "rejects by reason per hour (failed parts by class, refused inputs)",
                "id": "rejects-by-reason",
                "top": f"{top_rej:.0f}",
                "lines": [(n, c, _series(v, top_rej)) for n, c, v in series],
            }
        )
    reasons: dict[str, int] = {}
    for r in rows:
        for k, v in r.fails_by_class.items():
            reasons[f"fail: {k}"] = reasons.get(f"fail: {k}", 0) + v
        for k, v in r.rejects_by_reason.items():
            reasons[f"rejected: {k}"] = reasons.get(f"rejected: {k}", 0) + v
    return render(
        request,
        "trends.html",
        {
            "lines": lines,
            "line": line,
            "span": span,
            "rows": rows,
            "charts": charts,
            "reasons": sorted(reasons.items(), key=lambda kv: -kv[1]),
            "w": W,
            "h": H,
        },
        user=user,
    )
