"""The console's pages, one module per page group; :func:`register` adds them all."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response

from defectscan.console.deps import Principal, state

__all__ = ["register", "render"]


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


def register(app: FastAPI) -> None:
    """Include every page group's router."""
    from defectscan.console.routes import (
        auth,
        control,
        events,
        inspections,
        lines,
        models,
        review,
        thresholds,
        trends,
    )

    for module in (auth, lines, control, inspections, review, models, events, thresholds, trends):
        app.include_router(module.router)
