"""The console's app factory: ``create_app(settings)``.

Server-rendered pages (Jinja2, autoescaped) with htmx for partial refresh; every script and
stylesheet comes from ``static/``. Every response carries a Content-Security-Policy without
inline scripts (``script-src 'self'``) and ``frame-ancestors 'none'``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.templating import Jinja2Templates

from defectscan import __version__
from defectscan.archive import ImageArchive
from defectscan.config import Settings
from defectscan.console.deps import ConsoleState, NotAuthenticated, set_session_cookie
from defectscan.console.images import ImageStore
from defectscan.console.security import LoginThrottle
from defectscan.store.db import ensure_schema, make_engine, session_factory

__all__ = ["CSP", "create_app"]

HERE = Path(__file__).resolve().parent
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


def _fmt_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def create_app(settings: Settings, *, database_url: str | None = None) -> FastAPI:
    """The console over ``settings``' database and archive (schema must be at head)."""
    engine = make_engine(database_url or settings.database_url)
    ensure_schema(engine)
    var_dir = Path(settings.var_dir)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["t"] = _fmt_time
    templates.env.filters["pct"] = _pct
    templates.env.globals["version"] = __version__
    archive = ImageArchive(settings.archive_dir or var_dir / "archive")
    st = ConsoleState(
        settings=settings,
        read=session_factory(engine),
        write=session_factory(engine, write=True),
        images=ImageStore(archive, var_dir / "console", max_pixels=settings.max_pixels),
        templates=templates,
        throttle=LoginThrottle(),
        reviews_dir=var_dir / "reviews",
        engine=engine,
    )
    app = FastAPI(
        title="defectscan console",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.console = st
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.middleware("http")
    async def _headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"
        if not request.url.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        token = getattr(request.state, "new_session_token", None)
        if token:
            set_session_cookie(request, response, token)
        return response

    @app.exception_handler(NotAuthenticated)
    async def _login_first(request: Request, _exc: NotAuthenticated) -> Response:
        if request.url.path.startswith("/api/") or request.headers.get("hx-request"):
            return JSONResponse(
                {"detail": "log in first"}, status_code=401, headers={"HX-Redirect": "/login"}
            )
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        if request.url.path.startswith("/api/") or "text/html" not in request.headers.get(
            "accept", ""
        ):
            return JSONResponse(
                {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
            )
        return templates.TemplateResponse(
            request,
            "error.html",
            {"status": exc.status_code, "detail": exc.detail, "user": None},
            status_code=exc.status_code,
        )

    @app.get("/healthz", include_in_schema=False)
    def _healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/favicon.ico", include_in_schema=False)
    def _favicon() -> Response:
        return Response(status_code=204)

    from defectscan.console.routes import register

    register(app)

    @app.get("/", include_in_schema=False, response_class=HTMLResponse)
    def _home() -> Response:
        return RedirectResponse("/lines", status_code=303)

    return app
