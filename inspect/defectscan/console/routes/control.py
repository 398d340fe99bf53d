"""Line control: pause and resume a line's monitor (stored in ``line_controls``; the monitor
reads it between batches, stops claiming while paused and resumes where it stopped)."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from defectscan.console.deps import Principal, client_ip, csrf, state
from defectscan.store.console_users import audit
from defectscan.store.line_rules import set_line_paused
from defectscan.store.operations import record_event

router = APIRouter()


def _set(request: Request, line: str, paused: bool, user: Principal) -> Response:
    if not line or len(line) > 64:
        raise HTTPException(404, "no such line")
    action = "pause" if paused else "resume"
    with state(request).write.begin() as session:
        set_line_paused(line, paused, who=user.name, session=session)
        audit(action, who=user.name, ip=client_ip(request), detail={"line": line}, session=session)
        record_event(
            session=session,
            kind="line_paused" if paused else "line_resumed",
            line=line,
            message=f"{user.name} {'paused' if paused else 'resumed'} line {line} (console)",
            details={"by": user.name},
        )
    msg = quote(f"line {line} {'paused' if paused else 'resumed'}")
    if request.headers.get("hx-request"):
        return Response(status_code=204, headers={"HX-Refresh": "true"})
    return RedirectResponse(f"/lines?msg={msg}", status_code=303)


@router.post("/lines/{line}/pause")
async def pause(
    request: Request, line: str, user: Principal = Depends(csrf("operator"))
) -> Response:
    """Pause ``line``: its monitor stops claiming after the batch in hand."""
    return _set(request, line, True, user)


@router.post("/lines/{line}/resume")
async def resume(
    request: Request, line: str, user: Principal = Depends(csrf("operator"))
) -> Response:
    """Resume ``line``: its monitor claims again where it stopped."""
    return _set(request, line, False, user)
