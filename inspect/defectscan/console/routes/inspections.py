"""Inspections: the gallery (filters, keyset pages), a detail page, and the images themselves.

Images are addressed by their sha256 only; anything that is not 64 lower-case hex characters is
a 404 before the file system is touched.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from defectscan.console.deps import Principal, client_ip, csrf, current_user, db, form, state
from defectscan.console.images import class_map_from_defects, overlay_png, valid_sha256
from defectscan.console.pages import load_inspection, parse_time, render
from defectscan.store.console_queries import (
    GalleryFilters,
    gallery_choices,
    gallery_page,
    peak_score,
    same_image,
)
from defectscan.store.console_users import audit
from defectscan.store.review_queue import flag_for_review
from defectscan.store.schema import Inspection

router = APIRouter()

FILTER_KEYS = (
    "line",
    "camera",
    "since",
    "until",
    "verdict",
    "status",
    "class_name",
    "model_version",
    "score_min",
    "score_max",
    "reviewed",
    "disagreement",
)


def _float(value: str) -> float | None:
    try:
        f = float(value)
    except ValueError:
        return None
    return f if 0.0 <= f <= 1.0 else None


def parse_filters(params: Any) -> tuple[GalleryFilters, dict[str, str]]:
    """Filters from query parameters (unknown or malformed values are ignored), and the raw
    values to put back in the form."""
    raw = {k: str(params.get(k, ""))[:128] for k in FILTER_KEYS}
    choice = {
        "verdict": ("pass", "fail"),
        "status": ("ok", "rejected"),
        "reviewed": ("yes", "no"),
    }
    for key, allowed in choice.items():
        if raw[key] not in allowed:
            raw[key] = ""
    filters = GalleryFilters(
        line=raw["line"] or None,
        camera=raw["camera"] or None,
        since=parse_time(raw["since"]),
        until=parse_time(raw["until"]),
        verdict=raw["verdict"] or None,
        status=raw["status"] or None,
        class_name=raw["class_name"] or None,
        model_version=raw["model_version"] or None,
        score_min=_float(raw["score_min"]),
        score_max=_float(raw["score_max"]),
        reviewed={"yes": True, "no": False}.get(raw["reviewed"]),
        disagreement=raw["disagreement"] in ("1", "on", "yes"),
    )
    return filters, raw


def _page_context(request: Request, session: Session) -> dict[str, Any]:
    filters, raw = parse_filters(request.query_params)
    cursor = request.query_params.get("cursor") or None
    page = gallery_page(filters, session=session, cursor=cursor)
    query = {k: v for k, v in raw.items() if v}
    more = urlencode({**query, "cursor": page.next_cursor}) if page.next_cursor else None
    return {"page": page, "raw": raw, "more": more}


@router.get("/inspections")
def gallery(
    request: Request, user: Principal = Depends(current_user), session: Session = Depends(db)
) -> Response:
    """The gallery with its filter form."""
    ctx = _page_context(request, session)
    ctx["choices"] = gallery_choices(session=session)
    return render(request, "gallery.html", ctx, user=user)


@router.get("/inspections/items")
def gallery_items(
    request: Request, user: Principal = Depends(current_user), session: Session = Depends(db)
) -> Response:
    """The next page of thumbnails (htmx appends it)."""
    return render(request, "_gallery_items.html", _page_context(request, session), user=user)


@router.get("/inspections/{inspection_id}")
def detail(
    request: Request,
    inspection_id: int,
    user: Principal = Depends(current_user),
    session: Session = Depends(db),
) -> Response:
    """One inspection: the image with its overlay, defects, scores, model, reviews."""
    insp = load_inspection(session, inspection_id)
    has_image = state(request).images.original(insp.sha256, insp.uri) is not None
    return render(
        request,
        "detail.html",
        {
            "i": insp,
            "peak": peak_score(insp),
            "others": same_image(insp.sha256, session=session, exclude=insp.id),
            "has_image": has_image,
            "reviews": sorted(insp.reviews, key=lambda r: r.id, reverse=True),
        },
        user=user,
    )


@router.post("/inspections/{inspection_id}/flag")
async def flag(
    request: Request, inspection_id: int, user: Principal = Depends(csrf("operator"))
) -> Response:
    """Flag the inspection for review: the review queue's fills take its image (72 hours)."""
    note = (await form(request)).get("note", "").strip()[:500]
    with state(request).write.begin() as session:
        insp = load_inspection(session, inspection_id)
        flag_for_review(insp, by=user.name, note=note, session=session)
        audit(
            "flag_for_review",
            who=user.name,
            ip=client_ip(request),
            detail={"inspection": inspection_id, "note": note},
            session=session,
        )
    msg = quote("flagged for review: the review queue's next fills take this image (72 hours)")
    return RedirectResponse(f"/inspections/{inspection_id}?msg={msg}", status_code=303)


def _checked(sha256: str) -> str:
    if not valid_sha256(sha256):
        raise HTTPException(404, "no such image")
    return sha256


def _image_headers() -> dict[str, str]:
    return {"Cache-Control": "private, max-age=86400"}


@router.get("/images/{sha256}")
def image(
    request: Request,
    sha256: str,
    user: Principal = Depends(current_user),
    session: Session = Depends(db),
) -> Response:
    """The full-size image (PNG or JPEG as stored; other formats as PNG)."""
    _checked(sha256)
    from sqlalchemy import select

    uri = session.scalars(
        select(Inspection.uri).where(Inspection.sha256 == sha256).limit(1)
    ).first()
    if uri is None:
        raise HTTPException(404, "no such image")
    shown = state(request).images.display(sha256, uri)
    if shown is None:
        raise HTTPException(404, "this image was not kept (archive policy or retention)")
    data, media = shown
    return Response(data, media_type=media, headers=_image_headers())


def _of(session: Session, sha256: str, inspection_id: int) -> Inspection:
    _checked(sha256)
    insp = load_inspection(session, inspection_id)
    if insp.sha256 != sha256:
        raise HTTPException(404, "no such image")
    return insp


@router.get("/images/{sha256}/thumb/{inspection_id}.jpg")
def thumbnail(
    request: Request,
    sha256: str,
    inspection_id: int,
    user: Principal = Depends(current_user),
    session: Session = Depends(db),
) -> Response:
    """A small JPEG with the defects tinted (cached on disk per sha256 and model version)."""
    insp = _of(session, sha256, inspection_id)
    data = state(request).images.thumbnail(
        sha256, insp.uri, f"m{insp.model_version_id}", insp.defects
    )
    if data is None:
        return Response(_MISSING_SVG, media_type="image/svg+xml", headers=_image_headers())
    return Response(data, media_type="image/jpeg", headers=_image_headers())


@router.get("/images/{sha256}/overlay/{inspection_id}.png")
def overlay(
    sha256: str,
    inspection_id: int,
    user: Principal = Depends(current_user),
    session: Session = Depends(db),
) -> Response:
    """The model's defects as a transparent PNG of the image's size."""
    insp = _of(session, sha256, inspection_id)
    if not insp.width or not insp.height:
        raise HTTPException(404, "this inspection has no recorded size")
    mask = class_map_from_defects(insp.defects, (insp.height, insp.width))
    return Response(overlay_png(mask), media_type="image/png", headers=_image_headers())


_MISSING_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="240" height="180" viewBox="0 0 240 180">'
    '<rect width="240" height="180" fill="#2b2f36"/><text x="120" y="95" fill="#9aa3ad" '
    'font-family="sans-serif" font-size="14" text-anchor="middle">image not kept</text></svg>'
)
