"""Log in and out: argon2-checked passwords, throttled per address, accounts lock after too many
bad passwords in a row; a login makes a server-side session and its cookie."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from defectscan.console.deps import Principal, client_ip, csrf, form, set_session_cookie, state
from defectscan.console.pages import render
from defectscan.console.security import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    hash_token,
    new_token,
    same_token,
    verify_password,
)
from defectscan.store.console_users import (
    audit,
    create_session,
    get_user,
    note_failed_login,
    note_login,
    revoke_session,
)
from defectscan.store.schema import utcnow

router = APIRouter()

BAD_LOGIN = "wrong user name or password"


def _safe_next(target: str | None) -> str:
    """Only a path on this site (no scheme, no host, no //) may be the target after login."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/lines"
    return target


def _login_page(request: Request, error: str = "", status_code: int = 200) -> Response:
    token = new_token()
    response = render(
        request,
        "login.html",
        {
            "login_csrf": token,
            "next": _safe_next(request.query_params.get("next")),
            "error": error,
        },
        user=None,
        status_code=status_code,
    )
    response.set_cookie(CSRF_COOKIE, token, max_age=3600, httponly=True, samesite="strict")
    return response


@router.get("/login")
def login_page(request: Request) -> Response:
    """The login form."""
    return _login_page(request)


@router.post("/login")
async def login(request: Request) -> Response:
    """Check the password; on success a new session and its cookie, then the page asked for."""
    st = state(request)
    fields = await form(request)
    ip = client_ip(request)
    if not same_token(fields.get("csrf_token"), request.cookies.get(CSRF_COOKIE)):
        return _login_page(request, "the form expired: try again", 403)
    if not st.throttle.allow(ip):
        return _login_page(request, "too many login attempts from here: wait a few minutes", 429)
    name = fields.get("username", "").strip()[:64]
    password = fields.get("password", "")[:1024]
    cfg = st.settings.console
    with st.write.begin() as session:
        user = get_user(name, session=session) if name else None
        if user is not None and user.locked_until is not None and user.locked_until > utcnow():
            verify_password(None, password)  # same cost as a real check
            audit("login_locked", who=name, ip=ip, session=session)
            return _login_page(
                request, "this account is locked after too many bad passwords: wait", 423
            )
        ok, new_hash = verify_password(user.password_hash if user else None, password)
        if not ok or user is None or user.disabled:
            if user is not None and not user.disabled:
                note_failed_login(
                    user,
                    max_failures=cfg.max_failed_logins,
                    lockout=timedelta(minutes=cfg.lockout_minutes),
                    session=session,
                )
            audit("login_failed", who=name or None, ip=ip, session=session)
            # committed below even though the login fails: the count must stick
            failed = True
        else:
            failed = False
            if new_hash:
                user.password_hash = new_hash
            note_login(user, session=session)
            token = new_token()
            create_session(
                user,
                token_hash=hash_token(token),
                csrf_token=new_token(),
                lifetime=timedelta(hours=cfg.session_hours),
                ip=ip,
                session=session,
            )
            audit("login", who=user.name, ip=ip, session=session)
    if failed:
        return _login_page(request, BAD_LOGIN, 401)
    response = RedirectResponse(_safe_next(fields.get("next")), status_code=303)
    set_session_cookie(request, response, token)
    response.delete_cookie(CSRF_COOKIE)
    return response


@router.post("/logout")
async def logout(request: Request, user: Principal = Depends(csrf())) -> Response:
    """End this session (it is revoked in the database, not just forgotten by the browser)."""
    st = state(request)
    with st.write.begin() as session:
        if user.token_hash:
            revoke_session(user.token_hash, session=session)
        audit("logout", who=user.name, ip=client_ip(request), session=session)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
