"""Lines: every line and camera at a glance, refreshing itself every few seconds (htmx)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from defectscan.console.deps import Principal, current_user, db, state
from defectscan.console.pages import render
from defectscan.store.console_queries import lines_overview

router = APIRouter()


def _context(request: Request, session: Session) -> dict[str, object]:
    settings = state(request).settings
    return {"lines": lines_overview(session=session, lines=list(settings.lines))}


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
