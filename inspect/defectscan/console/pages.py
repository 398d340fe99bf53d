"""What every page module shares: rendering a template with the user, and the time filters.

Page modules import this, never the ``routes`` package (which imports them all to register
them): imports only go down.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session

from defectscan.console.deps import Principal, state
from defectscan.store.schema import Inspection

__all__ = ["load_inspection", "parse_time", "render"]


def render(
    request: Request,
    template: str,
    context: dict[str, Any],
    *,
    user: Principal | None,
    status_code: int = 200,
) -> Response:
    """A page (or partial) from ``template`` with the user and their CSRF token."""
    ctx = {"user": user, "csrf_token": user.csrf_token if user else "", **context}
    ctx.setdefault("msg", request.query_params.get("msg", "")[:300])
    ctx.setdefault("error", request.query_params.get("error", "")[:300])
    resp: HTMLResponse = state(request).templates.TemplateResponse(
        request, template, ctx, status_code=status_code
    )
    return resp


def parse_time(value: str) -> datetime | None:
    """An ISO time (``2026-12-01T08:00``, taken as UTC) or an age (``30m``, ``8h``, ``2d``)."""
    value = value.strip()
    if not value:
        return None
    units = {"m": 60, "h": 3600, "d": 86400}
    if value[-1:] in units and value[:-1].isdigit():
        return datetime.now(UTC) - timedelta(seconds=int(value[:-1]) * units[value[-1]])
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def load_inspection(session: Session, inspection_id: int) -> Inspection:
    """The inspection with its defects and reviews, or a 404 page that says it does not exist."""
    from defectscan.store.console_queries import inspection_detail

    found = inspection_detail(inspection_id, session=session)
    if found is None:
        raise HTTPException(404, f"inspection {inspection_id} does not exist")
    return found
