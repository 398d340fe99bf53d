"""Models: versions with lineage, metrics and gate decisions; promote (through the gate on the
fixed holdout, or forced with a reason), roll back; training runs with their status, progress
(epoch k of n, best validation IoU so far, elapsed, time left) and result; the Retrain button.
While a run is running the runs table refreshes itself (htmx) from ``/models/runs``.

Promote and rollback call the functions ``defectscan models promote|rollback`` calls.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from defectscan.console.deps import Principal, client_ip, csrf, current_user, db, form, state
from defectscan.console.pages import render
from defectscan.console.retraining import request_retrain
from defectscan.errors import DefectscanError
from defectscan.store.console_queries import recent_training_runs
from defectscan.store.console_users import audit
from defectscan.store.model_versions import list_model_versions

router = APIRouter()


def _holdout(request: Request) -> Path:
    return Path(state(request).settings.var_dir) / "retrain" / "holdout"


def _seconds(later: datetime, earlier: datetime | None) -> float | None:
    if earlier is None:
        return None
    if earlier.tzinfo is None:
        earlier = earlier.replace(tzinfo=UTC)
    return max(0.0, (later - earlier).total_seconds())


def _run_view(run: Any, now: datetime) -> dict[str, Any]:
    """What the runs table shows of one training run: its progress and its result."""
    metrics = run.metrics or {}
    progress = metrics.get("progress") or {}
    running = run.status == "running"
    left = None
    if running and progress.get("eta_s") is not None:
        try:
            updated = datetime.fromisoformat(str(progress.get("updated_at")))
        except ValueError:
            updated = now
        left = max(0.0, float(progress["eta_s"]) - (_seconds(now, updated) or 0.0))
    best = progress.get("best_val_iou")
    if best is None:
        best = (metrics.get("validation") or {}).get("mean_iou")
    end = now if running else (run.finished_at or now)
    if end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    return {
        "run": run,
        "running": running,
        "progress": progress,
        "best_val_iou": best,
        "elapsed_s": _seconds(end, run.started_at or run.created_at),
        "left_s": left,
    }


def _runs_context(session: Session) -> dict[str, Any]:
    now = datetime.now(UTC)
    views = [_run_view(r, now) for r in recent_training_runs(session=session)]
    return {"runs": views, "any_running": any(v["running"] for v in views)}


def _back(msg: str = "", error: str = "") -> Response:
    q = f"msg={quote(msg)}" if msg else f"error={quote(error)}"
    return RedirectResponse(f"/models?{q}", status_code=303)


@router.get("/models")
def models_page(
    request: Request, user: Principal = Depends(current_user), session: Session = Depends(db)
) -> Response:
    """Versions and training runs."""
    holdout = _holdout(request)
    return render(
        request,
        "models.html",
        {
            "versions": list_model_versions(session=session),
            "holdout": holdout if holdout.is_dir() else None,
            **_runs_context(session),
        },
        user=user,
    )


@router.get("/models/runs")
def training_runs_table(
    request: Request, user: Principal = Depends(current_user), session: Session = Depends(db)
) -> Response:
    """The training runs table alone (what the page's refresh swaps in while a run runs)."""
    return render(request, "_training_runs.html", _runs_context(session), user=user)


@router.post("/models/{version}/promote")
async def promote(
    request: Request, version: str, user: Principal = Depends(csrf("engineer"))
) -> Response:
    """Promote through the gate (holdout) or, with ``force`` and a reason, without it."""
    from defectscan.training.registry import promote as promote_version

    fields = await form(request)
    force = fields.get("force") in ("1", "on", "yes")
    reason = fields.get("reason", "").strip()[:2000]
    if force and not reason:
        return _back(error="a forced promotion needs a reason")
    holdout = _holdout(request)
    st = state(request)
    try:
        with st.write.begin() as session:
            d = promote_version(
                version,
                session=session,
                holdout=None if force or not holdout.is_dir() else holdout,
                force=force,
            )
            audit(
                "promote",
                who=user.name,
                ip=client_ip(request),
                detail={
                    "version": version,
                    "forced": force,
                    "reason": reason or None,
                    "promoted": d.promoted,
                    "gate": d.reason,
                    "champion_before": d.champion,
                },
                session=session,
            )
    except DefectscanError as exc:
        return _back(error=str(exc))
    if d.promoted:
        return _back(msg=f"{version} is now champion ({d.reason})")
    return _back(error=f"{version} stays a candidate: {d.reason}")


@router.post("/models/rollback")
async def rollback(request: Request, user: Principal = Depends(csrf("engineer"))) -> Response:
    """Retire the champion and bring back the previous one."""
    from defectscan.training.registry import rollback as rollback_champion

    fields = await form(request)
    name = fields.get("name") or None
    st = state(request)
    try:
        with st.write.begin() as session:
            old, new = rollback_champion(session=session, name=name)
            audit(
                "rollback",
                who=user.name,
                ip=client_ip(request),
                detail={"retired": old.version, "champion": new.version},
                session=session,
            )
            text = f"rolled back: {old.version} retired, {new.version} is champion again"
    except DefectscanError as exc:
        return _back(error=str(exc))
    return _back(msg=text)


@router.post("/retrain")
async def retrain(request: Request, user: Principal = Depends(csrf("operator"))) -> Response:
    """Ask for a retrain (reason required; the requester is the logged-in user)."""
    fields = await form(request)
    reason = fields.get("reason", "").strip()[:2000]
    if not reason:
        return _back(error="say why you ask for a retrain: the reason is recorded with the run")
    st = state(request)
    try:
        outcome = request_retrain(st, requested_by=user.name, reason=reason)
    except DefectscanError as exc:
        return _back(error=str(exc))
    with st.write.begin() as session:
        audit(
            "retrain",
            who=user.name,
            ip=client_ip(request),
            detail={"reason": reason, "outcome": outcome},
            session=session,
        )
    return _back(msg=outcome)
