"""The console's pages, one module per page group; :func:`register` adds them all."""

from __future__ import annotations

from fastapi import FastAPI

__all__ = ["register"]


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
