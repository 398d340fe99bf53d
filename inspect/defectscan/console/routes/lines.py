"""Lines: every line and camera at a glance, refreshing itself every few seconds (htmx).

Per card: the last image, throughput, fail rates, top classes, the model and the engine its
monitor runs, the queue (backlog and the age of its oldest item, read from the line's source),
whether the monitor is up, paused, behind or faulted, and one health word from all of that.
Below the cards, the drift panel: each camera's newest drift window and its last alert.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from defectscan.console.deps import Principal, current_user, db, state
from defectscan.console.pages import render
from defectscan.console.queues import line_queue
from defectscan.store.console_queries import drift_overview, judge_health, lines_overview

router = APIRouter()


def _context(request: Request, session: Session) -> dict[str, object]:
    settings = state(request).settings
    cards = lines_overview(session=session, lines=list(settings.lines))
    queues = {line: line_queue(line, settings) for line in {c.line for c in cards}}
    for card in cards:
        q = queues[card.line]
        card.backlog, card.pending, card.oldest_waiting_at = q.backlog, q.pending, q.oldest_at
        card.backlog_capped, card.queue_note = q.capped, q.note
        judge_health(card)
    # ``drift`` is a bool in older plant files' settings, a section with ``enabled`` now.
    drift_on = bool(getattr(settings.drift, "enabled", settings.drift))
    return {
        "lines": cards,
        "drift_on": drift_on,
        "drift": drift_overview(session=session) if drift_on else [],
    }


@router.get("/lines")
def lines_page(
    request: Request, user: Principal = Depends(current_user), session: Session = Depends(db)
) -> Response:
    """The Lines page."""
    return render(request, "lines.html", _context(request, session), user=user)


@router.get("/lines/table")
def lines_table(
    request: Request, user: Principal = Depends(current_user), session: Session = Depends(db)
) -> Response:
    """The Lines table alone (what the page's auto-refresh swaps in)."""
    return render(request, "_lines_table.html", _context(request, session), user=user)
