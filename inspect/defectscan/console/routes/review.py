"""Review: accept or overrule, change classes, paint the mask, comment; and the review queue.

The page posts JSON (with the CSRF token in ``X-CSRF-Token``) from ``static/console.js``.
"""

from __future__ import annotations

import json
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from defectscan.console.deps import Principal, client_ip, csrf, current_user, db, state
from defectscan.console.images import class_map_from_defects, encode_rle, read_mask_png
from defectscan.console.pages import load_inspection, render
from defectscan.console.reviewing import (
    ReviewInput,
    ReviewRefusedError,
    next_inspection,
    queue_entries,
    save_review,
)
from defectscan.drift.review_fill import line_estimates
from defectscan.errors import DefectscanError
from defectscan.report import class_color
from defectscan.store.console_queries import peak_score
from defectscan.store.console_users import audit

router = APIRouter()


def _hex(bgr: tuple[int, int, int]) -> str:
    b, g, r = bgr
    return f"#{r:02x}{g:02x}{b:02x}"


@router.get("/review/{inspection_id}")
def review_page(
    request: Request,
    inspection_id: int,
    user: Principal = Depends(current_user),
    session: Session = Depends(db),
) -> Response:
    """The review page (read-only for a viewer)."""
    insp = load_inspection(session, inspection_id)
    names = [str(n) for n in insp.model_version.class_names]
    return render(
        request,
        "review.html",
        {
            "i": insp,
            "peak": peak_score(insp),
            "classes": [(k + 1, n, _hex(class_color(k + 1))) for k, n in enumerate(names)],
            "queue": request.query_params.get("queue") == "1",
            "can_review": user.can("operator"),
            "has_image": state(request).images.original(insp.sha256, insp.uri) is not None,
        },
        user=user,
    )


@router.get("/review/{inspection_id}/mask")
def review_mask(
    request: Request,
    inspection_id: int,
    user: Principal = Depends(current_user),
    session: Session = Depends(db),
) -> Response:
    """The mask to start painting from: the latest corrected mask, else the model's."""
    insp = load_inspection(session, inspection_id)
    if not insp.width or not insp.height:
        raise HTTPException(404, "this inspection has no recorded size")
    shape = (insp.height, insp.width)
    mask = None
    for r in sorted(insp.reviews, key=lambda r: r.id, reverse=True):
        if r.corrected_mask_path:
            from pathlib import Path

            mask = read_mask_png(Path(r.corrected_mask_path), shape)
            if mask is not None:
                break
    if mask is None:
        mask = class_map_from_defects(insp.defects, shape)
    return JSONResponse({"width": insp.width, "height": insp.height, "rle": encode_rle(mask)})


@router.post("/review/{inspection_id}")
async def review_save(
    request: Request, inspection_id: int, user: Principal = Depends(csrf("operator"))
) -> Response:
    """Save a review (JSON body); answers with the review id and where to go next."""
    st = state(request)
    try:
        body = json.loads(await request.body() or b"null")
    except ValueError:
        return JSONResponse({"error": "the review must be JSON"}, status_code=400)
    try:
        given = ReviewInput.from_json(body)
        with st.write.begin() as session:
            insp = load_inspection(session, inspection_id)
            review = save_review(
                insp, given, reviewer=user.name, session=session, store_dir=st.reviews_dir
            )
            audit(
                "review",
                who=user.name,
                ip=client_ip(request),
                detail={"inspection": inspection_id, "review": review.id, **(review.details or {})}
                | {"defects": len((review.details or {}).get("defects") or [])},
                session=session,
            )
            review_id = review.id
    except ReviewRefusedError as exc:
        return JSONResponse({"error": str(exc)}, status_code=422)
    except DefectscanError as exc:
        return JSONResponse({"error": str(exc)}, status_code=422)
    nxt = (
        f"/queue/next?after={inspection_id}"
        if body.get("queue")
        else f"/inspections/{inspection_id}"
    )
    return JSONResponse({"review": review_id, "next": nxt})


@router.get("/queue")
def queue_page(
    request: Request, user: Principal = Depends(current_user), session: Session = Depends(db)
) -> Response:
    """The review queue: the filled queue's open items for the line, else today's ordering."""
    line = request.query_params.get("line") or None
    from_queue, items = queue_entries(session=session, line=line)
    return render(
        request,
        "queue.html",
        {
            "items": items,
            "from_queue": from_queue,
            "line": line,
            "estimates": line_estimates(session=session, line=line),
        },
        user=user,
    )


@router.get("/queue/next")
def queue_next(request: Request, user: Principal = Depends(current_user)) -> Response:
    """The review page of the next queue item after ``after`` (skipping it)."""
    line = request.query_params.get("line") or None
    after = request.query_params.get("after", "")
    # A write transaction: items reviewed elsewhere are marked done on the way.
    with state(request).write.begin() as session:
        nxt = next_inspection(
            session=session, line=line, after=int(after) if after.isdigit() else None
        )
    if nxt is None:
        return RedirectResponse(f"/queue?msg={quote('the queue is empty: all reviewed')}", 303)
    return RedirectResponse(f"/review/{nxt}?queue=1", status_code=303)
