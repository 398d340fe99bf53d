"""Request dependencies: the console's state, a database session, the user, roles and CSRF.

``current_user`` finds the session cookie's live session (or, when the plant file turns it on,
the trusted proxy's user header); ``require_role("operator")`` refuses lesser roles with 403;
``csrf`` refuses a state-changing request whose token is missing or wrong (also 403). A request
without a login goes to the login page, or gets 401 when it is an API or htmx request.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import Depends, HTTPException, Request, Response
from sqlalchemy.orm import Session, sessionmaker
from starlette.templating import Jinja2Templates

from defectscan.config import Settings
from defectscan.console.images import ImageStore
from defectscan.console.security import (
    CSRF_HEADER,
    SESSION_COOKIE,
    LoginThrottle,
    hash_token,
    new_token,
    same_token,
)
from defectscan.store.console_users import (
    audit,
    create_session,
    find_session,
    get_user,
    role_at_least,
)

__all__ = [
    "ConsoleState",
    "NotAuthenticated",
    "Principal",
    "client_ip",
    "csrf",
    "current_user",
    "db",
    "form",
    "require_role",
    "set_session_cookie",
    "state",
]


@dataclass
class ConsoleState:
    """What every request of one console app shares."""

    settings: Settings
    read: sessionmaker[Session]
    write: sessionmaker[Session]
    images: ImageStore
    templates: Jinja2Templates
    throttle: LoginThrottle
    reviews_dir: Path
    engine: Any
    #: Background work started from the console (the in-process retrain), by name.
    jobs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Principal:
    """The logged-in user of a request."""

    name: str
    role: str
    csrf_token: str
    token_hash: str | None

    def can(self, role: str) -> bool:
        """Whether this user's role includes ``role``."""
        return role_at_least(self.role, role)


class NotAuthenticated(Exception):  # noqa: N818 (an outcome, not a programming error)
    """No live session: the handler redirects to the login page (401 for API/htmx)."""


def state(request: Request) -> ConsoleState:
    """The app's shared state."""
    st: ConsoleState = request.app.state.console
    return st


def db(request: Request) -> Iterator[Session]:
    """A read session for this request (writes open their own transaction)."""
    with state(request).read() as session:
        yield session


def _trusted(request: Request) -> bool:
    st = state(request)
    host = request.client.host if request.client else ""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    for entry in st.settings.console.trusted_proxies:
        try:
            if addr in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def client_ip(request: Request) -> str:
    """The client's address (the first X-Forwarded-For hop when a trusted proxy sent it)."""
    host = request.client.host if request.client else ""
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded and _trusted(request):
        return forwarded.split(",")[0].strip()[:64]
    return host[:64]


def _proxy_user(request: Request) -> Principal | None:
    """Single sign-on: a trusted proxy's header names an existing, enabled user."""
    st = state(request)
    header = st.settings.console.trusted_user_header
    if not header or not _trusted(request):
        return None
    name = request.headers.get(header, "").strip()
    if not name:
        return None
    token = new_token()
    with st.write.begin() as session:
        user = get_user(name, session=session)
        if user is None or user.disabled:
            return None
        from datetime import timedelta

        create_session(
            user,
            token_hash=hash_token(token),
            csrf_token=new_token(),
            lifetime=timedelta(hours=st.settings.console.session_hours),
            ip=client_ip(request),
            session=session,
        )
        audit("login_sso", who=user.name, ip=client_ip(request), session=session)
    request.state.new_session_token = token
    with st.read() as session:
        row = find_session(hash_token(token), session=session)
        assert row is not None
        return Principal(row.user.name, row.user.role, row.csrf_token, row.token_hash)


def set_session_cookie(request: Request, response: Response, token: str) -> None:
    """The session cookie: HttpOnly, SameSite=Lax, Secure on https (or when configured)."""
    st = state(request)
    mode = st.settings.console.secure_cookies
    secure = mode == "always" or (mode == "auto" and request.url.scheme == "https")
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(st.settings.console.session_hours * 3600),
        httponly=True,
        samesite="lax",
        secure=secure,
        path="/",
    )


def current_user(request: Request) -> Principal:
    """The user of this request; raises :class:`NotAuthenticated` without a live session."""
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    token = request.cookies.get(SESSION_COOKIE)
    principal: Principal | None = None
    if token:
        with state(request).read() as session:
            row = find_session(hash_token(token), session=session)
            if row is not None:
                principal = Principal(row.user.name, row.user.role, row.csrf_token, row.token_hash)
    if principal is None:
        principal = _proxy_user(request)
    if principal is None:
        raise NotAuthenticated
    request.state.principal = principal
    return principal


def require_role(role: str) -> Callable[..., Principal]:
    """A dependency: the user, refused with 403 when their role is below ``role``."""

    def dependency(user: Principal = Depends(current_user)) -> Principal:
        if not user.can(role):
            raise HTTPException(403, f"this needs the {role} role; you are {user.role}")
        return user

    return dependency


async def form(request: Request) -> dict[str, str]:
    """The request's url-encoded form fields (first value of each), read once."""
    cached = getattr(request.state, "form", None)
    if cached is not None:
        return cached
    fields: dict[str, str] = {}
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("application/x-www-form-urlencoded"):
        body = await request.body()
        if len(body) > 1_000_000:
            raise HTTPException(413, "form too large")
        parsed = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
        fields = {k: v[0] for k, v in parsed.items()}
    request.state.form = fields
    return fields


def csrf(role: str = "viewer") -> Callable[..., Awaitable[Principal]]:
    """A dependency for state changes: the user (of at least ``role``) and a valid CSRF token."""
    needs = require_role(role)

    async def dependency(request: Request, user: Principal = Depends(needs)) -> Principal:
        given = request.headers.get(CSRF_HEADER)
        if not given:
            given = (await form(request)).get("csrf_token")
        if not same_token(given, user.csrf_token):
            raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
        return user

    return dependency
