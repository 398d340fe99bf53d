"""Thresholds what-if: a line's recent peak scores of one class, with the reviewed labels, and
the pass/fail and false-reject rates a threshold would give; an engineer applies it as the
line's rule (``threshold_rules``: versioned, who and why), which overrides the plant file."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from defectscan.console.deps import Principal, client_ip, csrf, current_user, db, form, state
from defectscan.console.pages import render
from defectscan.errors import DefectscanError
from defectscan.store.console_queries import gallery_choices, threshold_what_if
from defectscan.store.console_users import audit
from defectscan.store.line_rules import (
    apply_threshold_rule,
    effective_thresholds,
    threshold_history,
)
from defectscan.store.operations import record_event

router = APIRouter()


def _threshold(value: str, default: float = 0.5) -> float:
    try:
        t = float(value)
    except ValueError:
        return default
    return min(1.0, max(0.0, t))


def plant_threshold(request: Request, line: str, class_name: str) -> float | None:
    """The plant file's threshold of ``class_name`` on ``line`` (None: the model's default)."""
    cfg = state(request).settings.line(line)
    return cfg.thresholds.get(class_name) if cfg else None


@router.get("/thresholds")
def thresholds_page(
    request: Request, user: Principal = Depends(current_user), session: Session = Depends(db)
) -> Response:
    """The what-if for the chosen line, class and threshold."""
    q = request.query_params
    choices = gallery_choices(session=session)
    lines = sorted(set(choices["lines"]) | set(state(request).settings.lines))
    line = str(q.get("line") or (lines[0] if lines else ""))[:64]
    class_name = str(q.get("class_name") or (choices["classes"][0] if choices["classes"] else ""))
    rules = effective_thresholds(line, session=session) if line else {}
    current = (
        rules[class_name].threshold
        if class_name in rules
        else plant_threshold(request, line, class_name)
    )
    threshold = _threshold(str(q.get("threshold", "")), current if current is not None else 0.5)
    ctx: dict[str, Any] = {
        "lines": lines,
        "classes": choices["classes"],
        "line": line,
        "class_name": class_name,
        "threshold": threshold,
        "current": current,
        "rule": rules.get(class_name),
        "history": threshold_history(line, session=session) if line else [],
        "w": threshold_what_if(line, class_name, threshold, session=session) if line else None,
    }
    if ctx["w"] is not None:
        w = ctx["w"]
        peak = max(
            [
                1,
                *(
                    g + b + u
                    for g, b, u in zip(
                        w.counts_good, w.counts_bad, w.counts_unreviewed, strict=True
                    )
                ),
            ]
        )
        ctx["bars"] = [
            {
                "x": i * 30,
                "good": 160 * g / peak,
                "bad": 160 * b / peak,
                "unrev": 160 * u / peak,
                "label": f"{w.bins[i]:.2f}",
                "n": g + b + u,
            }
            for i, (g, b, u) in enumerate(
                zip(w.counts_good, w.counts_bad, w.counts_unreviewed, strict=True)
            )
        ]
        ctx["marker"] = threshold * 30 * len(w.bins)
    return render(request, "thresholds.html", ctx, user=user)


@router.post("/thresholds/apply")
async def apply(request: Request, user: Principal = Depends(csrf("engineer"))) -> Response:
    """Store the threshold as the line's rule (a new version)."""
    fields = await form(request)
    line = fields.get("line", "")[:64]
    class_name = fields.get("class_name", "")[:64]
    reason = fields.get("reason", "").strip()[:2000]
    back = {"line": line, "class_name": class_name, "threshold": fields.get("threshold", "")}
    try:
        threshold = float(fields.get("threshold", ""))
    except ValueError:
        threshold = -1.0
    try:
        if not line or not class_name:
            msg = "choose a line and a class"
            raise DefectscanError(msg)
        with state(request).write.begin() as session:
            rule = apply_threshold_rule(
                line, class_name, threshold, who=user.name, reason=reason, session=session
            )
            audit(
                "threshold",
                who=user.name,
                ip=client_ip(request),
                detail={
                    "line": line,
                    "class": class_name,
                    "threshold": threshold,
                    "version": rule.version,
                    "reason": reason,
                },
                session=session,
            )
            record_event(
                session=session,
                kind="threshold_rule",
                line=line,
                message=f"{user.name} set {class_name} threshold {threshold:.3f} on {line} "
                f"(rule v{rule.version}): {reason}",
                details={"class": class_name, "threshold": threshold, "version": rule.version},
            )
    except DefectscanError as exc:
        return RedirectResponse(
            f"/thresholds?{urlencode(back)}&error={quote(str(exc))}", status_code=303
        )
    msg = quote(f"rule v{rule.version} applied: monitors of {line} use it from their next batch")
    return RedirectResponse(f"/thresholds?{urlencode(back)}&msg={msg}", status_code=303)
