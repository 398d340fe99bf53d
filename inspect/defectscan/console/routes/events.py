"""Events: model switches, refused models, failed batches, plant faults, pauses; filterable."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from defectscan.console.deps import Principal, current_user, db
from defectscan.console.pages import parse_time, render
from defectscan.store.console_queries import event_kinds, filter_events

router = APIRouter()


@router.get("/events")
def events_page(
    request: Request, user: Principal = Depends(current_user), session: Session = Depends(db)
) -> Response:
    """Events, newest first."""
    q = request.query_params
    raw = {k: str(q.get(k, ""))[:128] for k in ("kind", "line", "level", "since", "text")}
    if raw["level"] not in ("", "info", "warning", "error"):
        raw["level"] = ""
    events = filter_events(
        session=session,
        kind=raw["kind"] or None,
        line=raw["line"] or None,
        level=raw["level"] or None,
        since=parse_time(raw["since"]),
        text=raw["text"] or None,
    )
    return render(
        request,
        "events.html",
        {"events": events, "raw": raw, "kinds": event_kinds(session=session)},
        user=user,
    )
